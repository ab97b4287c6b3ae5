//! Looking a name up through the stack of layers.
//!
//! The rules, top layer first:
//! - a whiteout (in any form) ends the search: the name does not exist
//!   below it;
//! - a non-directory is the answer, and ends the search;
//! - a directory starts a merged directory; further directories of the same
//!   name below are merged into it until an opaque one, a non-directory or a
//!   whiteout ends the merge.

use std::ffi::{CStr, CString};
use std::sync::Arc;

use nix::errno::Errno;
use smallvec::SmallVec;

use super::node::{Loc, Node, NodeState, RealId};
use super::{Attr, NodeId, Result, Union};
use crate::index::record::HAS_XATTRS;
use crate::layer::whiteout;
use crate::layer::{Kind, Stat};

/// What a name resolves to.
#[derive(Debug)]
pub(super) struct Found {
    pub kind: Kind,
    pub upper: Option<Stat>,
    /// Lower layers holding the object, top first (at most one for a
    /// non-directory: the one holding its data), with their stats.
    pub lowers: SmallVec<[(u16, Stat); 2]>,
    /// The upper file holds metadata only; its data is `lowers[0]`'s.
    pub metacopy: bool,
    /// A moved directory: the path its lower layers hold it at.
    pub redirect: Option<CString>,
    /// The index says the top lower object has no extended attributes.
    pub lower_xattr_free: bool,
}

impl Found {
    fn new(loc: Loc, st: Stat) -> Option<Found> {
        let kind = st.kind()?;
        let mut f = Found {
            kind,
            upper: None,
            lowers: SmallVec::new(),
            metacopy: false,
            redirect: None,
            lower_xattr_free: false,
        };
        match loc {
            Loc::Upper => f.upper = Some(st),
            Loc::Lower(l) => f.lowers.push((l, st)),
        }
        Some(f)
    }

    /// Stat of the top object.
    pub fn top(&self) -> &Stat {
        match (&self.upper, self.lowers.first()) {
            (Some(st), _) => st,
            (None, Some((_, st))) => st,
            // A Found is built from one stat and only grows.
            (None, None) => unreachable!("Found without any layer"),
        }
    }

    pub fn key(&self) -> RealId {
        let st = self.top();
        RealId {
            dev: st.dev(),
            ino: st.ino(),
        }
    }
}

/// Rejects names that cannot be entries: empty, `.`, `..`, with a slash, or
/// reserved for whiteouts.
pub(super) fn check_name(name: &CStr) -> Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Union {
    /// The layers to search for a child of `parent`: the upper layer if
    /// `parent` exists there, then its merged lowers.
    fn search_path(&self, parent: &Node) -> SmallVec<[Loc; 4]> {
        let st = parent.state();
        let mut locs = SmallVec::new();
        if st.upper {
            locs.push(Loc::Upper);
        }
        locs.extend(st.lowers.iter().map(|&l| Loc::Lower(l)));
        locs
    }

    /// Resolves `name` in directory `parent` through the layers.
    pub(super) fn resolve(&self, parent: &Arc<Node>, name: &CStr) -> Result<Option<Found>> {
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if whiteout::is_whiteout_name(name.to_bytes()) {
            return Ok(None);
        }
        self.resolve_in(parent, name, &self.search_path(parent))
    }

    fn resolve_in(&self, parent: &Arc<Node>, name: &CStr, locs: &[Loc]) -> Result<Option<Found>> {
        let mut found: Option<Found> = None;
        for (i, &loc) in locs.iter().enumerate() {
            if let (Some(ix), Loc::Lower(_)) = (&self.index, loc) {
                // The lower layers, all at once.
                self.resolve_indexed(ix, parent, name, &mut found)?;
                break;
            }
            let cd = self.dir(parent, loc)?;
            let scan = cd.scan()?;
            let Some(st) = cd.dir.stat(name)? else {
                if scan.wh_names.contains(name.to_bytes()) {
                    break;
                }
                continue;
            };
            if whiteout::is_whiteout(&cd.dir, name, &st, scan.marks.xwhiteouts)? {
                break;
            }
            match &mut found {
                // A metadata-only upper file: its data is the next lower
                // file of that name.
                Some(f) if f.metacopy => {
                    if st.kind() == Some(Kind::File) {
                        if let Loc::Lower(l) = loc {
                            f.lowers.push((l, st));
                        }
                    }
                    break;
                }
                None => {
                    found = Found::new(loc, st);
                    if !st.is_dir() {
                        // Any upper file may hold metadata only (others
                        // write uppers too): check every one, as the
                        // kernel does with metacopy on.
                        if loc == Loc::Upper
                            && st.kind() == Some(Kind::File)
                            && whiteout::is_metacopy(&cd.dir, name)?
                        {
                            let redirect = whiteout::redirect_of(&cd.dir, name)?;
                            if let Some(f) = &mut found {
                                f.metacopy = true;
                                // Renamed or linked: its data is elsewhere.
                                if let Some(target) = redirect {
                                    self.follow_redirect(parent, f, &target)?;
                                    break;
                                }
                            }
                            continue;
                        }
                        break;
                    }
                }
                Some(f) => {
                    if !st.is_dir() {
                        break;
                    }
                    if let Loc::Lower(l) = loc {
                        f.lowers.push((l, st));
                    }
                }
            }
            // A directory: does it hide the layers below, or were its lower
            // layers moved elsewhere? (Moved directories live in impure
            // parents, and may have lowers where the parent has none.)
            let more_below = i + 1 < locs.len();
            let upper_moved = loc == Loc::Upper && cd.is_impure();
            if more_below || upper_moved {
                if scan.wh_names.contains(name.to_bytes()) {
                    break;
                }
                let marks = whiteout::dir_marks(&cd.dir, name)?;
                if marks.opaque {
                    break;
                }
                if let (Loc::Upper, Some(target)) = (loc, &marks.redirect) {
                    if let Some(f) = &mut found {
                        self.follow_redirect(parent, f, target)?;
                    }
                    break;
                }
            }
        }
        Ok(found)
    }

    /// What the lower layers merged into `parent` hold at `name`, from the
    /// stack's merged index, added to what the upper layer gave.
    fn resolve_indexed(
        &self,
        ix: &super::LowerIndex,
        parent: &Arc<Node>,
        name: &CStr,
        found: &mut Option<Found>,
    ) -> Result<()> {
        let dir = self.index_dir_key(parent)?;
        let merged = ix
            .index
            .lookup(ix.stack, &dir, name.to_bytes())
            .map_err(|e| {
                tracing::error!(error = %e, "index lookup failed");
                Errno::EIO
            })?;
        let Some(m) = merged else { return Ok(()) };
        let Some(&top) = m.layers.first() else {
            return Ok(());
        };
        let st = m.entry.to_stat(self.layer(Loc::Lower(top))?.dev());
        let layers = m.layers.iter().map(|&l| (l, st));
        match found {
            None => {
                let mut f = Found::new(Loc::Lower(top), st).ok_or(Errno::EIO)?;
                f.lowers = layers.collect();
                f.lower_xattr_free = m.entry.flags & HAS_XATTRS == 0;
                *found = Some(f);
            }
            Some(f) if f.metacopy => {
                if m.entry.kind == Kind::File {
                    f.lowers.push((top, st));
                }
            }
            Some(f) if f.kind == Kind::Dir && m.entry.kind == Kind::Dir => f.lowers.extend(layers),
            Some(_) => {}
        }
        Ok(())
    }

    /// A directory's path in the lower layers as the index keys it (empty
    /// for the root).
    pub(super) fn index_dir_key(&self, dir: &Node) -> Result<Vec<u8>> {
        let p = self.path_of(dir, true)?.into_bytes();
        Ok(if p == b"." { Vec::new() } else { p })
    }

    /// Finds the lower layers of a moved upper directory (or the data of a
    /// moved metadata-only file) at the path its redirect names, one layer
    /// at a time, as the kernel does.
    fn follow_redirect(&self, parent: &Arc<Node>, f: &mut Found, target: &[u8]) -> Result<()> {
        let want_dir = f.kind == Kind::Dir;
        let path = match target.strip_prefix(b"/") {
            Some(abs) => abs.to_vec(),
            None => {
                let mut p = self.path_of(parent, true)?.into_bytes();
                if p == b"." {
                    p.clear();
                } else {
                    p.push(b'/');
                }
                p.extend_from_slice(target);
                p
            }
        };
        let sane = !path.is_empty()
            && path
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b"..");
        if !sane {
            tracing::warn!(redirect = ?String::from_utf8_lossy(target), "ignoring a malformed redirect");
            return Ok(());
        }
        let (dir_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (b".".to_vec(), path.clone()),
        };
        let dir_path = CString::new(dir_path).map_err(|_| Errno::EINVAL)?;
        let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let wh = whiteout::whiteout_name(&name);
        for (l, layer) in self.lowers.iter().enumerate() {
            let dir = match layer.open_dir(&dir_path) {
                Ok(d) => d,
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            match dir.stat(&name)? {
                None if dir.stat(&wh)?.is_some() => break,
                None => continue,
                Some(st) if !want_dir => {
                    if st.kind() == Some(Kind::File) {
                        f.lowers.push((l as u16, st));
                    }
                    break;
                }
                Some(st) if !st.is_dir() => break,
                Some(st) => {
                    f.lowers.push((l as u16, st));
                    if whiteout::dir_marks(&dir, &name)?.opaque {
                        break;
                    }
                }
            }
        }
        f.redirect = Some(CString::new(path).map_err(|_| Errno::EINVAL)?);
        Ok(())
    }

    /// Whether `name` exists in the lower layers merged into `parent`, i.e.
    /// whether removing it from the upper layer would uncover something.
    pub(super) fn lower_has(&self, parent: &Arc<Node>, name: &CStr) -> Result<bool> {
        let locs: SmallVec<[Loc; 4]> = parent
            .state()
            .lowers
            .iter()
            .map(|&l| Loc::Lower(l))
            .collect();
        Ok(self.resolve_in(parent, name, &locs)?.is_some())
    }

    /// The node for a resolved name, with one more kernel reference.
    pub(super) fn node_for(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        found: &Found,
    ) -> Result<Arc<Node>> {
        let key = found.key();
        let node = self.nodes.acquire(key, found.kind, || {
            let ino = self.ino_for(parent, name, found)?;
            let index_nlink = match &found.upper {
                Some(up) if found.kind == Kind::File && up.nlink() >= 2 => {
                    let cd = self.dir(parent, Loc::Upper)?;
                    self.read_index_nlink(&cd.dir, name)?
                }
                _ => 0,
            };
            let state = NodeState {
                links: SmallVec::new(),
                upper: found.upper.is_some(),
                lowers: found.lowers.iter().map(|(l, _)| *l).collect(),
                key,
                metacopy: found.metacopy,
                lower_path: found.redirect.clone().map(Arc::new),
                index_nlink,
                unlinked: false,
                orphan: None,
                lower_xattr_free: found.upper.is_none() && found.lower_xattr_free,
            };
            Ok::<_, Errno>((ino, state))
        })?;
        node.add_link(parent, name);
        Ok(node)
    }

    /// The stable `st_ino` of a resolved object: for a merged or lower
    /// directory its top lower directory's, for a copied-up file the one it
    /// had in the lower layer (recorded at copy-up), else its own.
    pub(super) fn ino_for(&self, parent: &Arc<Node>, name: &CStr, found: &Found) -> Result<u64> {
        let Some(up) = &found.upper else {
            let (_, st) = found.lowers.first().ok_or(Errno::EIO)?;
            return Ok(self.st_ino(st));
        };
        if found.kind == Kind::Dir {
            return Ok(match found.lowers.first() {
                Some((_, st)) => self.st_ino(st),
                None => self.st_ino(up),
            });
        }
        // Files that borrowed an inode number live in impure directories.
        let cd = self.dir(parent, Loc::Upper)?;
        if cd.is_impure() {
            if let Some(origin) = self.read_origin(&cd.dir, name)? {
                return Ok(origin);
            }
        }
        Ok(self.st_ino(up))
    }

    /// A lower file with several names, one of which was copied up: this
    /// name becomes a link to that copy, so all names stay one inode (the
    /// kernel's `index=on`). Returns what the name resolves to then.
    fn converge_hardlink(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        found: &Found,
    ) -> Result<Option<Found>> {
        let Some(upper) = &self.upper else {
            return Ok(None);
        };
        let (None, Some((_, st)), Kind::File) = (&found.upper, found.lowers.first(), found.kind)
        else {
            return Ok(None);
        };
        if st.nlink() < 2 {
            return Ok(None);
        }
        let key = super::Upper::index_key(st);
        if upper.index.stat(&key)?.is_none() {
            return Ok(None);
        }
        self.link_up(parent, name, &key)?;
        self.resolve(parent, name)
    }

    /// LOOKUP: the node and attributes of `name` in `parent`, with one more
    /// kernel reference on the node.
    pub fn lookup(&self, parent: NodeId, name: &CStr) -> Result<(Arc<Node>, Attr)> {
        let parent = self.node(parent)?;
        check_name(name).map_err(|e| if e == Errno::EINVAL { Errno::ENOENT } else { e })?;
        let mut found = self.resolve(&parent, name)?.ok_or(Errno::ENOENT)?;
        if let Some(linked) = self.converge_hardlink(&parent, name, &found)? {
            found = linked;
        }
        let node = self.node_for(&parent, name, &found)?;
        match self.attr_of(&node, found.top()) {
            Ok(attr) => Ok((node, attr)),
            Err(e) => {
                self.forget(node.id, 1);
                Err(e)
            }
        }
    }
}
