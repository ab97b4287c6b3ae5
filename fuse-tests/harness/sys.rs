//! Thin wrappers over the syscalls the tests make, each returning the errno
//! as an `io::Error`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::cpath;

fn ok(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ok_n(r: i64) -> io::Result<i64> {
    if r >= 0 {
        Ok(r)
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    // SAFETY: valid C strings.
    ok(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(from).as_ptr(),
            libc::AT_FDCWD,
            cpath(to).as_ptr(),
            flags,
        )
    })
}

pub fn mknod(p: &Path, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid C string.
    ok(unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) })
}

/// `utimensat` without following symlinks; a time is (sec, nsec), nsec may
/// be `UTIME_NOW` or `UTIME_OMIT`.
pub fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: valid C string and array.
    ok(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn truncate(p: &Path, len: i64) -> io::Result<()> {
    // SAFETY: valid C string.
    ok(unsafe { libc::truncate(cpath(p).as_ptr(), len) })
}

pub fn access(p: &Path, mode: i32) -> io::Result<()> {
    // SAFETY: valid C string.
    ok(unsafe { libc::access(cpath(p).as_ptr(), mode) })
}

pub fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: valid fd.
    ok(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

pub fn lseek(f: &File, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid fd.
    ok_n(unsafe { libc::lseek(f.as_raw_fd(), off, whence) })
}

pub fn copy_file_range(
    src: &File,
    off_in: i64,
    dst: &File,
    off_out: i64,
    len: usize,
) -> io::Result<usize> {
    let (mut a, mut b) = (off_in, off_out);
    // SAFETY: valid fds and offset pointers.
    let n =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, len, 0) };
    ok_n(n as i64).map(|n| n as usize)
}

pub fn fsync(f: &File) -> io::Result<()> {
    // SAFETY: valid fd.
    ok(unsafe { libc::fsync(f.as_raw_fd()) })
}

pub fn statvfs(p: &Path) -> libc::statvfs {
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: valid C string and out pointer.
    let r = unsafe { libc::statvfs(cpath(p).as_ptr(), s.as_mut_ptr()) };
    assert_eq!(r, 0, "statvfs {p:?}: {}", io::Error::last_os_error());
    // SAFETY: statvfs succeeded.
    unsafe { s.assume_init() }
}

/// One entry as `readdir(3)` returns it, with the `telldir` position taken
/// just before it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEnt {
    pub name: String,
    pub ino: u64,
    pub pos: libc::c_long,
}

/// A directory stream (`opendir(3)`), closed on drop.
pub struct DirStream(*mut libc::DIR);

impl DirStream {
    pub fn open(p: &Path) -> DirStream {
        // SAFETY: valid C string.
        let d = unsafe { libc::opendir(cpath(p).as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir {p:?}: {}",
            io::Error::last_os_error()
        );
        DirStream(d)
    }

    /// The next entry, `.` and `..` included.
    pub fn next(&mut self) -> Option<DirEnt> {
        // SAFETY: valid stream.
        let pos = unsafe { libc::telldir(self.0) };
        // SAFETY: valid stream; the entry is copied out before the next call.
        let e = unsafe { libc::readdir64(self.0) };
        if e.is_null() {
            return None;
        }
        // SAFETY: readdir returned a valid entry.
        let (name, ino) = unsafe {
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            (name, (*e).d_ino)
        };
        Some(DirEnt { name, ino, pos })
    }

    /// Every remaining entry except `.` and `..`.
    pub fn rest(&mut self) -> Vec<DirEnt> {
        std::iter::from_fn(|| self.next())
            .filter(|e| e.name != "." && e.name != "..")
            .collect()
    }

    pub fn seek(&mut self, pos: libc::c_long) {
        // SAFETY: valid stream.
        unsafe { libc::seekdir(self.0, pos) }
    }

    pub fn rewind(&mut self) {
        // SAFETY: valid stream.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: valid stream, closed once.
        unsafe { libc::closedir(self.0) };
    }
}
