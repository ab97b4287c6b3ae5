//! Removing entries: unlink and rmdir.
//!
//! Removing a name that only the upper layer has is a plain unlink. Where a
//! lower layer has the name too, a whiteout must take its place, atomically:
//! a whiteout is made in the work directory and renamed (or exchanged) over
//! the upper entry; with no upper entry the whiteout is created in place.

use std::ffi::CStr;
use std::sync::Arc;

use nix::errno::Errno;

use super::copyup::{remove_tree, CopyData};
use super::node::Loc;
use super::resolve::check_name;
use super::{Node, NodeId, Result, Union};
use crate::layer::whiteout;

impl Union {
    pub fn unlink(&self, parent: NodeId, name: &CStr) -> Result<()> {
        let parent = self.node(parent)?;
        self.remove(&parent, name, false)
    }

    pub fn rmdir(&self, parent: NodeId, name: &CStr) -> Result<()> {
        let parent = self.node(parent)?;
        self.remove(&parent, name, true)
    }

    fn remove(&self, parent: &Arc<Node>, name: &CStr, dir: bool) -> Result<()> {
        check_name(name)?;
        self.upper()?;
        let found = self.resolve(parent, name)?.ok_or(Errno::ENOENT)?;
        let is_dir = found.kind == crate::layer::Kind::Dir;
        if dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::EISDIR);
        }
        // The node, if the kernel knows it, learns that this name is gone.
        let node = self.node_for(parent, name, &found)?;
        if is_dir && !self.is_empty_dir(&node)? {
            self.forget(node.id, 1);
            return Err(Errno::ENOTEMPTY);
        }
        let result = self.remove_entry(parent, name, found.upper.is_some(), is_dir, &node);
        self.forget(node.id, 1);
        result
    }

    fn remove_entry(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        in_upper: bool,
        is_dir: bool,
        node: &Arc<Node>,
    ) -> Result<()> {
        let upper = self.upper()?;
        let needs_whiteout = self.lower_has(parent, name)?;
        self.copy_up(parent, CopyData::All)?;
        let up = self.dir(parent, Loc::Upper)?;

        // Keep the object reachable for fstat on a still-open file.
        if !is_dir {
            let orphan = match node.state().top() {
                Some(loc) => self
                    .real_in(node, loc)
                    .and_then(|r| r.dir.dir.open_path(r.name()))
                    .ok(),
                None => None,
            };
            node.state_mut().orphan = orphan.map(Arc::new);
        }

        match (in_upper, needs_whiteout) {
            (false, false) => {
                // Only reachable when the lower entry vanished under us.
                return Err(Errno::ENOENT);
            }
            (false, true) => {
                if whiteout::create_whiteout(&up.dir, name)? == whiteout::WhiteoutForm::WhFile {
                    self.dirs.remove(parent.id, Loc::Upper);
                }
            }
            (true, false) => {
                if is_dir {
                    match up.dir.rmdir(name) {
                        Ok(()) => {}
                        // It holds whiteouts only (we checked it looks empty).
                        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                            let tmp = upper.tmp_name();
                            up.dir.rename(name, &upper.work, &tmp, 0)?;
                            remove_tree(&upper.work, &tmp)?;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    up.dir.unlink(name)?;
                }
            }
            (true, true) => {
                let tmp = upper.tmp_name();
                match upper.work.mknod(&tmp, libc::S_IFCHR, 0) {
                    Ok(()) => {
                        if is_dir {
                            upper
                                .work
                                .rename(&tmp, &up.dir, name, libc::RENAME_EXCHANGE)?;
                            remove_tree(&upper.work, &tmp)?;
                        } else {
                            upper.work.rename(&tmp, &up.dir, name, 0)?;
                        }
                    }
                    Err(Errno::EPERM) => {
                        // No char devices here: mark first, then remove, so
                        // a crash in between leaves the lower entry hidden.
                        whiteout::create_wh_file(&up.dir, name)?;
                        if is_dir {
                            let t = upper.tmp_name();
                            up.dir.rename(name, &upper.work, &t, 0)?;
                            remove_tree(&upper.work, &t)?;
                        } else {
                            up.dir.unlink(name)?;
                        }
                        self.dirs.remove(parent.id, Loc::Upper);
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        self.unlink_node(node, parent, name);
        Ok(())
    }

    /// Drops the name `(parent, name)` from a node after its entry was
    /// removed.
    pub(super) fn unlink_node(&self, node: &Arc<Node>, parent: &Arc<Node>, name: &CStr) {
        let gone = {
            let mut st = node.state_mut();
            st.links
                .retain(|l| !(l.parent.id == parent.id && l.name.as_c_str() == name));
            if st.links.is_empty() {
                st.unlinked = true;
            }
            st.unlinked
        };
        if gone {
            self.nodes.unhash(node);
            if node.is_dir() {
                self.evict_dirs(node);
            }
        }
    }

    /// Whether a merged directory shows no entries.
    pub(super) fn is_empty_dir(&self, node: &Arc<Node>) -> Result<bool> {
        Ok(self.merged_entries(node, Some(1))?.is_empty())
    }
}
