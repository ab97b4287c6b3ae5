//! Copy-up: bringing an object from a lower layer into the upper layer
//! before it is changed.
//!
//! Every copy-up is prepared under a temporary name in the work directory
//! (data, owner, mode, xattrs, times, all of it, synced when asked) and then
//! renamed into place with `RENAME_NOREPLACE`. A crash leaves either nothing
//! or a complete copy in the upper layer; leftovers in the work directory
//! are removed at the next mount.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use nix::errno::Errno;

use super::dircache::CachedDir;
use super::node::{Loc, Node, RealId};
use super::{Result, Union, Upper};
use crate::layer::sys;
use crate::layer::whiteout;
use crate::layer::{Dir, Kind, Stat};

/// How much of a file's data a copy-up brings along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyData {
    /// All of it.
    All,
    /// None yet: only metadata changes (chmod, chown, utimes, xattrs). With
    /// `metacopy` on, a regular file's upper copy then holds no data and is
    /// marked `overlay.metacopy`, as the kernel does.
    Meta,
    /// None: the file is about to be truncated to zero anyway.
    None,
}

/// Removes a temporary entry from the work directory unless disarmed.
struct TmpGuard<'a> {
    work: &'a Dir,
    name: &'a CStr,
    is_dir: bool,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let r = if self.is_dir {
                remove_tree(self.work, self.name)
            } else {
                self.work.unlink(self.name)
            };
            if let Err(e) = r {
                tracing::warn!(name = ?self.name, error = %e, "could not remove a work directory entry");
            }
        }
    }
}

impl Union {
    /// Makes sure `node` exists in the upper layer (its parents too).
    pub(super) fn copy_up(&self, node: &Arc<Node>, data: CopyData) -> Result<()> {
        {
            let st = node.state();
            if st.upper && !(st.metacopy && data != CopyData::Meta) {
                return Ok(());
            }
            if st.upper {
                drop(st);
                return self.copy_up_data(node, data);
            }
        }
        let upper = self.upper()?;
        let link = node.state().link().cloned().ok_or(Errno::ENOENT)?;
        self.copy_up(&link.parent, CopyData::All)?;

        let _serial = node.copy_up_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (lower, name) = {
            let st = node.state();
            if st.upper {
                return Ok(());
            }
            // Re-read the link: a rename may have moved the node meanwhile.
            let link = st.link().cloned().ok_or(Errno::ENOENT)?;
            (st.lowers.first().copied().ok_or(Errno::EIO)?, link)
        };
        let (parent, name) = (name.parent, name.name);
        let src = self.dir(&parent, Loc::Lower(lower))?;
        let st = src.dir.stat(&name)?.ok_or(Errno::ENOENT)?;
        let dst_parent = self.dir(&parent, Loc::Upper)?;

        // A lower file with several names that was copied up through
        // another one: this name becomes a link to that copy.
        let hardlinked = !node.is_dir() && st.nlink() > 1;
        let key = Upper::index_key(&st);
        if hardlinked && upper.index.stat(&key)?.is_some() {
            let new = self.link_up(&parent, &name, &key)?;
            self.adopt_upper(node, &dst_parent, &name, &new)?;
            return Ok(());
        }

        let work = &upper.work;
        let tmp = upper.tmp_name();
        let mut guard = TmpGuard {
            work,
            name: &tmp,
            is_dir: node.is_dir(),
            armed: true,
        };
        let kind = st.kind().ok_or(Errno::EIO)?;
        let meta_only =
            data == CopyData::Meta && self.cfg.metacopy && kind == Kind::File && st.size() > 0;
        match kind {
            Kind::Dir => work.mkdir(&tmp, 0o700)?,
            Kind::File => {
                let dst = work.create(&tmp, libc::O_WRONLY, 0o600)?;
                if meta_only {
                    // The size, without the data: reads go to the lower file.
                    sys::ftruncate(dst.as_fd(), st.size() as i64)?;
                } else if data != CopyData::None && st.size() > 0 {
                    let from = src.dir.open(&name, libc::O_RDONLY)?;
                    copy_data(from.as_fd(), dst.as_fd(), st.size())?;
                    // Data that came up must be on disk before the copy is
                    // visible; a metadata-only copy has none to sync (the
                    // kernel does not sync those either).
                    if self.cfg.fsync {
                        sys::fsync(dst.as_fd(), false)?;
                    }
                }
            }
            Kind::Symlink => work.symlink(&tmp, &rawcstr(&src.dir.readlink(&name)?)?)?,
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                work.mknod(&tmp, st.mode() & libc::S_IFMT | 0o600, st.rdev())?
            }
        }
        self.copy_metadata(&src.dir, &name, &st, work, &tmp, !node.is_dir())?;
        if !node.is_dir() {
            self.write_origin(work, &tmp, self.st_ino(&st));
            // Before the copy is visible: lookups trust only impure
            // directories to hold copies (origin and metacopy marks).
            self.mark_impure(&dst_parent);
        }
        if meta_only {
            work.set_xattr(&tmp, self.cfg.xattr_ns.metacopy(), b"", 0)?;
        }
        if hardlinked {
            // Recorded before the copy is visible: every other name of the
            // lower file links to it from now on.
            let nlink = (st.nlink().min(u64::from(u32::MAX)) as u32).to_le_bytes();
            work.set_xattr(&tmp, self.cfg.xattr_ns.nlink(), &nlink, 0)?;
            match work.link(&tmp, &upper.index, &key) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    // A copy that never made it into place (a crash).
                    upper.index.unlink(&key)?;
                    work.link(&tmp, &upper.index, &key)?;
                }
                Err(e) => return Err(e),
            }
        }
        // A copy-up is not a change of the directory: keep its times, as
        // the kernel does.
        let parent_times = dst_parent.dir.stat_self()?;
        work.rename(&tmp, &dst_parent.dir, &name, libc::RENAME_NOREPLACE)?;
        guard.armed = false;
        dst_parent
            .dir
            .utimens(c"", &[parent_times.atime(), parent_times.mtime()])?;

        let new = dst_parent.dir.stat(&name)?.ok_or(Errno::EIO)?;
        {
            let mut s = node.state_mut();
            s.upper = true;
            s.metacopy = meta_only;
            if !node.is_dir() && !meta_only {
                s.lowers.clear();
            }
            if hardlinked {
                s.index_nlink = st.nlink().min(u64::from(u32::MAX)) as u32;
            }
        }
        self.nodes.rekey(
            node,
            RealId {
                dev: new.dev(),
                ino: new.ino(),
            },
        );
        tracing::debug!(node = node.id, ?name, "copied up");
        Ok(())
    }

    /// Links the indexed copy `key` of a lower hard-linked file into the
    /// upper directory of `parent` as `name` (through the work directory, so
    /// the name appears complete), keeping the directory's times.
    pub(super) fn link_up(&self, parent: &Arc<Node>, name: &CStr, key: &CStr) -> Result<Stat> {
        let upper = self.upper()?;
        self.copy_up(parent, CopyData::All)?;
        let up = self.dir(parent, Loc::Upper)?;
        self.mark_impure(&up);
        let tmp = upper.tmp_name();
        upper.index.link(key, &upper.work, &tmp)?;
        let times = up.dir.stat_self()?;
        if let Err(e) = upper
            .work
            .rename(&tmp, &up.dir, name, libc::RENAME_NOREPLACE)
        {
            let _ = upper.work.unlink(&tmp);
            return Err(e);
        }
        up.dir.utimens(c"", &[times.atime(), times.mtime()])?;
        tracing::debug!(?name, "linked up a copied lower hard link");
        up.dir.stat(name)?.ok_or(Errno::EIO)
    }

    /// Points a node at the upper object `new` now at `name` in `dir`.
    fn adopt_upper(
        &self,
        node: &Arc<Node>,
        dir: &CachedDir,
        name: &CStr,
        new: &Stat,
    ) -> Result<()> {
        let metacopy = whiteout::is_metacopy(&dir.dir, name)?;
        let redirect = whiteout::redirect_of(&dir.dir, name)?;
        {
            let mut s = node.state_mut();
            s.upper = true;
            s.metacopy = metacopy;
            if !metacopy {
                s.lowers.clear();
            }
            if let Some(r) = redirect {
                let path = r.strip_prefix(b"/").unwrap_or(&r).to_vec();
                s.lower_path = Some(Arc::new(CString::new(path).map_err(|_| Errno::EINVAL)?));
            }
            s.index_nlink = self.read_index_nlink(&dir.dir, name)?;
        }
        self.nodes.rekey(
            node,
            RealId {
                dev: new.dev(),
                ino: new.ino(),
            },
        );
        Ok(())
    }

    /// The lower link count recorded on an indexed copy (0: not indexed).
    pub(super) fn read_index_nlink(&self, dir: &Dir, name: &CStr) -> Result<u32> {
        Ok(whiteout::first_xattr(dir, name, &whiteout::NLINK_ATTRS)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map_or(0, u32::from_le_bytes))
    }

    /// Completes a metadata-only copy-up: the data goes into the upper file
    /// in place, is synced, and only then is the metacopy mark removed, so a
    /// crash half way leaves a file that still reads from the lower layer.
    fn copy_up_data(&self, node: &Arc<Node>, data: CopyData) -> Result<()> {
        let _serial = node.copy_up_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lower = {
            let st = node.state();
            if !st.metacopy {
                return Ok(());
            }
            st.lowers.first().copied().ok_or(Errno::EIO)?
        };
        let up = self.real_in(node, Loc::Upper)?;
        if data == CopyData::All {
            let low = self.real_in(node, Loc::Lower(lower))?;
            let meta = up.stat()?;
            let from = low.dir.dir.open(low.name(), libc::O_RDONLY)?;
            let to = up.dir.dir.open(up.name(), libc::O_WRONLY)?;
            copy_data(from.as_fd(), to.as_fd(), meta.size())?;
            // Bringing the data up is not a change of the file.
            sys::utimensat_nofollow(to.as_fd(), c"", &[meta.atime(), meta.mtime()])?;
            if self.cfg.fsync {
                sys::fsync(to.as_fd(), false)?;
            }
        }
        for attr in whiteout::METACOPY_ATTRS
            .into_iter()
            .chain(whiteout::REDIRECT_ATTRS)
        {
            match up.dir.dir.remove_xattr(up.name(), attr) {
                Ok(()) | Err(Errno::ENODATA | Errno::ENOTSUP | Errno::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
        let mut s = node.state_mut();
        s.metacopy = false;
        s.lowers.clear();
        s.lower_path = None;
        tracing::debug!(node = node.id, "data copied up");
        Ok(())
    }

    /// Owner, mode, xattrs and times of `src/name` onto `dst/dst_name`, in
    /// the order that keeps each: chown clears setuid bits and file
    /// capabilities, so it goes first.
    pub(super) fn copy_metadata(
        &self,
        src: &Dir,
        name: &CStr,
        st: &Stat,
        dst: &Dir,
        dst_name: &CStr,
        skip_overlay_marks: bool,
    ) -> Result<()> {
        let is_link = st.kind() == Some(Kind::Symlink);
        dst.chown(dst_name, st.uid(), st.gid())?;
        if !is_link {
            dst.chmod(dst_name, st.perm())?;
        }
        copy_xattrs(src, name, dst, dst_name, skip_overlay_marks)?;
        dst.utimens(dst_name, &[st.atime(), st.mtime()])?;
        Ok(())
    }

    /// Records the inode number a copied-up object had, so it keeps it.
    fn write_origin(&self, dir: &Dir, name: &CStr, ino: u64) {
        let ns = self.cfg.xattr_ns;
        if let Err(e) = dir.set_xattr(name, ns.origin(), &ino.to_le_bytes(), 0) {
            // user.* xattrs are refused on symlinks: the object then gets a
            // new inode number at the next mount, nothing worse.
            tracing::debug!(?name, error = %e, "origin xattr not recorded");
        }
    }

    /// Marks an upper directory as holding entries with borrowed inode
    /// numbers (once; the cached directory remembers).
    pub(super) fn mark_impure(&self, dir: &CachedDir) {
        if dir.is_impure() {
            return;
        }
        match dir.dir.set_xattr(c"", self.cfg.xattr_ns.impure(), b"y", 0) {
            Ok(()) => dir.set_impure(),
            Err(e) => tracing::debug!(error = %e, "impure mark not recorded"),
        }
    }

    /// The inode number recorded by [`Self::write_origin`], if any.
    pub(super) fn read_origin(&self, dir: &Dir, name: &CStr) -> Result<Option<u64>> {
        Ok(whiteout::first_xattr(dir, name, &whiteout::ORIGIN_ATTRS)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes))
    }
}

fn rawcstr(bytes: &[u8]) -> Result<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Copies every xattr except the union's own (and, for directories, the
/// opaque mark, which must not travel with a copy-up).
pub(super) fn copy_xattrs(
    src: &Dir,
    name: &CStr,
    dst: &Dir,
    dst_name: &CStr,
    _skip_overlay_marks: bool,
) -> Result<()> {
    let list = match src.list_xattr(name) {
        Ok(l) => l,
        Err(Errno::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for attr in list.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        if whiteout::is_internal_xattr(attr) {
            continue;
        }
        let attr = rawcstr(attr)?;
        let Some(value) = src.get_xattr(name, &attr)? else {
            continue;
        };
        match dst.set_xattr(dst_name, &attr, &value, 0) {
            Ok(()) => {}
            // Not every xattr can be set everywhere (security.* under some
            // LSMs, user.* on special files); overlayfs skips them too.
            Err(Errno::ENOTSUP | Errno::EPERM) if !attr.to_bytes().starts_with(b"system.") => {
                tracing::debug!(?attr, "xattr not copied up");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `len` bytes of file data from `src` to `dst` without pumping them
/// through user space where the kernel can do it: a reflink first, then
/// `copy_file_range` over the data extents only (holes stay holes), then
/// plain reads and writes as a last resort.
pub(super) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<()> {
    if sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let len = len as i64;
    let mut pos: i64 = 0;
    while pos < len {
        let data = match sys::lseek(src, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole is left
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => pos,
            Err(e) => return Err(e),
        };
        let hole = match sys::lseek(src, data, libc::SEEK_HOLE) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        copy_range(src, dst, data, hole - data)?;
        pos = hole;
    }
    sys::ftruncate(dst, len)
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: i64, len: i64) -> Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    let end = start + len;
    while off_in < end {
        let chunk = (end - off_in).min(1 << 30) as usize;
        match sys::copy_file_range(src, &mut off_in, dst, &mut off_out, chunk) {
            Ok(0) => return Ok(()), // source shrank; nothing more to copy
            Ok(_) => {}
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return copy_by_hand(src, dst, off_in, end - off_in);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_by_hand(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: i64, len: i64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, end) = (start, start + len);
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += sys::pwrite(dst, &buf[done..n], off + done as i64)?;
        }
        off += n as i64;
    }
    Ok(())
}

/// Removes a directory tree in `parent` without following symlinks. Used
/// on work-directory leftovers and on upper directories that hold nothing
/// but whiteouts.
pub fn remove_tree(parent: &Dir, name: &CStr) -> Result<()> {
    match parent.unlink(name) {
        Ok(()) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = parent.open_subdir(name)?;
    for e in dir.entries()? {
        if e.dtype == libc::DT_DIR {
            remove_tree(&dir, &e.name)?;
        } else {
            match dir.unlink(&e.name) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => remove_tree(&dir, &e.name)?,
                Err(e) => return Err(e),
            }
        }
    }
    match parent.rmdir(name) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
