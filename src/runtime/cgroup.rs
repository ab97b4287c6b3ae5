//! Per-container cgroups: `layerfs/<name>` under each controller.
//!
//! Rootless, the same v1 directories are used when the host made them
//! writable for the user; on a unified hierarchy `layerfs/<name>` goes
//! below the topmost cgroup above ours that belongs to the user (a
//! delegated subtree). Whether that is possible is for the caller to turn
//! into an error or not (see the runtime's rootless limits policy).
//!
//! Where the host has a unified hierarchy with the memory, cpu and pids
//! controllers (at /sys/fs/cgroup, or populated at /sys/fs/cgroup/unified
//! on a hybrid host) that is used; otherwise the v1 controllers are, one
//! directory per controller. The cgroup is removed once no process is left
//! in it; the supervisor waits for that before unmounting the rootfs,
//! since a process left in the container still holds its mount namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::Limits;
use super::{io_err, setup_err, Result, RunError};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const PARENT: &str = "layerfs";

/// The container's cgroup directories.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub v2: bool,
    /// One per controller (v1) or one (v2); the first holds the memory
    /// controller when there is one.
    pub dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = super::sys::cstr(p) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded.
    let st = unsafe { st.assume_init() };
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t == CGROUP2_SUPER_MAGIC
}

/// The unified hierarchy to use, if it has our controllers.
fn unified_root() -> Option<PathBuf> {
    for p in [
        PathBuf::from(CGROUP_ROOT),
        Path::new(CGROUP_ROOT).join("unified"),
    ] {
        if !is_cgroup2(&p) {
            continue;
        }
        let ctl = std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
        let have: Vec<&str> = ctl.split_whitespace().collect();
        if ["memory", "cpu", "pids"].iter().all(|c| have.contains(c)) {
            return Some(p);
        }
    }
    None
}

/// Our cgroup in the unified hierarchy (`0::/path` in /proc/self/cgroup).
fn own_cgroup() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim().trim_start_matches('/')))
}

/// Rootless on a unified hierarchy: the topmost cgroup at or above `own`
/// (relative to `unified`) that belongs to `uid`, which is what a
/// delegation (systemd's `Delegate=`, or an administrator's chown) hands a
/// user. The containers' cgroups are made below it, in `layerfs/`.
fn delegated_root(unified: &Path, own: &Path, uid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut found = None;
    let mut p = unified.join(own);
    while p != unified && p.starts_with(unified) {
        match std::fs::metadata(&p) {
            Ok(m) if m.uid() == uid && m.is_dir() => found = Some(p.clone()),
            _ => break,
        }
        if !p.pop() {
            break;
        }
    }
    found
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| {
        setup_err(
            format!("cgroup: writing {value:?} to {}", p.display()),
            match e.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EINVAL) => {
                    format!("{e} (the limit is not acceptable to the kernel)")
                }
                _ => e.to_string(),
            },
        )
    })
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Creates `dir`; a leftover one with no process in it is replaced.
fn make_dir(dir: &Path, name: &str) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !procs(dir).is_empty() {
                return Err(RunError::Running(name.to_string()));
            }
            let _ = std::fs::remove_dir(dir);
            std::fs::create_dir(dir).map_err(|e| io_err(dir, e))
        }
        Err(e) => Err(io_err(dir, e)),
    }
}

impl Cgroup {
    /// Creates the cgroup of container `name` and applies `limits`. On
    /// error nothing is left behind.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup> {
        let mut cg = Cgroup {
            v2: false,
            dirs: Vec::new(),
            memory: None,
            pids: None,
        };
        let made = cg.create_inner(name, limits);
        if made.is_err() {
            let _ = cg.remove(Duration::from_millis(500));
        }
        made.map(|()| cg)
    }

    fn create_inner(&mut self, name: &str, limits: &Limits) -> Result<()> {
        if let Some(unified) = unified_root() {
            self.v2 = true;
            let root = if crate::userns::privileged() {
                unified
            } else {
                own_cgroup()
                    .and_then(|own| delegated_root(&unified, &own, nix::unistd::geteuid().as_raw()))
                    .ok_or_else(|| {
                        setup_err(
                            "cgroup",
                            format!(
                                "no cgroup above ours under {} belongs to us (none is delegated)",
                                unified.display()
                            ),
                        )
                    })?
            };
            let parent = root.join(PARENT);
            if let Err(e) = std::fs::create_dir(&parent) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io_err(&parent, e));
                }
            }
            // Rootless, a delegation may not include every controller:
            // enable only those the limits need.
            let all = crate::userns::privileged();
            let wanted: Vec<&str> = [
                (all || limits.memory_bytes.is_some(), "+memory"),
                (all || limits.cpu_quota_us.is_some(), "+cpu"),
                (all || limits.pids.is_some(), "+pids"),
            ]
            .into_iter()
            .filter_map(|(on, c)| on.then_some(c))
            .collect();
            for d in [&root, &parent] {
                write(d, "cgroup.subtree_control", &wanted.join(" "))?;
            }
            let dir = parent.join(name);
            make_dir(&dir, name)?;
            self.dirs.push(dir.clone());
            self.memory = Some(dir.clone());
            self.pids = Some(dir.clone());
            if let Some(m) = limits.memory_bytes {
                write(&dir, "memory.max", &m.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir, "memory.swap.max", "0")?;
                }
            }
            if let Some((q, p)) = limits.cpu_quota_us {
                write(&dir, "cpu.max", &format!("{q} {p}"))?;
            }
            if let Some(n) = limits.pids {
                write(&dir, "pids.max", &n.to_string())?;
            }
            return Ok(());
        }
        for ctl in ["memory", "cpu", "pids"] {
            let root = Path::new(CGROUP_ROOT).join(ctl);
            if !root.join("cgroup.procs").exists() {
                let needed = match ctl {
                    "memory" => limits.memory_bytes.is_some(),
                    "cpu" => limits.cpu_quota_us.is_some(),
                    _ => limits.pids.is_some(),
                };
                if needed {
                    return Err(setup_err(
                        "cgroup",
                        format!("the {ctl} controller is not mounted at {}", root.display()),
                    ));
                }
                continue;
            }
            let parent = root.join(PARENT);
            if let Err(e) = std::fs::create_dir(&parent) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io_err(&parent, e));
                }
            }
            let dir = parent.join(name);
            make_dir(&dir, name)?;
            self.dirs.push(dir.clone());
            match ctl {
                "memory" => {
                    self.memory = Some(dir.clone());
                    if let Some(m) = limits.memory_bytes {
                        write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                        // Without this the limit could be met by swapping.
                        if dir.join("memory.memsw.limit_in_bytes").exists() {
                            write(&dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                        }
                    }
                }
                "cpu" => {
                    if let Some((q, p)) = limits.cpu_quota_us {
                        write(&dir, "cpu.cfs_period_us", &p.to_string())?;
                        write(&dir, "cpu.cfs_quota_us", &q.to_string())?;
                    }
                }
                _ => {
                    self.pids = Some(dir.clone());
                    if let Some(n) = limits.pids {
                        write(&dir, "pids.max", &n.to_string())?;
                    }
                }
            }
        }
        if self.dirs.is_empty() {
            return Err(setup_err(
                "cgroup",
                "no cgroup hierarchy found under /sys/fs/cgroup",
            ));
        }
        Ok(())
    }

    /// The cgroup recorded for a running container, to join it.
    pub fn from_dirs(v2: bool, dirs: Vec<PathBuf>) -> Cgroup {
        let find = |f: &str| dirs.iter().find(|d| d.join(f).exists()).cloned();
        Cgroup {
            v2,
            memory: find(if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            }),
            pids: find("pids.max"),
            dirs,
        }
    }

    /// Moves process `pid` into every directory of the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Processes still in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self.dirs.iter().flat_map(|d| procs(d)).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Kills what is left (waiting up to `limit`) and removes the
    /// directories.
    pub fn remove(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut killed = false;
        loop {
            let left = self.procs();
            if left.is_empty() {
                break;
            }
            // Usually the kernel is still tearing the pid namespace down;
            // give it a moment before killing.
            if !killed && start.elapsed() > Duration::from_millis(200) {
                for p in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                killed = true;
            }
            if start.elapsed() > limit {
                return Err(setup_err(
                    "cgroup",
                    format!("processes {left:?} are still in the container's cgroup"),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut first_err = None;
        for d in self.dirs.drain(..).rev() {
            let since = Instant::now();
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // An exited task can linger for a moment, longer on a
                    // loaded machine.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && since.elapsed() < Duration::from_secs(10) =>
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        first_err.get_or_insert(io_err(&d, e));
                        break;
                    }
                }
            }
        }
        self.memory = None;
        self.pids = None;
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_delegated_root_is_the_topmost_cgroup_of_ours() {
        let t = tempfile::tempdir().expect("tempdir");
        let own = Path::new("user.slice/user@1.service/app.slice/x.scope");
        std::fs::create_dir_all(t.path().join(own)).expect("mkdir");
        let uid = std::fs::metadata(t.path()).expect("stat").uid();
        // All ours: the top of the tree below the hierarchy's root.
        assert_eq!(
            delegated_root(t.path(), own, uid),
            Some(t.path().join("user.slice"))
        );
        // Owned by someone else: nothing is delegated.
        assert_eq!(delegated_root(t.path(), own, uid.wrapping_add(1)), None);
        // Our cgroup is the root: nothing to make cgroups in.
        assert_eq!(delegated_root(t.path(), Path::new(""), uid), None);
    }
}
