//! Creating entries: files, directories, symlinks, special files and hard
//! links.
//!
//! A new entry always goes to the upper layer. Where the name was deleted
//! before (a whiteout sits in the upper directory), the entry is prepared in
//! the work directory and swapped in, so the whiteout is replaced
//! atomically; a directory created there is opaque, so the deleted lower
//! directory does not show through it.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use smallvec::SmallVec;

use super::copyup::{remove_tree, CopyData};
use super::dircache::CachedDir;
use super::node::Loc;
use super::resolve::{check_name, Found};
use super::{idmap, override_stat, Attr, Caller, Node, NodeId, OpenFile, Result, Union};
use crate::layer::whiteout;
use crate::layer::{sys, Dir, Kind, Stat};

/// What to create.
pub(super) enum NewEntry<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Symlink { target: &'a CStr },
    Special { mode: u32, rdev: u64 },
    Link { dir: &'a Dir, name: &'a CStr },
}

impl NewEntry<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, NewEntry::Dir { .. })
    }
}

/// What is at a name in the upper directory before we create there.
struct Slot {
    /// A char-device whiteout occupies the name.
    whiteout_dev: bool,
    /// A `.wh.<name>` file marks the name deleted.
    whiteout_file: bool,
}

impl Union {
    /// Mode bits for a new entry: the umask applies unless the parent has a
    /// default ACL, which the filesystem then applies instead.
    fn effective_mode(&self, parent: &Dir, mode: u32, umask: u32) -> Result<u32> {
        if self.cfg.acl {
            match parent.get_xattr(c"", c"system.posix_acl_default") {
                Ok(Some(_)) => return Ok(mode & 0o7777),
                Ok(None) | Err(Errno::ENOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(mode & 0o7777 & !umask)
    }

    /// What occupies `name` in the upper directory: nothing, or a
    /// whiteout; a real entry, or a visible lower one, is EEXIST.
    fn slot(&self, parent: &Arc<Node>, up: &CachedDir, name: &CStr) -> Result<Slot> {
        let whiteout_dev = match up.dir.stat(name)? {
            Some(st) if whiteout::is_whiteout_dev(&st) => true,
            Some(_) => return Err(Errno::EEXIST),
            None => false,
        };
        let whiteout_file = up.has_wh_file(name)?;
        // Under a whiteout nothing below shows; otherwise a lower layer may
        // still hold the name.
        if !whiteout_dev && !whiteout_file && self.lower_has(parent, name)? {
            return Err(Errno::EEXIST);
        }
        Ok(Slot {
            whiteout_dev,
            whiteout_file,
        })
    }

    /// Creates `name` in the upper directory of `parent` and returns its
    /// node (with a kernel reference), attributes, and for a regular file
    /// the open fd. `perm` is re-applied after the chown that gives the
    /// entry to the caller, which clears setuid/setgid bits.
    fn place_new(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        caller: &Caller,
        entry: NewEntry<'_>,
        perm: Option<u32>,
    ) -> Result<(Arc<Node>, Attr, Option<OwnedFd>)> {
        check_name(name)?;
        if whiteout::is_whiteout_name(name.to_bytes()) {
            // The name space of whiteouts is not the client's to use.
            return Err(Errno::EINVAL);
        }
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let upper = self.upper()?;
        self.copy_up(parent, CopyData::All)?;
        let up = self.dir(parent, Loc::Upper)?;
        let slot = self.slot(parent, &up, name)?;
        let pst = up.dir.stat_self()?;
        // The caller's ids as the layers store them (unmapped ids land on
        // the overflow id, as in a user namespace).
        let uid = self
            .cfg
            .uids
            .stored(caller.uid)
            .unwrap_or(idmap::OVERFLOW_ID);
        let gid = if pst.mode() & libc::S_ISGID != 0 {
            pst.gid()
        } else {
            self.cfg
                .gids
                .stored(caller.gid)
                .unwrap_or(idmap::OVERFLOW_ID)
        };
        let is_dir = entry.is_dir();
        let restore_perm = perm.filter(|p| p & (libc::S_ISUID | libc::S_ISGID) != 0);

        // Build the entry where it will be visible only when complete.
        let (at, at_name) = if slot.whiteout_dev {
            (&upper.work, upper.tmp_name())
        } else {
            (&up.dir, name.to_owned())
        };
        // A hard link shares its inode, owner included; anything else new
        // belongs to the caller.
        let owned = !matches!(entry, NewEntry::Link { .. });
        // With xattr_permissions, owner and mode go into the override
        // xattr (symlinks cannot carry one and keep the daemon's owner).
        let override_perm = match &entry {
            NewEntry::File { mode, .. }
            | NewEntry::Dir { mode }
            | NewEntry::Special { mode, .. } => self
                .cfg
                .override_stat
                .map(|a| (a, perm.unwrap_or(*mode) & 0o7777)),
            NewEntry::Symlink { .. } | NewEntry::Link { .. } => None,
        };
        let fd = self.make_entry(at, &at_name, entry)?;
        let finish = || -> Result<()> {
            if let Some((attr, perm)) = override_perm {
                let o = override_stat::Override { uid, gid, perm };
                override_stat::write(at, &at_name, attr, &o)?;
            }
            match (&fd, owned) {
                _ if override_perm.is_some() => {}
                (Some(fd), _) => {
                    sys::fchown(fd.as_fd(), uid, gid)?;
                    if let Some(p) = restore_perm {
                        sys::fchmod(fd.as_fd(), p & 0o7777)?;
                    }
                }
                (None, true) => {
                    at.chown(&at_name, uid, gid)?;
                    if let Some(p) = restore_perm {
                        at.chmod(&at_name, p & 0o7777)?;
                    }
                }
                (None, false) => {}
            }
            // Over a deleted name, a new directory must hide what was
            // there; with redirects the kernel also makes every directory
            // created in a merged one opaque, so a later move cannot merge
            // it with a lower directory.
            let merged_parent = self.cfg.redirect_dir && !parent.state().lowers.is_empty();
            if is_dir && (slot.whiteout_dev || slot.whiteout_file || merged_parent) {
                whiteout::set_opaque(at, &at_name, self.cfg.xattr_ns)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = if is_dir {
                remove_tree(at, &at_name)
            } else {
                at.unlink(&at_name)
            };
            return Err(e);
        }

        if slot.whiteout_dev {
            if is_dir {
                // rename() cannot put a directory over a char device:
                // exchange the two, then drop the whiteout.
                at.rename(&at_name, &up.dir, name, libc::RENAME_EXCHANGE)?;
                at.unlink(&at_name)?;
            } else {
                at.rename(&at_name, &up.dir, name, 0)?;
            }
        }
        if slot.whiteout_file {
            match up.dir.unlink(&whiteout::whiteout_name(name)) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            self.dirs.remove(parent.id, Loc::Upper);
        }

        // The new entry is upper-only: nothing below it shows through
        // (either nothing is there, or a whiteout or the opaque mark hides
        // it), so it resolves to itself.
        let st = match &fd {
            Some(fd) => Stat(sys::fstat(fd.as_fd())?),
            None => up.dir.stat(name)?.ok_or(Errno::ENOENT)?,
        };
        let found = Found {
            kind: st.kind().ok_or(Errno::EIO)?,
            upper: Some(st),
            lowers: SmallVec::new(),
            metacopy: false,
            redirect: None,
            lower_xattr_free: false,
        };
        let node = self.node_for(parent, name, &found)?;
        match self.attr_of(&node, &st) {
            Ok(attr) => Ok((node, attr, fd)),
            Err(e) => {
                self.forget(node.id, 1);
                Err(e)
            }
        }
    }

    fn make_entry(&self, at: &Dir, name: &CStr, entry: NewEntry<'_>) -> Result<Option<OwnedFd>> {
        Ok(match entry {
            NewEntry::File { mode, flags } => {
                let fd = at.create(name, file_flags(flags), mode)?;
                Some(fd)
            }
            NewEntry::Dir { mode } => {
                at.mkdir(name, mode)?;
                None
            }
            NewEntry::Symlink { target } => {
                at.symlink(name, target)?;
                None
            }
            NewEntry::Special { mode, rdev } => {
                at.mknod(name, mode, rdev)?;
                None
            }
            NewEntry::Link { dir, name: src } => {
                dir.link(src, at, name)?;
                None
            }
        })
    }

    pub fn mkdir(
        &self,
        parent: NodeId,
        name: &CStr,
        mode: u32,
        umask: u32,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr)> {
        let parent = self.node(parent)?;
        let mode = self.prepare_mode(&parent, mode, umask)?;
        let (node, attr, _) =
            self.place_new(&parent, name, caller, NewEntry::Dir { mode }, None)?;
        Ok((node, attr))
    }

    pub fn mknod(
        &self,
        parent: NodeId,
        name: &CStr,
        mode: u32,
        umask: u32,
        rdev: u64,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr)> {
        let parent = self.node(parent)?;
        let kind = Kind::from_mode(mode).ok_or(Errno::EINVAL)?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        if kind == Kind::CharDev && rdev == 0 {
            // That is a whiteout; clients may not make one (overlayfs: EPERM).
            return Err(Errno::EPERM);
        }
        let perm = self.prepare_mode(&parent, mode, umask)?;
        let full = (mode & libc::S_IFMT) | perm;
        let entry = if kind == Kind::File {
            NewEntry::File {
                mode: perm,
                flags: libc::O_WRONLY,
            }
        } else {
            NewEntry::Special { mode: full, rdev }
        };
        let (node, attr, _) = self.place_new(&parent, name, caller, entry, Some(perm))?;
        Ok((node, attr))
    }

    pub fn symlink(
        &self,
        parent: NodeId,
        name: &CStr,
        target: &CStr,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr)> {
        let parent = self.node(parent)?;
        let (node, attr, _) =
            self.place_new(&parent, name, caller, NewEntry::Symlink { target }, None)?;
        Ok((node, attr))
    }

    /// CREATE: a new regular file, opened.
    pub fn create(
        &self,
        parent: NodeId,
        name: &CStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr, OpenFile)> {
        let parent = self.node(parent)?;
        let perm = self.prepare_mode(&parent, mode, umask)?;
        let (node, attr, fd) = self.place_new(
            &parent,
            name,
            caller,
            NewEntry::File { mode: perm, flags },
            Some(perm),
        )?;
        let fd = fd.ok_or(Errno::EIO)?;
        let file = OpenFile::new(node.clone(), fd, Loc::Upper, flags);
        Ok((node, attr, file))
    }

    /// LINK: a new name for an existing non-directory. A lower file is
    /// copied up first; the new name is a hard link to the upper copy.
    pub fn link(
        &self,
        id: NodeId,
        newparent: NodeId,
        newname: &CStr,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr)> {
        let node = self.node(id)?;
        let newparent = self.node(newparent)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        self.upper()?;
        self.copy_up(&node, self.data_for_move(&node))?;
        self.redirect_file(&node)?;
        let (src_dir, src_name) = self.parent_dir(&node, Loc::Upper)?;
        // The new name carries an inode number from elsewhere (and maybe a
        // metadata-only copy): its directory must say so before it exists.
        self.copy_up(&newparent, CopyData::All)?;
        let to = self.dir(&newparent, Loc::Upper)?;
        self.mark_impure(&to);
        let (linked, attr, _) = self.place_new(
            &newparent,
            newname,
            caller,
            NewEntry::Link {
                dir: &src_dir.dir,
                name: &src_name,
            },
            None,
        )?;
        Ok((linked, attr))
    }

    /// The permission bits a new entry is created with.
    fn prepare_mode(&self, parent: &Arc<Node>, mode: u32, umask: u32) -> Result<u32> {
        self.upper()?;
        self.copy_up(parent, CopyData::All)?;
        let up = self.dir(parent, Loc::Upper)?;
        self.effective_mode(&up.dir, mode, umask)
    }
}

/// Flags for the backing fd of a file opened through the union: always
/// read-write when writing (the kernel may read back through a write-only
/// handle to fill its page cache) and never append (the kernel passes the
/// offset itself).
pub(super) fn file_flags(flags: i32) -> i32 {
    let acc = flags & libc::O_ACCMODE;
    let keep = flags & (libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
    let acc = if acc == libc::O_RDONLY {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    acc | keep
}
