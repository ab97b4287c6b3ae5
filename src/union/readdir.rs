//! Listing merged directories.
//!
//! Layers are read top to bottom; a name is listed from the first layer that
//! has it; whiteouts in a layer (char 0/0 devices, `.wh.` files, xattr
//! whiteouts) hide the name in the layers below; `.wh.*` names themselves
//! never show. The listing is taken once per `opendir`/`rewinddir`, so
//! offsets stay valid while the directory changes.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::Arc;

use nix::errno::Errno;

use super::node::Loc;
use super::{Node, NodeId, OpenDir, Result, Union};
use crate::layer::whiteout;
use crate::layer::Kind;

/// One entry of a merged directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: CString,
    pub kind: Kind,
    /// `d_ino`: equal to what `stat` reports for the entry.
    pub ino: u64,
}

impl Union {
    /// The merged listing of directory `node`, without `.` and `..`; stops
    /// after `limit` entries when given.
    pub(super) fn merged_entries(
        &self,
        node: &Arc<Node>,
        limit: Option<usize>,
    ) -> Result<Vec<DirEntry>> {
        let locs: Vec<Loc> = {
            let st = node.state();
            st.upper
                .then_some(Loc::Upper)
                .into_iter()
                .chain(st.lowers.iter().map(|&l| Loc::Lower(l)))
                .collect()
        };
        let mut out: Vec<DirEntry> = Vec::new();
        // Names already decided (listed, or hidden by a whiteout above).
        let mut decided: HashSet<Box<[u8]>> = HashSet::new();
        // Upper entries that may stand on a lower object and inherit its
        // inode number: index into `out`.
        let mut from_upper: HashMap<Box<[u8]>, usize> = HashMap::new();
        let mut shadowing: Vec<usize> = Vec::new();

        for loc in locs {
            if let (Some(ix), Loc::Lower(_)) = (&self.index, loc) {
                // Every lower layer at once, from the stack's merged index.
                let dir = self.index_dir_key(node)?;
                let mut failed = None;
                let listed = ix.index.list(ix.stack, &dir, |name, m| {
                    if decided.contains(name) {
                        if let Some(&i) = from_upper.get(name) {
                            shadowing.push(i);
                        }
                        return true;
                    }
                    let Some(&top) = m.layers.first() else {
                        return true;
                    };
                    let dev = match self.layer(Loc::Lower(top)) {
                        Ok(l) => l.dev(),
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    };
                    let Ok(name) = CString::new(name) else {
                        return true;
                    };
                    out.push(DirEntry {
                        name,
                        kind: m.entry.kind,
                        ino: self.xino.ino(dev, m.entry.ino),
                    });
                    limit.is_none_or(|l| out.len() < l)
                });
                listed.map_err(|e| {
                    tracing::error!(error = %e, "index listing failed");
                    Errno::EIO
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
                break;
            }
            let cd = self.dir(node, loc)?;
            let scan = cd.scan()?;
            let dev = self.layer(loc)?.dev();
            // Copied-up or moved-in files keep the inode number they had.
            let borrowed_inos = loc == Loc::Upper && cd.is_impure();
            for e in cd.dir.entries()? {
                let name = e.name.to_bytes();
                if whiteout::is_whiteout_name(name) {
                    continue;
                }
                if decided.contains(name) {
                    if let Some(&i) = from_upper.get(name) {
                        shadowing.push(i);
                    }
                    continue;
                }
                let needs_stat = e.dtype == libc::DT_CHR
                    || e.dtype == libc::DT_UNKNOWN
                    || (scan.marks.xwhiteouts && e.dtype == libc::DT_REG);
                let kind = if needs_stat {
                    let Some(st) = cd.dir.stat(&e.name)? else {
                        continue;
                    };
                    decided.insert(name.into());
                    if whiteout::is_whiteout(&cd.dir, &e.name, &st, scan.marks.xwhiteouts)? {
                        continue;
                    }
                    st.kind().ok_or(Errno::EIO)?
                } else {
                    decided.insert(name.into());
                    Kind::from_dtype(e.dtype).ok_or(Errno::EIO)?
                };
                if loc == Loc::Upper {
                    from_upper.insert(name.into(), out.len());
                }
                let mut ino = self.xino.ino(dev, e.ino);
                if borrowed_inos && kind != Kind::Dir {
                    if let Some(origin) = self.read_origin(&cd.dir, &e.name)? {
                        ino = origin;
                    }
                }
                out.push(DirEntry {
                    name: e.name,
                    kind,
                    ino,
                });
                if limit.is_some_and(|l| out.len() >= l) {
                    return Ok(out);
                }
            }
            for w in &scan.wh_names {
                decided.insert(w.clone());
            }
        }

        // Upper entries over a lower object report that object's inode
        // number (merged directories, copied-up files), as stat does.
        shadowing.sort_unstable();
        shadowing.dedup();
        for i in shadowing {
            let name = out[i].name.clone();
            if let Some(found) = self.resolve(node, &name)? {
                out[i].ino = self.ino_for(node, &name, &found)?;
            }
        }
        Ok(out)
    }

    pub fn opendir(&self, id: NodeId) -> Result<OpenDir> {
        let node = self.node(id)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(OpenDir::new(node))
    }

    /// The listing of an open directory; taken anew at offset 0, at this
    /// call and not at open: a caller that caches listings keyed on a
    /// change counter it reads before asking (the kernel does) relies on it.
    pub fn readdir(&self, dir: &OpenDir, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let mut cached = dir.entries.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 || cached.is_none() {
            *cached = Some(Arc::new(self.merged_entries(&dir.node, None)?));
        }
        cached.clone().ok_or(Errno::EIO)
    }

    /// Inode numbers of `.` and `..` of an open directory.
    pub fn dot_inos(&self, dir: &OpenDir) -> (u64, u64) {
        let parent = dir
            .node
            .state()
            .link()
            .map(|l| l.parent.id)
            .unwrap_or(dir.node.id);
        (dir.node.id, parent)
    }
}
