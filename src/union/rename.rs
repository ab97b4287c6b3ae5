//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! A lower file is copied up and then renamed inside the upper layer; where
//! the old name still exists in a lower layer, a whiteout is left there
//! (atomically with `RENAME_WHITEOUT` where the filesystem allows).
//! Directories that exist in a lower layer cannot move yet: that needs a
//! redirect record and gives EXDEV, which `mv` and friends handle by copying.
//! A directory that lands where a lower layer has the name is made opaque.

use std::ffi::CStr;
use std::sync::Arc;

use nix::errno::Errno;

use super::copyup::{remove_tree, CopyData};
use super::node::Loc;
use super::resolve::{check_name, Found};
use super::{Node, NodeId, Result, Union};
use crate::layer::whiteout;
use crate::layer::Kind;

const SUPPORTED: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;

/// Temporary kernel-style references taken for the duration of a rename.
struct Held<'a> {
    union: &'a Union,
    nodes: Vec<Arc<Node>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for n in &self.nodes {
            self.union.forget(n.id, 1);
        }
    }
}

impl Union {
    pub fn rename(
        &self,
        parent: NodeId,
        name: &CStr,
        newparent: NodeId,
        newname: &CStr,
        flags: u32,
    ) -> Result<()> {
        if flags & !SUPPORTED != 0
            || flags & (libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) == SUPPORTED
        {
            return Err(Errno::EINVAL);
        }
        let parent = self.node(parent)?;
        let newparent = self.node(newparent)?;
        check_name(name)?;
        check_name(newname)?;
        if whiteout::is_whiteout_name(newname.to_bytes()) {
            return Err(Errno::EINVAL);
        }
        self.upper()?;

        let src = self.resolve(&parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve(&newparent, newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }

        let mut held = Held {
            union: self,
            nodes: Vec::new(),
        };
        let src_node = self.node_for(&parent, name, &src)?;
        held.nodes.push(src_node.clone());
        let dst_node = match &dst {
            Some(d) => {
                let n = self.node_for(&newparent, newname, d)?;
                held.nodes.push(n.clone());
                Some(n)
            }
            None => None,
        };
        if dst_node.as_ref().is_some_and(|d| d.id == src_node.id) {
            // Two names of one file, or the same name: nothing to do.
            return Ok(());
        }

        check_kinds(&src, dst.as_ref(), exchange)?;
        // A directory with lower layers moves with a redirect to where they
        // hold it (kernel redirect_dir); without redirects, EXDEV.
        let redirect = if src.kind == Kind::Dir && !src.lowers.is_empty() {
            if !self.cfg.redirect_dir || exchange {
                return Err(Errno::EXDEV);
            }
            Some(self.redirect_value(&src_node)?)
        } else {
            None
        };
        if exchange
            && dst
                .as_ref()
                .is_some_and(|d| d.kind == Kind::Dir && !d.lowers.is_empty())
        {
            return Err(Errno::EXDEV);
        }
        if let (Some(d), false) = (&dst, exchange) {
            if d.kind == Kind::Dir && !self.is_empty_dir(dst_node.as_ref().ok_or(Errno::EIO)?)? {
                return Err(Errno::ENOTEMPTY);
            }
        }

        // A lower file moves as a metadata-only copy that points at its
        // data, as the kernel does with metacopy and redirects.
        self.copy_up(&src_node, self.data_for_move(&src_node))?;
        self.redirect_file(&src_node)?;
        self.copy_up(&parent, CopyData::All)?;
        self.copy_up(&newparent, CopyData::All)?;
        if let (Some(d), true) = (&dst_node, exchange) {
            self.copy_up(d, CopyData::All)?;
        }

        if exchange {
            self.rename_exchange(&parent, name, &newparent, newname, &src, dst.as_ref())?;
            let d = dst_node.as_ref().ok_or(Errno::EIO)?;
            self.relink(&src_node, &parent, name, &newparent, newname);
            self.relink(d, &newparent, newname, &parent, name);
            self.note_moved(&src_node, &newparent, newname)?;
            self.note_moved(d, &parent, name)?;
            return Ok(());
        }

        let redirected = redirect.is_some();
        if let Some((target, value)) = redirect {
            let up = self.dir(&parent, Loc::Upper)?;
            up.dir
                .set_xattr(name, self.cfg.xattr_ns.redirect(), &value, 0)?;
            src_node.state_mut().lower_path = Some(target);
        }
        if let Some(d) = &dst_node {
            self.keep_orphan(d);
        }
        // A moved file or directory brings its inode number (and maybe a
        // redirect or a metadata-only copy) along: mark its new directory
        // before it arrives there.
        if redirected || self.borrows_identity(&src_node)? {
            let to = self.dir(&newparent, Loc::Upper)?;
            self.mark_impure(&to);
        }
        self.rename_replace(&parent, name, &newparent, newname, src.kind, redirected)?;
        if let Some(d) = &dst_node {
            self.unlink_node(d, &newparent, newname);
        }
        self.relink(&src_node, &parent, name, &newparent, newname);
        self.note_moved(&src_node, &newparent, newname)
    }

    /// How much data a file that is about to move (or gain a name) needs
    /// in the upper layer: none with metacopy and redirects, else all.
    pub(super) fn data_for_move(&self, node: &Node) -> CopyData {
        if self.cfg.metacopy && self.cfg.redirect_dir && node.kind == Kind::File {
            CopyData::Meta
        } else {
            CopyData::All
        }
    }

    /// Gives a metadata-only file about to move a redirect to its data
    /// (once: it keeps pointing at the same lower file).
    pub(super) fn redirect_file(&self, node: &Arc<Node>) -> Result<()> {
        {
            let st = node.state();
            if !st.metacopy || st.lower_path.is_some() || node.is_dir() {
                return Ok(());
            }
        }
        let (path, value) = self.redirect_value(node)?;
        let up = self.real_in(node, Loc::Upper)?;
        up.dir
            .dir
            .set_xattr(up.name(), self.cfg.xattr_ns.redirect(), &value, 0)?;
        node.state_mut().lower_path = Some(path);
        Ok(())
    }

    /// Whether a non-directory's upper copy carries an inode number or data
    /// from elsewhere (a copy-up), which its directory must be marked for.
    fn borrows_identity(&self, node: &Arc<Node>) -> Result<bool> {
        if node.is_dir() {
            return Ok(false);
        }
        if node.state().metacopy {
            return Ok(true);
        }
        let st = self.real_in(node, Loc::Upper)?.stat()?;
        Ok(self.st_ino(&st) != node.id)
    }

    /// A file that arrives in a directory with an inode number it brought
    /// from elsewhere makes that directory impure (see `mark_impure`).
    fn note_moved(&self, node: &Arc<Node>, dir: &Arc<Node>, name: &CStr) -> Result<()> {
        let to = self.dir(dir, Loc::Upper)?;
        if node.is_dir() {
            // Lookups look for redirects in impure directories only.
            if node.state().lower_path.is_some() {
                self.mark_impure(&to);
            }
            return Ok(());
        }
        if let Some(st) = to.dir.stat(name)? {
            if self.st_ino(&st) != node.id {
                self.mark_impure(&to);
            }
        }
        Ok(())
    }

    /// Moves `name` over `newname` in the upper layer, leaving a whiteout
    /// behind where a lower layer has the old name.
    fn rename_replace(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        newparent: &Arc<Node>,
        newname: &CStr,
        kind: Kind,
        redirected: bool,
    ) -> Result<()> {
        let upper = self.upper()?;
        let needs_whiteout = self.lower_has(parent, name)?;
        let dst_has_lower = self.lower_has(newparent, newname)?;
        let from = self.dir(parent, Loc::Upper)?;
        let to = self.dir(newparent, Loc::Upper)?;
        let is_dir = kind == Kind::Dir;

        if is_dir && dst_has_lower && !redirected {
            // Arriving over a lower directory, it must not merge with it. (A
            // redirected one merges only with the layers its redirect names.)
            whiteout::set_opaque(&from.dir, name, self.cfg.xattr_ns)?;
        }

        let target = to.dir.stat(newname)?;
        let target_is_whiteout = target.as_ref().is_some_and(whiteout::is_whiteout_dev);
        let target_is_dir = target.as_ref().is_some_and(|t| t.is_dir());

        // Cases where a plain rename cannot replace the target: a directory
        // onto a whiteout device, or onto an upper directory that still holds
        // whiteouts. Exchange, then dispose of what came back.
        let mut exchanged = false;
        if is_dir && target_is_whiteout {
            from.dir
                .rename(name, &to.dir, newname, libc::RENAME_EXCHANGE)?;
            exchanged = true;
        } else if target_is_dir {
            match from.dir.rename(name, &to.dir, newname, 0) {
                Ok(()) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    from.dir
                        .rename(name, &to.dir, newname, libc::RENAME_EXCHANGE)?;
                    exchanged = true;
                }
                Err(e) => return Err(e),
            }
        } else if needs_whiteout {
            match from
                .dir
                .rename(name, &to.dir, newname, libc::RENAME_WHITEOUT)
            {
                Ok(()) => {
                    self.after_placed(newparent, newname, &to)?;
                    return Ok(());
                }
                Err(Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP) => {
                    from.dir.rename(name, &to.dir, newname, 0)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            from.dir.rename(name, &to.dir, newname, 0)?;
        }

        if exchanged {
            // What the exchange brought back to the old name: the replaced
            // target. A whiteout device may simply stay if one is needed.
            let back = from.dir.stat(name)?.ok_or(Errno::EIO)?;
            if !(needs_whiteout && whiteout::is_whiteout_dev(&back)) {
                let tmp = upper.tmp_name();
                from.dir.rename(name, &upper.work, &tmp, 0)?;
                remove_tree(&upper.work, &tmp)?;
                if needs_whiteout {
                    self.whiteout_at(parent, &from, name)?;
                }
            }
        } else if needs_whiteout {
            self.whiteout_at(parent, &from, name)?;
        }
        self.after_placed(newparent, newname, &to)
    }

    fn whiteout_at(
        &self,
        parent: &Arc<Node>,
        dir: &super::dircache::CachedDir,
        name: &CStr,
    ) -> Result<()> {
        if whiteout::create_whiteout(&dir.dir, name)? == whiteout::WhiteoutForm::WhFile {
            self.dirs.remove(parent.id, Loc::Upper);
        }
        Ok(())
    }

    /// Drops a `.wh.` file for a name that exists again.
    fn after_placed(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        dir: &super::dircache::CachedDir,
    ) -> Result<()> {
        if dir.has_wh_file(name)? {
            match dir.dir.unlink(&whiteout::whiteout_name(name)) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            self.dirs.remove(parent.id, Loc::Upper);
        }
        Ok(())
    }

    fn rename_exchange(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        newparent: &Arc<Node>,
        newname: &CStr,
        src: &Found,
        dst: Option<&Found>,
    ) -> Result<()> {
        let from = self.dir(parent, Loc::Upper)?;
        let to = self.dir(newparent, Loc::Upper)?;
        from.dir
            .rename(name, &to.dir, newname, libc::RENAME_EXCHANGE)?;
        // A directory now standing over a lower name must not merge with it.
        if src.kind == Kind::Dir && self.lower_has(newparent, newname)? {
            whiteout::set_opaque(&to.dir, newname, self.cfg.xattr_ns)?;
        }
        if dst.is_some_and(|d| d.kind == Kind::Dir) && self.lower_has(parent, name)? {
            whiteout::set_opaque(&from.dir, name, self.cfg.xattr_ns)?;
        }
        Ok(())
    }

    /// Keeps an `O_PATH` fd on an object about to lose its last name.
    fn keep_orphan(&self, node: &Arc<Node>) {
        if node.is_dir() {
            return;
        }
        let fd = node
            .state()
            .top()
            .and_then(|loc| self.real_in(node, loc).ok())
            .and_then(|r| r.dir.dir.open_path(r.name()).ok());
        node.state_mut().orphan = fd.map(Arc::new);
    }

    /// Moves one name of a node.
    fn relink(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &CStr,
        to: &Arc<Node>,
        newname: &CStr,
    ) {
        let mut st = node.state_mut();
        if let Some(l) = st
            .links
            .iter_mut()
            .find(|l| l.parent.id == parent.id && l.name.as_c_str() == name)
        {
            l.parent = to.clone();
            l.name = newname.to_owned();
        } else {
            st.links.push(super::node::Link {
                parent: to.clone(),
                name: newname.to_owned(),
            });
        }
        st.unlinked = false;
    }
}

fn check_kinds(src: &Found, dst: Option<&Found>, exchange: bool) -> Result<()> {
    let Some(dst) = dst else { return Ok(()) };
    if exchange {
        return Ok(());
    }
    match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
        (true, false) => Err(Errno::ENOTDIR),
        (false, true) => Err(Errno::EISDIR),
        _ => Ok(()),
    }
}
