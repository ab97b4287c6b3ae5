//! `Dir`: an open directory inside a layer, and the only way the rest of
//! layerfs touches names in it. Every operation names one entry of this
//! directory (never a path), so a symlink planted in a layer can redirect
//! nothing: final components are never followed and there are no others.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use super::sys::{self, SysResult};
use super::Stat;

/// An open directory fd (`O_RDONLY | O_DIRECTORY`).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// One raw `getdents64` record.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: CString,
    pub ino: u64,
    pub dtype: u8,
}

impl Dir {
    pub fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn try_clone(&self) -> SysResult<Dir> {
        self.fd
            .try_clone()
            .map(Dir::from_fd)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// Stat of the directory itself.
    pub fn stat_self(&self) -> SysResult<Stat> {
        sys::fstat(self.fd()).map(Stat)
    }

    /// Stat of an entry; `None` if it does not exist.
    pub fn stat(&self, name: &CStr) -> SysResult<Option<Stat>> {
        match sys::fstatat(self.fd(), name) {
            Ok(st) => Ok(Some(Stat(st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stat of `name/child` where `name` is known to be a directory of this
    /// layer. Used only for marker files (`.wh..wh..opq`).
    pub fn stat_child_of(&self, name: &CStr, child: &CStr) -> SysResult<Option<Stat>> {
        let mut path = name.to_bytes().to_vec();
        path.push(b'/');
        path.extend_from_slice(child.to_bytes());
        let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
        match sys::fstatat(self.fd(), &path) {
            Ok(st) => Ok(Some(Stat(st))),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a non-directory entry. `O_NOFOLLOW` is always added.
    pub fn open(&self, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
        sys::openat(self.fd(), name, flags, 0)
    }

    /// Creates and opens a new regular file (`O_CREAT | O_EXCL`).
    pub fn create(&self, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
        sys::openat(self.fd(), name, flags | libc::O_CREAT | libc::O_EXCL, mode)
    }

    pub fn open_subdir(&self, name: &CStr) -> SysResult<Dir> {
        sys::openat(self.fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map(Dir::from_fd)
    }

    /// An `O_PATH` handle on an entry of any type, for the `*at(fd, "")`
    /// calls that must not follow it.
    pub fn open_path(&self, name: &CStr) -> SysResult<OwnedFd> {
        sys::openat(self.fd(), name, libc::O_PATH, 0)
    }

    pub fn mkdir(&self, name: &CStr, mode: u32) -> SysResult<()> {
        sys::mkdirat(self.fd(), name, mode)
    }

    pub fn mknod(&self, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
        sys::mknodat(self.fd(), name, mode, rdev)
    }

    pub fn symlink(&self, name: &CStr, target: &CStr) -> SysResult<()> {
        sys::symlinkat(target, self.fd(), name)
    }

    pub fn readlink(&self, name: &CStr) -> SysResult<Vec<u8>> {
        sys::readlinkat(self.fd(), name)
    }

    pub fn unlink(&self, name: &CStr) -> SysResult<()> {
        sys::unlinkat(self.fd(), name, false)
    }

    pub fn rmdir(&self, name: &CStr) -> SysResult<()> {
        sys::unlinkat(self.fd(), name, true)
    }

    pub fn rename(&self, name: &CStr, to: &Dir, newname: &CStr, flags: u32) -> SysResult<()> {
        sys::renameat2(self.fd(), name, to.fd(), newname, flags)
    }

    pub fn link(&self, name: &CStr, to: &Dir, newname: &CStr) -> SysResult<()> {
        sys::linkat(self.fd(), name, to.fd(), newname)
    }

    pub fn chmod(&self, name: &CStr, mode: u32) -> SysResult<()> {
        sys::fchmodat_nofollow(self.fd(), name, mode)
    }

    pub fn chown(&self, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
        sys::fchownat_nofollow(self.fd(), name, uid, gid)
    }

    pub fn utimens(&self, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
        sys::utimensat_nofollow(self.fd(), name, times)
    }

    /// The value of an xattr of `name` (empty `name`: of this directory), or
    /// `None` when it is not set.
    pub fn get_xattr(&self, name: &CStr, attr: &CStr) -> SysResult<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 256];
        loop {
            match sys::getxattrat(self.fd(), name, attr, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::ENODATA) => return Ok(None),
                Err(Errno::ERANGE) => {
                    let need = sys::getxattrat(self.fd(), name, attr, &mut [])?;
                    buf.resize(need.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Size-or-copy form used by the `getxattr` request: `size == 0` asks for
    /// the length only.
    pub fn get_xattr_into(&self, name: &CStr, attr: &CStr, buf: &mut [u8]) -> SysResult<usize> {
        sys::getxattrat(self.fd(), name, attr, buf)
    }

    /// Whether an entry has any extended attribute (false where the
    /// filesystem has none at all).
    pub fn has_xattrs(&self, name: &CStr) -> SysResult<bool> {
        match sys::listxattrat(self.fd(), name, &mut []) {
            Ok(n) => Ok(n > 0),
            Err(Errno::ENOTSUP) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn list_xattr(&self, name: &CStr) -> SysResult<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        loop {
            match sys::listxattrat(self.fd(), name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::ERANGE) => {
                    let need = sys::listxattrat(self.fd(), name, &mut [])?;
                    buf.resize(need.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn set_xattr(&self, name: &CStr, attr: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
        sys::setxattrat(self.fd(), name, attr, value, flags)
    }

    pub fn remove_xattr(&self, name: &CStr, attr: &CStr) -> SysResult<()> {
        sys::removexattrat(self.fd(), name, attr)
    }

    /// Every entry of the directory except `.` and `..`, in on-disk order.
    pub fn entries(&self) -> SysResult<Vec<RawEntry>> {
        // A fresh open file description, so concurrent readers never share
        // (and race on) one directory offset.
        let fd = sys::openat(self.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = sys::getdents64(fd.as_fd(), &mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            parse_dirents(&buf[..n], &mut out);
        }
    }
}

/// Decodes `struct linux_dirent64` records.
fn parse_dirents(buf: &[u8], out: &mut Vec<RawEntry>) {
    let mut off = 0;
    while off + 19 <= buf.len() {
        let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
        if reclen == 0 || off + reclen > buf.len() {
            return;
        }
        let dtype = buf[off + 18];
        let name_bytes = &buf[off + 19..off + reclen];
        let len = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = &name_bytes[..len];
        if name != b"." && name != b".." {
            if let Ok(name) = CString::new(name) {
                out.push(RawEntry { name, ino, dtype });
            }
        }
        off += reclen;
    }
}

/// Turns a path given on a command line into the `CString` the syscalls want.
pub fn cpath(path: &std::path::Path) -> SysResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}
