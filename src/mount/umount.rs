//! Unmounting. `umount` waits until the daemon has exited (found through
//! its [`MountRecord`]), so the upper and work directories are quiet and
//! unlocked when the command returns.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::record::MountRecord;
use super::MountError;

/// Makes `p` absolute without resolving its last component (which may be a
/// dead FUSE mount that cannot be stat'ed).
fn absolute(p: &Path) -> Result<PathBuf, MountError> {
    let abs = std::path::absolute(p).map_err(|e| MountError::path("mountpoint", p, e))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| MountError::path("mountpoint", p, e))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// Unmounts a layerfs mount and waits for its daemon to exit. `lazy`
/// detaches even while files are open.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<(), MountError> {
    let mp = absolute(mountpoint)?;
    let pid = MountRecord::daemon_pid(&mp);
    let c = CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| MountError::path("mountpoint", mountpoint, "contains a NUL byte"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        let e = Errno::last();
        return Err(match e {
            Errno::EINVAL => MountError::path("mountpoint", mountpoint, "is not a mount point"),
            Errno::EBUSY => MountError::path(
                "mountpoint",
                mountpoint,
                "is busy (files are open or something is mounted below it); use --lazy to detach anyway",
            ),
            Errno::EPERM => return fusermount_u(&mp, lazy),
            e => MountError::path("mountpoint", mountpoint, e),
        });
    }
    if let Some(pid) = pid {
        if !wait_exit(pid, Duration::from_secs(10)) {
            return Err(MountError::Mount(format!(
                "{} is unmounted here, but its daemon (pid {pid}) is still serving it: \
                 another mount namespace still holds the mount",
                mp.display()
            )));
        }
    }
    Ok(())
}

/// Unprivileged unmount through the setuid helper.
fn fusermount_u(mp: &Path, lazy: bool) -> Result<(), MountError> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mp)
        .output()
        .map_err(|e| MountError::Mount(format!("fusermount3: {e}")))?;
    if !out.status.success() {
        return Err(MountError::Mount(format!(
            "fusermount3 -u {}: {}",
            mp.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Waits for `pid` to exit; false if it still runs after `limit`.
fn wait_exit(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while is_running(pid) {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Alive and not a zombie (an exited daemon waits for its reaper, which
/// may be slow in a container; it holds nothing any more).
fn is_running(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
