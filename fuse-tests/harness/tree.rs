//! Snapshots of directory trees, for comparing a layerfs mount with kernel
//! overlayfs (merged views and upper layers).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What is recorded of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// f d l p s c b, or w for a whiteout (upper snapshots).
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: u64,
    pub target: String,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, String>,
    /// For files with several links: the first path of the link group.
    pub link_group: Option<String>,
}

/// A tree: relative path → entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(pub BTreeMap<String, Entry>);

/// Which view a snapshot is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// A mounted union: everything a client sees.
    Merged,
    /// An upper layer on disk: whiteouts and opaque marks normalised across
    /// encodings, private bookkeeping xattrs dropped.
    Upper,
}

fn xattrs(p: &Path, view: View) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid buffer.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let name_s = String::from_utf8_lossy(name).to_string();
        let keep = match view {
            View::Merged => true,
            View::Upper => {
                !(name_s.starts_with("trusted.layerfs.")
                    || name_s.starts_with("trusted.overlay.layerfs.")
                    || name_s.starts_with("user.overlay.layerfs.")
                    || name_s.starts_with("user.layerfs.")
                    || name_s == "trusted.overlay.origin"
                    || name_s == "trusted.overlay.impure"
                    || name_s == "trusted.overlay.nlink"
                    || name_s == "trusted.overlay.uuid"
                    || name_s == "user.overlay.origin"
                    || name_s == "user.overlay.impure")
            }
        };
        if !keep {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid buffers.
        let len =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        let value = if len >= 0 {
            String::from_utf8_lossy(&v[..len as usize]).to_string()
        } else {
            "<unreadable>".into()
        };
        // Opaque marks in any namespace are the same fact; so are the two
        // ways to write a redirect (the kernel writes a bare name where it
        // can, layerfs always the absolute path): keep the last component.
        let (key, value) = match name_s.as_str() {
            "trusted.overlay.opaque" | "user.overlay.opaque" if view == View::Upper => {
                ("<opaque>".to_string(), value)
            }
            "trusted.overlay.redirect" | "user.overlay.redirect" if view == View::Upper => (
                "<redirect>".to_string(),
                value.rsplit('/').next().unwrap_or_default().to_string(),
            ),
            _ => (name_s, value),
        };
        out.insert(key, value);
    }
    out
}

fn content_hash(p: &Path) -> u64 {
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Walks `root` (not following symlinks).
pub fn snapshot(root: &Path, view: View) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut groups: BTreeMap<(u64, u64), String> = BTreeMap::new();
    walk(root, root, view, &mut snap, &mut groups);
    snap
}

fn walk(
    root: &Path,
    dir: &Path,
    view: View,
    snap: &mut Snapshot,
    groups: &mut BTreeMap<(u64, u64), String>,
) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    let present: std::collections::BTreeSet<_> = names.iter().cloned().collect();
    for name in names {
        let p = dir.join(&name);
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        let ft = md.file_type();
        let name_s = name.to_string_lossy();
        if view == View::Upper {
            if let Some(target) = name_s.strip_prefix(".wh.") {
                if target == ".wh..opq" {
                    let parent = dir
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .to_string();
                    if let Some(e) = snap.0.get_mut(&parent) {
                        e.xattrs.insert("<opaque>".into(), "y".into());
                    }
                } else if present.contains(std::ffi::OsStr::new(target)) {
                    // A `.wh.` marker beside a real entry of the same name
                    // (a leftover): keep it under its own name, so that the
                    // entry does not hide it.
                    snap.0.insert(rel, whiteout_entry());
                } else {
                    let rel = Path::new(&rel)
                        .with_file_name(target)
                        .to_string_lossy()
                        .to_string();
                    snap.0.insert(rel, whiteout_entry());
                }
                continue;
            }
            if ft.is_char_device() && md.rdev() == 0 {
                snap.0.insert(rel, whiteout_entry());
                continue;
            }
        }
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            'f'
        };
        let link_group = if kind != 'd' && md.nlink() > 1 {
            Some(
                groups
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        let entry = Entry {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == 'f' { md.size() } else { 0 },
            content: if kind == 'f' { content_hash(&p) } else { 0 },
            target: if kind == 'l' {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            } else {
                String::new()
            },
            rdev: if kind == 'c' || kind == 'b' {
                md.rdev()
            } else {
                0
            },
            xattrs: xattrs(&p, view),
            link_group,
        };
        snap.0.insert(rel, entry);
        if kind == 'd' {
            walk(root, &p, view, snap, groups);
        }
    }
}

fn whiteout_entry() -> Entry {
    Entry {
        kind: 'w',
        perm: 0,
        uid: 0,
        gid: 0,
        size: 0,
        content: 0,
        target: String::new(),
        rdev: 0,
        xattrs: BTreeMap::new(),
        link_group: None,
    }
}

impl Snapshot {
    /// Differences, one line each, empty when equal.
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (k, a) in &self.0 {
            match other.0.get(k) {
                None => out.push(format!("only in left:  {k} {a:?}")),
                Some(b) if a != b => {
                    out.push(format!("differs: {k}\n   left:  {a:?}\n   right: {b:?}"))
                }
                _ => {}
            }
        }
        for (k, b) in &other.0 {
            if !self.0.contains_key(k) {
                out.push(format!("only in right: {k} {b:?}"));
            }
        }
        out
    }

    /// Removes entries matching `pred` (e.g. known differences).
    pub fn without(mut self, pred: impl Fn(&str) -> bool) -> Snapshot {
        self.0.retain(|k, _| !pred(k));
        self
    }

    pub fn get(&self, k: &str) -> Option<&Entry> {
        self.0.get(k)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, e) in &self.0 {
            writeln!(
                f,
                "{} {:o} {}:{} {} {}",
                e.kind, e.perm, e.uid, e.gid, e.size, k
            )?;
        }
        Ok(())
    }
}

/// Asserts two snapshots are equal, printing the differences.
#[track_caller]
pub fn assert_same(what: &str, left: &Snapshot, right: &Snapshot) {
    let d = left.diff(right);
    assert!(
        d.is_empty(),
        "{what}: trees differ ({} differences):\n{}",
        d.len(),
        d.join("\n")
    );
}
