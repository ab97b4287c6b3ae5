//! The real image in `shared/fixtures/oci-multilayer` (5 layers written by
//! podman): every layer unpacks, layer 1 matches GNU tar's extraction, and
//! pack → unpack gives back the same tree. The fixture is read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::tests::Scratch;
use super::*;

fn fixture() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/oci-multilayer");
    p.join("index.json").exists().then_some(p)
}

/// The layer blobs of the image, bottom first.
fn layers(root: &Path) -> Vec<PathBuf> {
    let blob = |digest: &str| {
        root.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(manifest)).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap()))
        .collect()
}

/// What we compare of one tree entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    content: u64,
    link: String,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Names sharing an inode, each group sorted.
    links: BTreeSet<Vec<String>>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut list = vec![0u8; 65536];
    // SAFETY: buffer valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    list.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: buffers valid for their length.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(n >= 0);
        v.truncate(n as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

fn snapshot(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "socket"
            };
            let content = if ft.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).unwrap().hash(&mut h);
                h.finish()
            } else {
                0
            };
            let link = if ft.is_symlink() {
                fs::read_link(&p).unwrap().to_string_lossy().into_owned()
            } else {
                String::new()
            };
            if !ft.is_dir() && m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            nodes.insert(
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_dir() { 0 } else { m.size() },
                    mtime: m.mtime(),
                    content,
                    link,
                    rdev: m.rdev(),
                    xattrs: xattrs(&p),
                },
            );
        }
    }
    let links = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Tree { nodes, links }
}

fn assert_same(a: &Tree, b: &Tree, what: &str) {
    let ka: BTreeSet<_> = a.nodes.keys().collect();
    let kb: BTreeSet<_> = b.nodes.keys().collect();
    let only_a: Vec<_> = ka.difference(&kb).take(10).collect();
    let only_b: Vec<_> = kb.difference(&ka).take(10).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{what}: only in first {only_a:?}, only in second {only_b:?}"
    );
    let mut diffs = Vec::new();
    for (k, na) in &a.nodes {
        if na != &b.nodes[k] {
            diffs.push(format!("{k}: {na:?} vs {:?}", b.nodes[k]));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differ, e.g. {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );
    assert_eq!(a.links, b.links, "{what}: hard-link groups");
}

fn unpack_file(blob: &Path, s: &Scratch) -> UnpackStats {
    let f = fs::File::open(blob).unwrap();
    unpack_layer(f, &s.dest(), &UnpackOptions::default(), &mut |_| {}).unwrap()
}

#[test]
fn fixture_layers_unpack_with_their_whiteouts() {
    let Some(root) = fixture() else {
        eprintln!("fixture not found; skipped");
        return;
    };
    let blobs = layers(&root);
    assert_eq!(blobs.len(), 5);
    let scratch: Vec<Scratch> = blobs.iter().map(|_| Scratch::new()).collect();
    let start = Instant::now();
    let stats: Vec<UnpackStats> = blobs
        .iter()
        .zip(&scratch)
        .map(|(b, s)| unpack_file(b, s))
        .collect();
    let took = start.elapsed();
    let total: u64 = stats.iter().map(|s| s.bytes).sum();
    eprintln!(
        "unpacked 5 fixture layers ({} entries, {} MB of data) in {:.2?}",
        stats.iter().map(|s| s.entries).sum::<u64>(),
        total / 1_000_000,
        took
    );
    assert!(stats[0].entries > 6000 && stats[0].hardlinks > 0);
    let d: Vec<PathBuf> = scratch.iter().map(|s| s.dest()).collect();
    let is_wh = |p: PathBuf| {
        let m = fs::symlink_metadata(&p).unwrap();
        m.file_type().is_char_device() && m.rdev() == 0
    };
    assert!(is_wh(d[1].join("usr/share/doc")));
    assert_eq!(fs::read(d[1].join("opt/x/f")).unwrap(), b"hi\n");
    assert!(is_wh(d[2].join("etc/motd")));
    assert_eq!(
        xattrs(&d[2].join("etc/apt"))
            .get("trusted.overlay.opaque")
            .map(|v| &v[..]),
        Some(&b"y"[..])
    );
    assert!(!d[2].join("etc/apt/.wh..wh..opq").exists());
    assert!(is_wh(d[3].join("opt/x/f")));
    let g = fs::metadata(d[3].join("opt/x/g")).unwrap();
    assert_eq!(g.mode() & 0o7777, 0o4755);
    assert_eq!(
        g.ino(),
        fs::metadata(d[3].join("opt/x/hard")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(d[3].join("opt/x/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let deep = fs::metadata(d[3].join("opt/deep/a/b/c/file")).unwrap();
    assert_eq!((deep.uid(), deep.gid()), (1000, 1000));
    assert!(fs::symlink_metadata(d[4].join("usr/share/man"))
        .unwrap()
        .is_file());
    for s in &scratch {
        s.assert_contained();
    }
}

#[test]
fn fixture_layer1_matches_gnu_tar_and_round_trips() {
    let Some(root) = fixture() else {
        eprintln!("fixture not found; skipped");
        return;
    };
    let blobs = layers(&root);
    let ours = Scratch::new();
    unpack_file(&blobs[0], &ours);
    let reference = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzpf")
        .arg(&blobs[0])
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(reference.path())
        .status()
        .unwrap();
    assert!(status.success());
    let a = snapshot(&ours.dest());
    assert!(a.nodes.len() > 6000);
    assert!(!a.links.is_empty());
    assert_same(&a, &snapshot(reference.path()), "ours vs GNU tar");

    // Pack what we unpacked, unpack that: the same tree. Layer 1 (most
    // everything), 4 (whiteout, setuid, hard link, fifo, uid 1000) and 3
    // (opaque dir), in each compression.
    let mut ours = Some(ours);
    for (i, compression) in [
        (0, Compression::Gzip),
        (3, Compression::Zstd),
        (2, Compression::None),
    ] {
        let first = match ours.take() {
            Some(s) => s,
            None => {
                let s = Scratch::new();
                unpack_file(&blobs[i], &s);
                s
            }
        };
        let packed = tempfile::NamedTempFile::new().unwrap();
        let start = Instant::now();
        let st = pack_layer(&first.dest(), packed.reopen().unwrap(), compression).unwrap();
        eprintln!(
            "packed layer {} ({} entries) in {:.2?}",
            i + 1,
            st.entries,
            start.elapsed()
        );
        let again = Scratch::new();
        unpack_layer(
            packed.reopen().unwrap(),
            &again.dest(),
            &UnpackOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_same(
            &snapshot(&first.dest()),
            &snapshot(&again.dest()),
            "round trip",
        );
    }
}
