//! What a container changed: its upper layer read against the image's
//! lower layers, as `podman diff` reports it (`A` added, `C` changed, `D`
//! deleted). Whiteouts in every form, opaque directories and directory
//! redirects (renamed directories) are honoured; lower layers are read
//! with their own whiteouts and opaque marks, as the union would.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;

use serde::Serialize;

use crate::layer::whiteout::{self, OPAQUE_MARKER};
use crate::layer::{Dir, Kind, Layer, Stat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ChangeKind {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "C")]
    Changed,
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    /// Absolute path in the container, `/etc/motd`.
    pub path: String,
    pub kind: ChangeKind,
}

/// One lower directory contributing to a merged directory.
struct LowerDir {
    dir: Dir,
    xwhiteouts: bool,
}

/// The lower directories merged at one path, top first.
type Lowers = Vec<LowerDir>;

fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "NUL in a name"))
}

fn sys(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

/// What the lower stack has at `name` below `parent`: `None` when nothing
/// is visible, else its top kind and, for a directory, the lower
/// directories merged there.
fn lower_lookup(parent: &[LowerDir], name: &CStr) -> io::Result<Option<(Kind, Lowers)>> {
    let wh = whiteout::whiteout_name(name);
    let mut found: Option<Kind> = None;
    let mut dirs = Vec::new();
    for l in parent {
        let st = l.dir.stat(name).map_err(sys)?;
        let Some(st) = st else {
            if l.dir.stat(&wh).map_err(sys)?.is_some() {
                break; // `.wh.<name>`: hidden below here
            }
            continue;
        };
        if whiteout::is_whiteout(&l.dir, name, &st, l.xwhiteouts).map_err(sys)? {
            break;
        }
        let kind = st.kind();
        if found.is_none() {
            found = kind;
        }
        if kind != Some(Kind::Dir) || found != Some(Kind::Dir) {
            break;
        }
        let marks = whiteout::dir_marks(&l.dir, name).map_err(sys)?;
        dirs.push(LowerDir {
            dir: l.dir.open_subdir(name).map_err(sys)?,
            xwhiteouts: marks.xwhiteouts,
        });
        if marks.opaque {
            break;
        }
    }
    Ok(found.map(|k| (k, dirs)))
}

/// The lower directories at absolute path `path` (a redirect target).
fn lowers_at(roots: &[LowerDir], path: &[u8]) -> io::Result<Lowers> {
    let mut cur: Lowers = roots
        .iter()
        .map(|l| {
            Ok(LowerDir {
                dir: l.dir.try_clone().map_err(sys)?,
                xwhiteouts: l.xwhiteouts,
            })
        })
        .collect::<io::Result<_>>()?;
    for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if comp == b".." || comp == b"." {
            return Ok(Vec::new());
        }
        match lower_lookup(&cur, &cname(comp)?)? {
            Some((Kind::Dir, dirs)) => cur = dirs,
            _ => return Ok(Vec::new()),
        }
    }
    Ok(cur)
}

/// Visible names of a merged lower directory.
fn lower_names(lowers: &[LowerDir]) -> io::Result<BTreeSet<Vec<u8>>> {
    let mut names = BTreeSet::new();
    for l in lowers {
        for e in l.dir.entries().map_err(sys)? {
            let n = e.name.as_bytes();
            if whiteout::is_whiteout_name(n) {
                continue;
            }
            names.insert(n.to_vec());
        }
    }
    let mut visible = BTreeSet::new();
    for n in names {
        if lower_lookup(lowers, &cname(&n)?)?.is_some() {
            visible.insert(n);
        }
    }
    Ok(visible)
}

fn join(dir: &str, name: &[u8]) -> String {
    format!("{dir}/{}", String::from_utf8_lossy(name))
}

struct Walk<'a> {
    roots: &'a [LowerDir],
    out: Vec<Change>,
}

impl Walk<'_> {
    fn push(&mut self, path: String, kind: ChangeKind) {
        self.out.push(Change { path, kind });
    }

    /// Everything visible in lower dirs `lowers` at `path`, all added (the
    /// contents of a directory renamed to a new place).
    fn add_lower_tree(
        &mut self,
        lowers: &[LowerDir],
        path: &str,
        skip: &BTreeSet<Vec<u8>>,
    ) -> io::Result<()> {
        for n in lower_names(lowers)? {
            if skip.contains(&n) {
                continue;
            }
            let p = join(path, &n);
            self.push(p.clone(), ChangeKind::Added);
            if let Some((Kind::Dir, sub)) = lower_lookup(lowers, &cname(&n)?)? {
                self.add_lower_tree(&sub, &p, &BTreeSet::new())?;
            }
        }
        Ok(())
    }

    /// Upper dir `dir` at `path`, over lower dirs `lowers` (already cut by
    /// opaque marks and redirects); `added`: the dir itself is new, so all
    /// it shows is added.
    /// `hidden`: for an opaque dir, the lower dirs it hides.
    fn dir(
        &mut self,
        dir: &Dir,
        path: &str,
        lowers: &[LowerDir],
        hidden: &[LowerDir],
        added: bool,
    ) -> io::Result<()> {
        let marks = whiteout::dir_marks(dir, c"").map_err(sys)?;
        let mut entries: Vec<Vec<u8>> = dir
            .entries()
            .map_err(sys)?
            .into_iter()
            .map(|e| e.name.into_bytes())
            .collect();
        entries.sort();
        // Names the upper dir speaks for (present or whited out).
        let mut spoken = BTreeSet::new();
        for name in &entries {
            if name.as_slice() == OPAQUE_MARKER.to_bytes() {
                continue;
            }
            if let Some(target) = whiteout::whiteout_target(name) {
                spoken.insert(target.to_vec());
                if !added && lower_lookup(lowers, &cname(target)?)?.is_some() {
                    self.push(join(path, target), ChangeKind::Deleted);
                }
                continue;
            }
            spoken.insert(name.clone());
            let c = cname(name)?;
            let Some(st) = dir.stat(&c).map_err(sys)? else {
                continue;
            };
            let below = lower_lookup(lowers, &c)?;
            if whiteout::is_whiteout(dir, &c, &st, marks.xwhiteouts).map_err(sys)? {
                if !added && below.is_some() {
                    self.push(join(path, name), ChangeKind::Deleted);
                }
                continue;
            }
            let p = join(path, name);
            let child_added = added || below.is_none();
            self.push(
                p.clone(),
                if child_added {
                    ChangeKind::Added
                } else {
                    ChangeKind::Changed
                },
            );
            if st.kind() == Some(Kind::Dir) {
                self.subdir(dir, &c, &st, &p, lowers, below, child_added)?;
            }
        }
        if marks.opaque && !added {
            // Hidden lower entries the upper does not bring back.
            for n in lower_names(hidden)? {
                if !spoken.contains(&n) {
                    self.push(join(path, &n), ChangeKind::Deleted);
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn subdir(
        &mut self,
        parent: &Dir,
        name: &CStr,
        _st: &Stat,
        path: &str,
        parent_lowers: &[LowerDir],
        below: Option<(Kind, Lowers)>,
        added: bool,
    ) -> io::Result<()> {
        let sub = parent.open_subdir(name).map_err(sys)?;
        let marks = whiteout::dir_marks(parent, name).map_err(sys)?;
        let below_dirs = match below {
            Some((Kind::Dir, d)) => d,
            _ => Vec::new(),
        };
        let (lowers, hidden): (Lowers, Lowers) = if marks.opaque {
            (Vec::new(), below_dirs)
        } else if let Some(r) = &marks.redirect {
            let from = if r.starts_with(b"/") {
                lowers_at(self.roots, r)?
            } else {
                match lower_lookup(parent_lowers, &cname(r)?)? {
                    Some((Kind::Dir, d)) => d,
                    _ => Vec::new(),
                }
            };
            (from, Vec::new())
        } else {
            (below_dirs, Vec::new())
        };
        if marks.redirect.is_some() && added {
            // A renamed directory: its lower contents are new here.
            let upper_names: BTreeSet<Vec<u8>> = sub
                .entries()
                .map_err(sys)?
                .into_iter()
                .map(|e| {
                    let n = e.name.into_bytes();
                    whiteout::whiteout_target(&n)
                        .map(<[u8]>::to_vec)
                        .unwrap_or(n)
                })
                .collect();
            self.add_lower_tree(&lowers, path, &upper_names)?;
        }
        self.dir(
            &sub,
            path,
            &lowers,
            &hidden,
            added && marks.redirect.is_none(),
        )
    }
}

/// The changes of `upper` over `lowers` (top first), sorted by path.
pub fn changes(upper: &Layer, lowers: &[Layer]) -> io::Result<Vec<Change>> {
    let roots: Lowers = lowers
        .iter()
        .map(|l| {
            Ok(LowerDir {
                dir: l.root().try_clone().map_err(sys)?,
                xwhiteouts: whiteout::dir_marks(l.root(), c"").map_err(sys)?.xwhiteouts,
            })
        })
        .collect::<io::Result<_>>()?;
    // Lowers below an opaque lower root are not part of the stack.
    let mut stack = Vec::new();
    for l in roots {
        let opaque = whiteout::dir_marks(&l.dir, c"").map_err(sys)?.opaque;
        stack.push(l);
        if opaque {
            break;
        }
    }
    let root = upper.root().try_clone().map_err(sys)?;
    let mut w = Walk {
        roots: &stack,
        out: Vec::new(),
    };
    let lowers_here = lowers_at(&stack, b"/")?;
    if whiteout::dir_marks(&root, c"").map_err(sys)?.opaque {
        w.dir(&root, "", &[], &lowers_here, false)?;
    } else {
        w.dir(&root, "", &lowers_here, &[], false)?;
    }
    let mut out = w.out;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Bytes of regular files in an upper layer (what a container's changes
/// occupy; directories and metadata are not counted).
pub fn upper_size(upper: &Layer) -> io::Result<u64> {
    fn walk(dir: &Dir) -> io::Result<u64> {
        let mut total = 0;
        for e in dir.entries().map_err(sys)? {
            let Some(st) = dir.stat(&e.name).map_err(sys)? else {
                continue;
            };
            match st.kind() {
                Some(Kind::Dir) => total += walk(&dir.open_subdir(&e.name).map_err(sys)?)?,
                Some(Kind::File) => total += st.size(),
                _ => {}
            }
        }
        Ok(total)
    }
    walk(upper.root())
}
