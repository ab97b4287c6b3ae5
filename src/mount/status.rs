//! The daemon's status: what it serves, how, and what it holds. Written on
//! request (SIGUSR1) next to the mount's runtime record; read by
//! `unionctl status`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::record::{status_path, MountRecord};
use super::MountError;
use crate::union::Union;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub lower_layers: usize,
    pub upper: Option<PathBuf>,
    pub read_only: bool,
    pub threads: usize,
    pub xattr_namespace: String,
    /// File data goes straight from the kernel to the layer files.
    pub passthrough: bool,
    /// Lower lookups, listings and attributes come from the metadata index.
    pub indexed: bool,
    /// Nodes the kernel currently holds references to.
    pub nodes: usize,
    /// Layer directories held open for lookups.
    pub cached_dirs: usize,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// What the daemon knows about itself, to answer status requests.
pub struct StatusSource {
    pub union: Arc<Union>,
    pub template: Status,
    /// Set once the kernel agreed to passthrough.
    pub passthrough: Arc<AtomicBool>,
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

impl StatusSource {
    pub fn snapshot(&self) -> Status {
        Status {
            nodes: self.union.node_count(),
            cached_dirs: self.union.cached_dirs(),
            passthrough: self.passthrough.load(Ordering::Relaxed),
            rss_kib: proc_status_kib("VmRSS:"),
            peak_rss_kib: proc_status_kib("VmHWM:"),
            ..self.template.clone()
        }
    }

    /// Writes the status atomically (temp file, rename).
    pub fn write(&self) {
        let path = status_path(&self.template.mountpoint);
        let tmp = path.with_extension("status.tmp");
        let body = serde_json::to_vec_pretty(&self.snapshot()).unwrap_or_default();
        if std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::warn!(path = %path.display(), "cannot write status");
        }
    }
}

/// Asks the daemon serving `mountpoint` for its status.
pub fn query_status(mountpoint: &Path) -> Result<Status, MountError> {
    let mp = mountpoint
        .canonicalize()
        .map_err(|e| MountError::path("mountpoint", mountpoint, e))?;
    let pid = MountRecord::daemon_pid(&mp)
        .ok_or_else(|| MountError::path("mountpoint", mountpoint, "no layerfs daemon serves it"))?;
    let path = status_path(&mp);
    let _ = std::fs::remove_file(&path);
    kill(Pid::from_raw(pid), Signal::SIGUSR1)
        .map_err(|e| MountError::Mount(format!("cannot signal daemon {pid}: {e}")))?;
    let start = Instant::now();
    loop {
        if let Ok(body) = std::fs::read(&path) {
            return serde_json::from_slice(&body)
                .map_err(|e| MountError::Mount(format!("daemon status unreadable: {e}")));
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(MountError::Mount(format!("daemon {pid} did not answer")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
