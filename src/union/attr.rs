//! Attributes of merged objects: what `stat` reports, and `setattr`.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use super::copyup::CopyData;
use super::node::Loc;
use super::{override_stat, Caller, Node, NodeId, OpenFile, Result, Union};
use crate::layer::{sys, Kind, Stat};

/// Attributes of a merged object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

impl Attr {
    /// Attributes of `st` reported under inode number `ino`.
    pub fn from_stat(st: &Stat, ino: u64) -> Option<Attr> {
        let s = &st.0;
        Some(Attr {
            ino,
            kind: st.kind()?,
            perm: (s.st_mode & 0o7777) as u16,
            nlink: s.st_nlink.min(u64::from(u32::MAX)) as u32,
            uid: s.st_uid,
            gid: s.st_gid,
            rdev: libc::makedev(libc::major(s.st_rdev), libc::minor(s.st_rdev)) as u32,
            size: s.st_size as u64,
            blocks: s.st_blocks as u64,
            blksize: s.st_blksize as u32,
            atime: time(s.st_atime, s.st_atime_nsec),
            mtime: time(s.st_mtime, s.st_mtime_nsec),
            ctime: time(s.st_ctime, s.st_ctime_nsec),
        })
    }
}

/// A time to set: now, or a given instant.
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

impl TimeSpec {
    fn to_timespec(t: Option<TimeSpec>) -> libc::timespec {
        match t {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Some(TimeSpec::Now) => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Some(TimeSpec::At(t)) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => libc::timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: i64::from(d.subsec_nanos()),
                },
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -i64::from(d.subsec_nanos());
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    libc::timespec {
                        tv_sec: sec,
                        tv_nsec: nsec,
                    }
                }
            },
        }
    }
}

/// The changes of one `setattr` request.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

impl Union {
    /// Attributes of a node as `stat` shows them.
    pub(super) fn attr_of(&self, node: &Arc<Node>, st: &Stat) -> Result<Attr> {
        let mut attr = Attr::from_stat(st, node.id).ok_or(Errno::EIO)?;
        if self.cfg.override_stat.is_some() {
            if let Some(o) = self.read_override(node)? {
                attr.uid = o.uid;
                attr.gid = o.gid;
                attr.perm = o.perm as u16;
            }
        }
        attr.uid = self.cfg.uids.shown(attr.uid);
        attr.gid = self.cfg.gids.shown(attr.gid);
        let state = node.state();
        if node.is_dir() {
            // Counting subdirectories across layers is not worth it; 1 is
            // what overlayfs reports for merged directories, and what `find`
            // takes as "unknown".
            let layers = usize::from(state.upper) + state.lowers.len();
            if self.cfg.static_nlink || layers > 1 {
                attr.nlink = 1;
            }
        } else if state.unlinked && !state.upper {
            attr.nlink = 0;
        } else if state.upper && state.index_nlink > 0 {
            // The index holds one link; the lower names not yet linked up
            // count as links.
            attr.nlink = (attr.nlink.saturating_sub(1)).max(state.index_nlink);
        }
        // A metadata-only copy uses the lower file's blocks.
        let data_layer = state
            .lowers
            .first()
            .copied()
            .filter(|_| state.metacopy && !state.unlinked);
        drop(state);
        if let Some(l) = data_layer {
            if let Ok(data) = self.real_in(node, Loc::Lower(l)).and_then(|r| r.stat()) {
                attr.blocks = data.0.st_blocks as u64;
            }
        }
        Ok(attr)
    }

    pub fn getattr(&self, id: NodeId, file: Option<&OpenFile>) -> Result<Attr> {
        let node = self.node(id)?;
        self.getattr_node(&node, file)
    }

    pub(super) fn getattr_node(&self, node: &Arc<Node>, file: Option<&OpenFile>) -> Result<Attr> {
        let st = match file {
            Some(f) if f.is_current(node) => Stat(sys::fstat(f.fd().as_fd())?),
            _ => self.stat_node(node)?,
        };
        self.attr_of(node, &st)
    }

    /// Stat of a node's real object, following it into the orphan fd once
    /// its last name is gone.
    pub(super) fn stat_node(&self, node: &Arc<Node>) -> Result<Stat> {
        let orphan = {
            let st = node.state();
            if st.unlinked {
                st.orphan.clone()
            } else {
                None
            }
        };
        match orphan {
            Some(fd) => Ok(Stat(sys::fstat(fd.as_fd())?)),
            None if node.state().unlinked => Err(Errno::ENOENT),
            None => match self.indexed_stat(node)? {
                Some(st) => Ok(st),
                None => self.real(node)?.stat(),
            },
        }
    }

    /// Attributes of an object that only lower layers hold, from the
    /// stack's merged index (no syscall on the layers).
    fn indexed_stat(&self, node: &Arc<Node>) -> Result<Option<Stat>> {
        let Some(ix) = &self.index else {
            return Ok(None);
        };
        let link = {
            let st = node.state();
            if st.upper || st.lower_path.is_some() {
                return Ok(None);
            }
            match st.link() {
                Some(l) => l.clone(),
                None => return Ok(None),
            }
        };
        let dir = self.index_dir_key(&link.parent)?;
        let merged = ix
            .index
            .lookup(ix.stack, &dir, link.name.to_bytes())
            .map_err(|e| {
                tracing::error!(error = %e, "index lookup failed");
                Errno::EIO
            })?;
        match merged.and_then(|m| Some((*m.layers.first()?, m))) {
            Some((l, m)) => Ok(Some(m.entry.to_stat(self.layer(Loc::Lower(l))?.dev()))),
            None => Ok(None),
        }
    }

    /// `chmod`, `chown`, `truncate` and `utimens`, copying the object up
    /// first when it lives in a lower layer.
    pub fn setattr(
        &self,
        id: NodeId,
        change: &SetAttr,
        file: Option<&OpenFile>,
        _caller: &Caller,
    ) -> Result<Attr> {
        let node = self.node(id)?;
        self.upper()?;
        let truncating_to_zero = change.size == Some(0)
            && change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none();
        self.copy_up(
            &node,
            if truncating_to_zero {
                CopyData::None
            } else if change.size.is_some() {
                CopyData::All
            } else {
                CopyData::Meta
            },
        )?;

        if let Some(size) = change.size {
            if node.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            if node.kind != Kind::File {
                return Err(Errno::EINVAL);
            }
            match file {
                Some(f) if f.is_writable() && f.is_current(&node) => {
                    sys::ftruncate(f.fd().as_fd(), size as i64)?
                }
                _ => {
                    let real = self.real(&node)?;
                    let fd = real.dir.dir.open(real.name(), libc::O_WRONLY)?;
                    sys::ftruncate(fd.as_fd(), size as i64)?;
                }
            }
        }

        let real = self.real(&node)?;
        if change.uid.is_some() || change.gid.is_some() {
            // Ids a client sets are stored through the mapping; one no
            // range covers cannot be stored.
            let uid = match change.uid {
                Some(u) => self.cfg.uids.stored(u).ok_or(Errno::EINVAL)?,
                None => u32::MAX,
            };
            let gid = match change.gid {
                Some(g) => self.cfg.gids.stored(g).ok_or(Errno::EINVAL)?,
                None => u32::MAX,
            };
            if let Some(attr) = self.overridable(&node) {
                let mut o = self.current_override(&real)?;
                if uid != u32::MAX {
                    o.uid = uid;
                }
                if gid != u32::MAX {
                    o.gid = gid;
                }
                override_stat::write(&real.dir.dir, real.name(), attr, &o)?;
            } else {
                real.dir.dir.chown(real.name(), uid, gid)?;
            }
        }
        if let Some(mode) = change.mode {
            if let Some(attr) = self.overridable(&node) {
                let mut o = self.current_override(&real)?;
                o.perm = mode & 0o7777;
                override_stat::write(&real.dir.dir, real.name(), attr, &o)?;
            } else if node.kind != Kind::Symlink {
                real.dir.dir.chmod(real.name(), mode & 0o7777)?;
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = [
                TimeSpec::to_timespec(change.atime),
                TimeSpec::to_timespec(change.mtime),
            ];
            real.dir.dir.utimens(real.name(), &times)?;
        }
        self.attr_of(&node, &real.stat()?)
    }

    /// The override attribute to write for `node`, when owner and mode are
    /// kept in xattrs (not on symlinks, which cannot carry user.* xattrs).
    fn overridable(&self, node: &Node) -> Option<&'static std::ffi::CStr> {
        self.cfg
            .override_stat
            .filter(|_| node.kind != Kind::Symlink)
    }

    /// The override recorded on a real object, or its real owner and mode.
    fn current_override(&self, real: &super::Real) -> Result<override_stat::Override> {
        if let Some(o) = override_stat::read(&real.dir.dir, real.name())? {
            return Ok(o);
        }
        let st = real.stat()?;
        Ok(override_stat::Override {
            uid: st.uid(),
            gid: st.gid(),
            perm: st.perm(),
        })
    }

    /// The override recorded on a node's real object.
    fn read_override(&self, node: &Arc<Node>) -> Result<Option<override_stat::Override>> {
        if node.kind == Kind::Symlink {
            return Ok(None);
        }
        match self.real(node) {
            Ok(real) => override_stat::read(&real.dir.dir, real.name()),
            Err(_) => Ok(None),
        }
    }

    /// `access(2)`: the POSIX permission check on merged attributes, plus
    /// EROFS for writes to a read-only union.
    pub fn access(&self, id: NodeId, mask: i32, caller: &Caller) -> Result<()> {
        let node = self.node(id)?;
        let attr = self.getattr_node(&node, None)?;
        if mask & libc::W_OK != 0 && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK || caller.uid == 0 {
            // root may read and write anything; execute needs one x bit.
            if mask & libc::X_OK != 0 && attr.kind != Kind::Dir && attr.perm & 0o111 == 0 {
                return Err(Errno::EACCES);
            }
            return Ok(());
        }
        let perm = u32::from(attr.perm);
        let bits = if caller.uid == attr.uid {
            (perm >> 6) & 7
        } else if caller.gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if (mask as u32) & !bits & 7 != 0 {
            return Err(Errno::EACCES);
        }
        Ok(())
    }
}
