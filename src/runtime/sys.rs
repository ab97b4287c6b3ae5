//! The runtime's raw syscalls, with errors that name what they were for:
//! mounts, paths resolved inside the container's root (never escaping it
//! through a symlink in the image), and small libc wrappers nix lacks.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

pub fn cstr(p: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fs = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid C string or null.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The path through which a mount can target what `fd` names.
pub fn fd_path(fd: &OwnedFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn openat2_in_root(root: RawFd, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(rel)?;
    // SAFETY: zeroed open_how is valid; fields set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid dirfd, C string and open_how.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a fresh fd we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens `rel` for reading, resolved as if `root` were `/`.
pub fn open_in_root(root: &OwnedFd, rel: &Path) -> io::Result<std::fs::File> {
    openat2_in_root(root.as_raw_fd(), rel, libc::O_RDONLY).map(std::fs::File::from)
}

/// An `O_PATH` fd for an existing `rel` inside `root`.
pub fn path_in_root(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    openat2_in_root(root.as_raw_fd(), rel, libc::O_PATH)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// An `O_PATH` fd for `rel` inside `root`, creating it (and missing
/// parents) as `kind` when absent. Symlinks resolve inside the root.
pub fn ensure_in_root(root: &OwnedFd, rel: &Path, kind: Kind) -> io::Result<OwnedFd> {
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut prefix = std::path::PathBuf::from(".");
    let mut cur = openat2_in_root(root.as_raw_fd(), &prefix, libc::O_PATH)?;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        prefix.push(name);
        match openat2_in_root(root.as_raw_fd(), &prefix, libc::O_PATH) {
            Ok(fd) => cur = fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = openat2_in_root(
                    root.as_raw_fd(),
                    prefix.parent().unwrap_or(Path::new(".")),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )?;
                let n = cstr(name)?;
                // SAFETY: valid dirfd and name.
                let r = unsafe {
                    if last && kind == Kind::File {
                        libc::mknodat(parent.as_raw_fd(), n.as_ptr(), libc::S_IFREG | 0o644, 0)
                    } else {
                        libc::mkdirat(parent.as_raw_fd(), n.as_ptr(), 0o755)
                    }
                };
                if r != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
                cur = openat2_in_root(root.as_raw_fd(), &prefix, libc::O_PATH)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Writes all of `buf` to `fd`, ignoring errors (used for reports from a
/// child that is about to exit anyway).
pub fn write_all_raw(fd: RawFd, buf: &[u8]) {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: valid buffer slice.
        let n = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if n <= 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        off += n as usize;
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of
/// /proc/PID/stat): with the pid, it names one process, never a reused pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state come fields 4..; start time is field 22.
    f.nth(22 - 4)?.parse().ok()
}

/// The flags of the mount holding `p` that a user namespace may not
/// clear (nosuid, nodev, noexec and the atime mode), as mount(2) flags: a
/// bind remount (read-only, say) must repeat them or fail with EPERM
/// when the mount came from a more privileged namespace.
pub fn locked_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(p) else { return 0 };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: statvfs succeeded.
    let f = unsafe { st.assume_init() }.f_flag;
    [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f & *st != 0)
    .fold(0, |acc, (_, ms)| acc | ms)
}
