//! Runtime records: `<runtime dir>/containers/<name>/` (the runtime dir is
//! /run/layerfs as root; rootless, `$XDG_RUNTIME_DIR/layerfs`, or
//! `/tmp/layerfs-UID` when that is unset) holds
//!
//! ```text
//! state.json     what `exec`, `kill` and `state` need (see ContainerState)
//! etc/           hosts, hostname, resolv.conf bind-mounted into the container
//! daemon.log     the rootfs mount daemon's log
//! rootfs/ upper/ work/   only for `--lower` containers (their writable layer)
//! ```
//!
//! A record says "running" only while its init process lives: readers
//! check the pid and its start time, so a supervisor killed with SIGKILL
//! leaves a container shown as exited, never as running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, sys, Result, RunError};

pub fn containers_dir() -> PathBuf {
    crate::mount::record::runtime_dir().join("containers")
}

pub fn dir_of(name: &str) -> PathBuf {
    containers_dir().join(name)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub status: Status,
    /// The image, or None for a `--lower` container.
    pub image: Option<String>,
    /// Host pid of the container's init, and its start time (clock ticks).
    pub pid: i32,
    pub pid_start: u64,
    pub supervisor: i32,
    pub rootfs: PathBuf,
    pub cgroup_v2: bool,
    pub cgroups: Vec<PathBuf>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub started: u64,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// Run by an unprivileged user in its own user namespace; the rootfs
    /// was mounted in the supervisor's mount namespace only.
    #[serde(default)]
    pub rootless: bool,
}

impl ContainerState {
    /// Whether its init process is alive now (the same process, not a
    /// reused pid).
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
            && self.pid > 0
            && sys::start_time(self.pid) == Some(self.pid_start)
    }

    /// The status as it is now, whatever the record said.
    pub fn live_status(&self) -> Status {
        match self.status {
            Status::Running if !self.is_running() => Status::Exited,
            Status::Creating if sys::start_time(self.supervisor).is_none() => Status::Exited,
            s => s,
        }
    }

    /// The status as `ps` shows it: `running`, `created` (being set up),
    /// `exited(N)`, or `oom` when the OOM killer ended it.
    pub fn status_text(&self) -> String {
        self.status_text_as(self.live_status())
    }

    /// [`Self::status_text`] for a live status already read, so that a
    /// listing shows one reading of it.
    pub fn status_text_as(&self, live: Status) -> String {
        match (live, self.exit_code) {
            (Status::Running, _) => "running".into(),
            (Status::Creating, _) => "created".into(),
            (Status::Exited, _) if self.oom_killed => "oom".into(),
            (Status::Exited, Some(c)) => format!("exited({c})"),
            // The supervisor died before it could record an exit status.
            (Status::Exited, None) => "exited".into(),
        }
    }

    pub fn save(&self) -> Result<()> {
        let dir = dir_of(&self.name);
        let tmp = dir.join("state.json.tmp");
        let p = dir.join("state.json");
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| RunError::Invalid(format!("state of {}: {e}", self.name)))?;
        std::fs::write(&tmp, body).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io_err(&p, e))
    }
}

pub fn load(name: &str) -> Result<ContainerState> {
    crate::store::check_container_name(name)?;
    let p = dir_of(name).join("state.json");
    let body = std::fs::read(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunError::Invalid(format!("no container {name:?} has been run"))
        } else {
            io_err(&p, e)
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| io_err(&p, e))
}

/// What `ps` shows as container `name`'s STATUS: its runtime record's
/// (see [`ContainerState::status_text`]), or `created` for a container
/// never run.
pub fn status_text(name: &str) -> String {
    load(name)
        .map(|s| s.status_text())
        .unwrap_or_else(|_| "created".into())
}

/// Whether container `name` runs now, by its runtime record; None when it
/// was never run. For listings such as the store's `ps`.
pub fn live_status(name: &str) -> Option<Status> {
    load(name).ok().map(|s| s.live_status())
}

/// Every recorded container, sorted by name.
pub fn list() -> Result<Vec<ContainerState>> {
    let dir = containers_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir, e)),
    };
    let mut out: Vec<ContainerState> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| load(&e.file_name().to_string_lossy()).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes a container's runtime dir (not its store container).
pub fn remove_dir(name: &str) -> Result<()> {
    let d = dir_of(name);
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&d, e)),
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the container's /etc/hosts, /etc/hostname and /etc/resolv.conf
/// into `dir/etc` and returns them with their names.
pub fn write_etc(dir: &Path, hostname: &str) -> Result<Vec<(PathBuf, &'static str)>> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| io_err(&etc, e))?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_else(|_| "nameserver 1.1.1.1\n".to_string());
    let files: [(&'static str, String); 3] = [
        (
            "hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
            ),
        ),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ];
    let mut out = Vec::new();
    for (name, body) in files {
        let p = etc.join(name);
        std::fs::write(&p, body).map_err(|e| io_err(&p, e))?;
        out.push((p, name));
    }
    Ok(out)
}
