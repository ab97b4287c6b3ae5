//! Thin wrappers over the raw syscalls that layer access needs and that
//! `libc`/`nix` do not wrap the way we want (`openat2`, `fchmodat2`, the
//! `*xattrat` family, `FICLONE`). Every function takes a directory fd and a
//! single name, never a path with a slash, and never follows a symlink in the
//! last component. Nothing here knows about unions.

use std::ffi::CStr;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

pub type SysResult<T> = Result<T, Errno>;

/// Syscall numbers added in Linux 6.13 that `libc` does not name yet. They are
/// the same on every architecture that uses the generic table (x86_64 too).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;
const FICLONE: libc::c_ulong = 0x4004_9409;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// `openat2(2)`. `EAGAIN` (a concurrent rename raced a `RESOLVE_BENEATH`
/// walk) is retried like `EINTR`.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> SysResult<OwnedFd> {
    // `libc::open_how` is non-exhaustive; the kernel's layout is fixed.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve,
    };
    loop {
        // SAFETY: `how` outlives the call; the kernel copies `size_of` bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        match check(ret) {
            Ok(fd) => {
                // SAFETY: the kernel returned a new fd that nobody else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `openat(2)` of one name with `O_NOFOLLOW | O_CLOEXEC` always added.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    retry(|| {
        // SAFETY: plain syscall on a valid fd and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        check(fd as libc::c_long)?;
        // SAFETY: new fd owned by us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// `fstatat(2)` without following a final symlink. `name` may be empty to
/// stat the directory fd itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat64> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::uninit();
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    retry(|| {
        // SAFETY: `st` is a valid out-pointer.
        let ret =
            unsafe { libc::fstatat64(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) };
        check(ret as libc::c_long).map(|_| ())
    })?;
    // SAFETY: fstatat succeeded, so it initialised the buffer.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat64> {
    fstatat(fd, c"")
}

/// `fchmodat2(2)` with `AT_SYMLINK_NOFOLLOW`: chmod never reaches through a
/// symlink planted in a layer.
pub fn fchmodat_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                mode,
                flags,
            )
        };
        check(ret).map(|_| ())
    })
}

pub fn fchownat_nofollow(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) };
        check(ret as libc::c_long).map(|_| ())
    })
}

/// `utimensat(2)` on `name` without following it; an empty `name` sets the
/// times of `dir` itself (a NULL path, which works on any open fd).
pub fn utimensat_nofollow(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
) -> SysResult<()> {
    let (path, flags) = if name.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (name.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    retry(|| {
        // The raw syscall: glibc's wrapper rejects a NULL path.
        // SAFETY: `times` points at two timespecs; a NULL path is allowed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_utimensat,
                dir.as_raw_fd(),
                path,
                times.as_ptr(),
                flags,
            )
        };
        check(ret).map(|_| ())
    })
}

/// `fchown` of an open fd (any kind, `O_PATH` included).
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    fchownat_nofollow(fd, c"", uid, gid)
}

/// `fchmod` of an open fd.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    fchmodat_nofollow(fd, c"", mode)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let ret = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = match check(ret as libc::c_long) {
            Ok(n) => n as usize,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> SysResult<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe {
            libc::renameat2(
                olddir.as_raw_fd(),
                oldname.as_ptr(),
                newdir.as_raw_fd(),
                newname.as_ptr(),
                flags,
            )
        };
        check(ret as libc::c_long).map(|_| ())
    })
}

/// `linkat(2)` without `AT_SYMLINK_FOLLOW`: links the named entry itself.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe {
            libc::linkat(
                olddir.as_raw_fd(),
                oldname.as_ptr(),
                newdir.as_raw_fd(),
                newname.as_ptr(),
                0,
            )
        };
        check(ret as libc::c_long).map(|_| ())
    })
}

/// `getxattrat(2)` on `name` inside `dir` (or on `dir` itself when `name`
/// is empty), never following a final symlink. Returns the value length; a
/// zero-sized `buf` asks for the size only.
pub fn getxattrat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> SysResult<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    retry(|| {
        // SAFETY: `args` describes `buf`, which is valid for its length.
        let ret = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                size_of::<XattrArgs>(),
            )
        };
        check(ret).map(|n| n as usize)
    })
}

pub fn setxattrat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    retry(|| {
        // SAFETY: `args` describes `value`, which is valid for its length.
        let ret = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
                &args as *const XattrArgs,
                size_of::<XattrArgs>(),
            )
        };
        check(ret).map(|_| ())
    })
}

/// Returns the size of the NUL-separated name list; a zero-sized `buf` asks
/// for the size only.
pub fn listxattrat(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf is valid for its length.
        let ret = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        check(ret).map(|n| n as usize)
    })
}

pub fn removexattrat(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
            )
        };
        check(ret).map(|_| ())
    })
}

fn at_flags(name: &CStr) -> libc::c_int {
    if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    }
}

/// Shares all blocks of `src` with `dst` (reflink) where the filesystem can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: FICLONE takes the source fd as its argument.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    check(ret as libc::c_long).map(|_| ())
}

pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: &mut i64,
    dst: BorrowedFd<'_>,
    dst_off: &mut i64,
    len: usize,
) -> SysResult<usize> {
    retry(|| {
        // SAFETY: offsets are valid pointers.
        let ret = unsafe {
            libc::copy_file_range(src.as_raw_fd(), src_off, dst.as_raw_fd(), dst_off, len, 0)
        };
        check(ret as libc::c_long).map(|n| n as usize)
    })
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain syscall.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: i64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf valid for its length.
        let ret =
            unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
        check(ret as libc::c_long).map(|n| n as usize)
    })
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: i64) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf valid for its length.
        let ret = unsafe { libc::pwrite64(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
        check(ret as libc::c_long).map(|n| n as usize)
    })
}

/// Reads directory entries with `getdents64` from the fd's current offset.
/// Returns the number of bytes filled; 0 at the end.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf valid for its length.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        check(ret).map(|n| n as usize)
    })
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe {
            if data_only {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: i64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::ftruncate64(fd.as_raw_fd(), size) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall.
        let ret = unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) };
        check(ret as libc::c_long).map(|_| ())
    })
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs64>::uninit();
    // SAFETY: valid out pointer.
    let ret = unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) };
    check(ret as libc::c_long)?;
    // SAFETY: initialised by a successful call.
    Ok(unsafe { st.assume_init() })
}
