//! What `run` is asked to do, and the parsers for its value syntaxes
//! (sizes, CPU counts, volumes, users, signals). The CLI calls these, so a
//! bad value is refused before anything is created.

use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::{Result, RunError};

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RootfsSource {
    /// A store image; the container's writable layer lives in the store.
    Image(String),
    /// Plain lower directories, top first; the upper layer lives in the
    /// runtime state dir.
    Lowers(Vec<PathBuf>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new network namespace with only `lo`.
    None,
    /// The host's network namespace.
    Host,
}

/// Resource limits; `None` leaves the controller unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU time per period, in microseconds, with the period.
    pub cpu_quota_us: Option<(u64, u64)>,
    pub pids: Option<u64>,
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// `--user`: a name or number, with an optional group.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub user: String,
    pub group: Option<String>,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub rootfs: RootfsSource,
    pub remove: bool,
    pub hostname: Option<String>,
    pub limits: Limits,
    /// `K=V` (or `K`, taken from our environment), applied over the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<User>,
    pub network: NetworkMode,
    pub volumes: Vec<Volume>,
    /// The command; empty means the image's Entrypoint/Cmd.
    pub command: Vec<String>,
    /// Where the mount daemon logs.
    pub daemon_log: Option<PathBuf>,
}

/// `256M`, `1g`, `1048576`, `512k`, `1.5G` (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        RunError::Invalid(format!(
            "memory size {s:?}: give bytes or a number with k, m or g (e.g. 256M)"
        ))
    };
    let t = s.trim();
    let t = t
        .strip_suffix('b')
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad());
    }
    let bytes = v * mult as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    let bytes = bytes as u64;
    // Below this the kernel cannot even start the init process.
    if bytes < 4 << 20 {
        return Err(RunError::Invalid(format!(
            "memory limit {s:?} is below the 4M minimum"
        )));
    }
    Ok(bytes)
}

/// `0.5`, `2`: CPUs' worth of time, as a CFS quota per 100 ms period.
pub fn parse_cpus(s: &str) -> Result<(u64, u64)> {
    const PERIOD: u64 = 100_000;
    let v: f64 = s.trim().parse().map_err(|_| {
        RunError::Invalid(format!("--cpus {s:?}: give a number of CPUs (e.g. 0.5)"))
    })?;
    if !v.is_finite() || !(0.01..=4096.0).contains(&v) {
        return Err(RunError::Invalid(format!(
            "--cpus {s:?}: must be between 0.01 and 4096"
        )));
    }
    Ok(((v * PERIOD as f64).round() as u64, PERIOD))
}

pub fn parse_pids(s: &str) -> Result<u64> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(RunError::Invalid(format!(
            "--pids {s:?}: give a positive number of processes"
        ))),
    }
}

/// `SRC:DST[:ro|rw]`; SRC must exist, DST must be absolute.
pub fn parse_volume(s: &str) -> Result<Volume> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [src, dst] => (*src, *dst, None),
        [src, dst, mode] => (*src, *dst, Some(*mode)),
        _ => {
            return Err(RunError::Invalid(format!(
                "--volume {s:?}: use SRC:DST or SRC:DST:ro"
            )))
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(RunError::Invalid(format!(
                "--volume {s:?}: unknown mode {m:?} (ro or rw)"
            )))
        }
    };
    if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
        return Err(RunError::Invalid(format!(
            "--volume {s:?}: the destination must be an absolute path without '..'"
        )));
    }
    let source = std::fs::canonicalize(src)
        .map_err(|e| RunError::Invalid(format!("--volume {s:?}: source {src}: {e}")))?;
    Ok(Volume {
        source,
        target: PathBuf::from(dst),
        read_only,
    })
}

/// `UID[:GID]` or `NAME[:GROUP]`.
pub fn parse_user(s: &str) -> Result<User> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(RunError::Invalid(format!(
            "--user {s:?}: use UID[:GID] or NAME[:GROUP]"
        )));
    }
    Ok(User {
        user: u.to_string(),
        group: g.map(str::to_string),
    })
}

pub fn parse_network(s: &str) -> Result<NetworkMode> {
    match s {
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        _ => Err(RunError::Invalid(format!(
            "--network {s:?}: none or host (bridged networks are not supported)"
        ))),
    }
}

/// `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let bad = || RunError::Invalid(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").ok(), Some(256 << 20));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("64MB").ok(), Some(64 << 20));
        assert_eq!(parse_size("8388608").ok(), Some(8 << 20));
        for bad in ["", "abc", "-5M", "1M", "12Q", "nanM"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_pids() {
        assert_eq!(parse_cpus("0.5").ok(), Some((50_000, 100_000)));
        assert_eq!(parse_cpus("2").ok(), Some((200_000, 100_000)));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_pids("50").ok(), Some(50));
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("-1").is_err());
    }

    #[test]
    fn volumes_users_signals() {
        let v = parse_volume("/tmp:/mnt/t:ro").ok();
        assert_eq!(
            v.map(|v| (v.target, v.read_only)),
            Some(("/mnt/t".into(), true))
        );
        assert!(parse_volume("/tmp:rel").is_err());
        assert!(parse_volume("/tmp:/a/../b").is_err());
        assert!(parse_volume("/nonexistent-xyz:/a").is_err());
        assert!(parse_volume("/tmp:/a:rx").is_err());
        assert_eq!(
            parse_user("1000:100").ok(),
            Some(User {
                user: "1000".into(),
                group: Some("100".into())
            })
        );
        assert!(parse_user(":5").is_err());
        assert_eq!(parse_signal("TERM").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("2").ok(), Some(Signal::SIGINT));
        assert!(parse_signal("FOO").is_err());
    }
}
