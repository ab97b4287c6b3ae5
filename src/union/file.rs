//! Open files and directories, and file I/O.
//!
//! Opening for writing copies a lower file up first; a read-only open uses
//! the file where it lives. A handle opened read-only before another opener
//! copied the file up follows the copy on its next read, so every reader
//! sees the data writers wrote.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};

use nix::errno::Errno;

use super::copyup::CopyData;
use super::create::file_flags;
use super::node::Loc;
use super::{DirEntry, Node, NodeId, Result, Union};
use crate::layer::sys;

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    node: Arc<Node>,
    fd: RwLock<(Arc<OwnedFd>, Loc)>,
    flags: i32,
}

impl OpenFile {
    pub(super) fn new(node: Arc<Node>, fd: OwnedFd, loc: Loc, flags: i32) -> OpenFile {
        OpenFile {
            node,
            fd: RwLock::new((Arc::new(fd), loc)),
            flags,
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The backing fd (the real file in its layer).
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    fn loc(&self) -> Loc {
        self.fd.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Whether the backing fd is the upper layer's copy.
    pub fn in_upper(&self) -> bool {
        self.loc() == Loc::Upper
    }

    pub fn is_writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// Whether the fd still refers to the node's real object (it does not
    /// once a read-only handle's file was copied up by someone else).
    pub fn is_current(&self, node: &Node) -> bool {
        Some(self.loc()) == node.state().data()
    }
}

/// An open directory: its listing is taken at the first read and at every
/// rewind.
#[derive(Debug)]
pub struct OpenDir {
    pub(super) node: Arc<Node>,
    pub(super) entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

impl OpenDir {
    pub(super) fn new(node: Arc<Node>) -> OpenDir {
        OpenDir {
            node,
            entries: Mutex::new(None),
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Union {
    /// OPEN of a regular file.
    pub fn open(&self, id: NodeId, flags: i32) -> Result<OpenFile> {
        let node = self.node(id)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        if wants_write(flags) {
            self.upper()?;
            let data = if flags & libc::O_TRUNC != 0 {
                CopyData::None
            } else {
                CopyData::All
            };
            self.copy_up(&node, data)?;
        }
        let loc = node.state().data().ok_or(Errno::ENOENT)?;
        let real = self.real_in(&node, loc)?;
        let extra = flags & libc::O_TRUNC;
        let fd = real.dir.dir.open(real.name(), file_flags(flags) | extra)?;
        Ok(OpenFile::new(node, fd, loc, flags))
    }

    /// Switches a read-only handle over to where its file's data is now
    /// (the upper copy, once someone copied it up).
    fn refresh(&self, f: &OpenFile) -> Result<Arc<OwnedFd>> {
        if f.is_current(&f.node) {
            return Ok(f.fd());
        }
        let loc = f.node.state().data().ok_or(Errno::ENOENT)?;
        let real = self.real_in(&f.node, loc)?;
        let fd = Arc::new(real.dir.dir.open(real.name(), file_flags(f.flags))?);
        *f.fd.write().unwrap_or_else(|p| p.into_inner()) = (fd.clone(), loc);
        Ok(fd)
    }

    pub fn read(&self, f: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.refresh(f)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(fd.as_fd(), &mut buf[done..], offset as i64 + done as i64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, f: &OpenFile, offset: u64, data: &[u8]) -> Result<usize> {
        if !f.is_writable() {
            return Err(Errno::EBADF);
        }
        let fd = f.fd();
        let mut done = 0;
        while done < data.len() {
            let n = sys::pwrite(fd.as_fd(), &data[done..], offset as i64 + done as i64)?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n;
        }
        Ok(done)
    }

    pub fn fsync(&self, f: &OpenFile, data_only: bool) -> Result<()> {
        if !self.cfg.fsync || !f.is_writable() {
            return Ok(());
        }
        sys::fsync(f.fd().as_fd(), data_only)
    }

    pub fn fallocate(&self, f: &OpenFile, mode: i32, offset: u64, len: u64) -> Result<()> {
        if !f.is_writable() {
            return Err(Errno::EBADF);
        }
        sys::fallocate(f.fd().as_fd(), mode, offset as i64, len as i64)
    }

    /// `lseek` for SEEK_DATA / SEEK_HOLE (the kernel handles the others).
    pub fn lseek(&self, f: &OpenFile, offset: i64, whence: i32) -> Result<i64> {
        let fd = self.refresh(f)?;
        sys::lseek(fd.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        src: &OpenFile,
        src_off: u64,
        dst: &OpenFile,
        dst_off: u64,
        len: u64,
    ) -> Result<usize> {
        if !dst.is_writable() {
            return Err(Errno::EBADF);
        }
        let from = self.refresh(src)?;
        let to = dst.fd();
        let (mut a, mut b) = (src_off as i64, dst_off as i64);
        sys::copy_file_range(
            from.as_fd(),
            &mut a,
            to.as_fd(),
            &mut b,
            len.min(usize::MAX as u64) as usize,
        )
    }

    /// Borrowed fd of an open file, for the adapter's passthrough setup.
    pub fn with_fd<T>(&self, f: &OpenFile, use_fd: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
        let fd = f.fd();
        use_fd(fd.as_fd())
    }
}
