//! Runtime records of live mounts.
//!
//! A live daemon keeps a small file (its pid and mountpoint) in the runtime
//! directory, so other commands can find it: `umount` to wait for it to
//! exit, `status` to ask it (SIGUSR1) to write its status next to it.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where daemons (and the runtime) leave their records: /run/layerfs for
/// host root; otherwise `$XDG_RUNTIME_DIR/layerfs`, or `/tmp/layerfs-UID`
/// named after the caller's host uid (also from inside the rootless
/// runtime's user namespace, where we are uid 0).
pub fn runtime_dir() -> PathBuf {
    if crate::userns::privileged() {
        return PathBuf::from("/run/layerfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("layerfs"),
        None => PathBuf::from(format!("/tmp/layerfs-{}", crate::userns::host_euid())),
    }
}

pub fn record_path(mountpoint: &Path) -> PathBuf {
    // FNV-1a of the path: short, stable, no escaping needed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mountpoint.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    runtime_dir().join("mounts").join(format!("{h:016x}"))
}

/// The record of a live mount; removed when dropped.
#[derive(Debug)]
pub struct MountRecord {
    path: PathBuf,
}

impl MountRecord {
    pub fn create(mountpoint: &Path) -> Option<MountRecord> {
        let path = record_path(mountpoint);
        let dir = path.parent()?;
        // Explicit modes: the daemon runs with umask 0, and a record
        // others could write would point `umount` (and the runtime's
        // cleanup) at a process of their choosing.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .ok()?;
        let body = format!("{}\n{}\n", std::process::id(), mountpoint.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&path)
            .ok()?;
        std::io::Write::write_all(&mut f, body.as_bytes()).ok()?;
        Some(MountRecord { path })
    }

    /// Pid of the daemon serving `mountpoint`, if it left a record.
    pub fn daemon_pid(mountpoint: &Path) -> Option<i32> {
        let body = std::fs::read_to_string(record_path(mountpoint)).ok()?;
        let mut lines = body.lines();
        let pid = lines.next()?.parse().ok()?;
        (lines.next()? == mountpoint.to_string_lossy()).then_some(pid)
    }
}

impl Drop for MountRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a daemon writes its status when asked.
pub fn status_path(mountpoint: &Path) -> PathBuf {
    record_path(mountpoint).with_extension("status")
}
