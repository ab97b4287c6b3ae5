//! `run`: the supervisor. It prepares everything the child needs, clones
//! it into new namespaces, forwards signals to it, waits for it, and then
//! tears down in reverse order: processes, cgroup, mount, records.
//!
//! Every resource is registered in a [`Teardown`] as soon as it exists, so
//! a failure at any step (or a panic) leaves nothing behind: no mount, no
//! cgroup, no process.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::image::{self, ImageDefaults};
use super::init::{self, InitConfig, Process};
use super::spec::{NetworkMode, RootfsSource, RunSpec};
use super::state::{self, ContainerState, Status};
use super::{io_err, setup_err, Result, RunError};
use crate::mount::daemon::{self, DaemonOptions};
use crate::mount::{self, MountSpec, Options};
use crate::store::Store;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit status to propagate: the command's, or 128+signal.
    pub code: i32,
    pub signal: Option<Signal>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    pub memory_limit: Option<u64>,
}

enum Mounted {
    /// A store container, mounted by the store.
    Store,
    /// A `--lower` rootfs in the state dir.
    Path(PathBuf),
}

/// What exists so far, undone in reverse order.
struct Teardown<'a> {
    name: String,
    store: Option<&'a Store>,
    child: Option<Pid>,
    cgroup: Option<Cgroup>,
    mounted: Option<Mounted>,
    /// Remove the store container (created by us and never started, or
    /// `--rm`).
    remove_container: bool,
    /// Remove the runtime dir.
    remove_state: bool,
}

impl Teardown<'_> {
    fn run(&mut self) -> Vec<RunError> {
        let mut errs = Vec::new();
        if let Some(pid) = self.child.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(mut cg) = self.cgroup.take() {
            if let Err(e) = cg.remove(Duration::from_secs(10)) {
                errs.push(e);
            }
        }
        match self.mounted.take() {
            Some(Mounted::Store) => {
                if let Some(s) = self.store {
                    if let Err(e) = unmount_with_retry(|lazy| {
                        s.umount_container(&self.name, lazy)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }) {
                        errs.push(setup_err(format!("unmounting container {}", self.name), e));
                    }
                }
            }
            Some(Mounted::Path(p)) => {
                if let Err(e) =
                    unmount_with_retry(|lazy| mount::umount(&p, lazy).map_err(|e| e.to_string()))
                {
                    errs.push(setup_err(format!("unmounting {}", p.display()), e));
                }
            }
            None => {}
        }
        if self.remove_container {
            self.remove_container = false;
            if let Some(s) = self.store {
                if let Err(e) = s.remove_container(&self.name, false) {
                    errs.push(e.into());
                }
            }
        }
        if self.remove_state {
            self.remove_state = false;
            if let Err(e) = state::remove_dir(&self.name) {
                errs.push(e);
            }
        }
        errs
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        for e in self.run() {
            tracing::error!(container = %self.name, error = %e, "cleanup failed");
        }
    }
}

/// The mount may be briefly busy while the kernel finishes tearing down
/// the container's mount namespace; retry, then detach lazily.
fn unmount_with_retry(
    mut f: impl FnMut(bool) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let start = Instant::now();
    loop {
        match f(false) {
            Ok(()) => return Ok(()),
            Err(_) if start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return f(true),
        }
    }
}

/// The signals the supervisor handles synchronously (and forwards).
pub(crate) fn supervised_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Forwards signals to `child` until it exits; returns its status.
pub(crate) fn wait_forwarding(child: Pid, set: &SigSet) -> Result<(i32, Option<Signal>)> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((code, None)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok((128 + sig as i32, Some(sig))),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(setup_err("waiting for the container", e)),
        }
        let sig = set
            .wait()
            .map_err(|e| setup_err("waiting for signals", e))?;
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(child, sig);
        }
    }
}

/// Reads the child's report: empty means it exec'd.
pub(crate) fn read_report(rd: OwnedFd) -> Option<RunError> {
    let mut buf = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut buf);
    if buf.is_empty() {
        return None;
    }
    let (code, msg) = buf.split_once('\n').unwrap_or(("125", buf.as_str()));
    Some(RunError::Start {
        code: code.parse().unwrap_or(init::CODE_SETUP),
        message: msg.to_string(),
    })
}

fn stdin_tty() -> Option<PathBuf> {
    // SAFETY: isatty on fd 0.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    std::fs::read_link("/proc/self/fd/0").ok()
}

/// Cleans up after a supervisor that died without tearing down (killed
/// with SIGKILL, or the machine's OOM killer): its container died with it
/// (PDEATHSIG), but its cgroup and rootfs mount may remain.
fn recover_stale(old: &ContainerState, store: Option<&Store>) -> Result<()> {
    let step = |e: String| setup_err(format!("cleaning up after the last run of {}", old.name), e);
    if old.rootless {
        // The mount lived in the dead supervisor's mount namespace; its
        // daemon unmounts itself when the supervisor is gone. Should it
        // still run, it is asked to (SIGTERM unmounts).
        stop_stale_daemon(&old.rootfs).map_err(step)?;
    }
    if !old.cgroups.is_empty() {
        Cgroup::from_dirs(old.cgroup_v2, old.cgroups.clone())
            .remove(Duration::from_secs(5))
            .map_err(|e| step(e.to_string()))?;
    }
    if old.rootfs.as_os_str().is_empty() || !crate::mount::table::is_mounted(&old.rootfs) {
        return Ok(());
    }
    match (old.image.is_some(), store) {
        (true, Some(s)) => unmount_with_retry(|lazy| {
            s.umount_container(&old.name, lazy)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        _ => unmount_with_retry(|lazy| mount::umount(&old.rootfs, lazy).map_err(|e| e.to_string())),
    }
    .map_err(step)
}

/// Stops the daemon still serving a rootless container's old rootfs.
fn stop_stale_daemon(rootfs: &Path) -> std::result::Result<(), String> {
    let Some(pid) = crate::mount::record::MountRecord::daemon_pid(rootfs) else {
        return Ok(());
    };
    // Only the process that has that rootfs mounted: a record is a file,
    // and a stale one may name a pid reused since.
    let serves = crate::mount::table::of_process(&pid.to_string())
        .iter()
        .any(|m| m.target == rootfs);
    if !serves {
        return Ok(());
    }
    let pid = Pid::from_raw(pid);
    let start = Instant::now();
    while super::sys::start_time(pid.as_raw()).is_some() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "the mount daemon (pid {pid}) of {} does not exit",
                rootfs.display()
            ));
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Warns that a rootless run goes without the limits it asked for: no
/// cgroup is delegated to the caller.
fn warn_limits_not_applied(limits: &super::Limits, host_uid: u32, e: &RunError) {
    let asked: Vec<&str> = [
        (limits.memory_bytes.is_some(), "--memory"),
        (limits.cpu_quota_us.is_some(), "--cpus"),
        (limits.pids.is_some(), "--pids"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    tracing::warn!(
        "rootless: {} NOT applied, the container runs without them: this host does not \
         delegate a cgroup to uid {host_uid} ({e}); delegate writable cgroups to the user (a \
         cgroup v2 subtree, or the v1 memory, cpu and pids controllers' layerfs/ directories)",
        asked.join(", ")
    );
}

/// Runs a container to completion. As host root it runs rootful; as anyone
/// else rootless (see [`super::rootless`]): the supervisor enters its own
/// user namespace before it mounts anything.
pub fn run(spec: RunSpec, store: Option<&Store>) -> Result<Outcome> {
    crate::store::check_container_name(&spec.name)?;
    let rootless = !crate::userns::privileged();
    let mapping = if rootless {
        Some(super::rootless::Mapping::for_caller()?)
    } else {
        None
    };
    if let Ok(old) = state::load(&spec.name) {
        if old.live_status() != Status::Exited {
            return Err(RunError::Running(spec.name.clone()));
        }
        recover_stale(&old, store)?;
    }
    if let Some(m) = &mapping {
        // First, before anything exists that a failure would have to undo.
        super::rootless::enter(m)?;
    }
    let dir = state::dir_of(&spec.name);
    let fresh_state = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    if rootless {
        let containers = state::containers_dir();
        for d in [containers.parent().unwrap_or(&containers), &containers] {
            if let Err(e) = super::rootless::check_owned(d) {
                if fresh_state {
                    let _ = std::fs::remove_dir(&dir);
                }
                return Err(e);
            }
        }
    }
    // state.json holds the container's environment (secrets, often).
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| io_err(&dir, e))?;
    let mut td = Teardown {
        name: spec.name.clone(),
        store,
        child: None,
        cgroup: None,
        mounted: None,
        remove_container: false,
        remove_state: fresh_state || spec.remove,
    };
    let mut st = ContainerState {
        name: spec.name.clone(),
        status: Status::Creating,
        image: None,
        pid: 0,
        pid_start: 0,
        supervisor: std::process::id() as i32,
        rootfs: PathBuf::new(),
        cgroup_v2: false,
        cgroups: Vec::new(),
        command: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        started: state::now_secs(),
        exit_code: None,
        oom_killed: false,
        rootless,
    };
    let daemon_opts = DaemonOptions {
        foreground: false,
        pid_file: None,
        log_file: Some(
            spec.daemon_log
                .clone()
                .unwrap_or_else(|| dir.join("daemon.log")),
        ),
        unmount_when_gone: rootless.then_some(std::process::id() as i32),
    };

    // 1. The rootfs.
    let (rootfs, defaults) = match &spec.rootfs {
        RootfsSource::Image(img) => {
            let s = store
                .ok_or_else(|| RunError::Invalid("running an image needs the store".into()))?;
            let rec = s.image(img)?;
            let defaults = ImageDefaults::from_config(&s.image_config(&rec.id)?)?;
            if s.container_exists(&spec.name) {
                let c = s.container(&spec.name)?;
                if c.image != rec.id {
                    return Err(RunError::Invalid(format!(
                        "container {:?} exists already on image {}; remove it or run it without naming another image",
                        spec.name,
                        c.image.short()
                    )));
                }
            } else {
                s.create_container(img, &spec.name)?;
                td.remove_container = true;
            }
            let mp = s.mount_container(&spec.name, None, &[], &daemon_opts)?;
            td.mounted = Some(Mounted::Store);
            st.image = Some(img.clone());
            (mp, defaults)
        }
        RootfsSource::Lowers(lowers) => {
            let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
            for d in [&upper, &work, &rootfs] {
                std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
            }
            let options = Options {
                lowers: lowers.clone(),
                upper: Some(upper),
                work: Some(work),
                ..Options::default()
            };
            let prepared = mount::prepare(MountSpec {
                options,
                mountpoint: rootfs.clone(),
            })?;
            daemon::run(prepared, &daemon_opts)?;
            td.mounted = Some(Mounted::Path(rootfs.clone()));
            (rootfs, ImageDefaults::default())
        }
    };
    st.rootfs = rootfs.clone();
    // Recorded only now: a concurrent run of the same name fails at the
    // mount above (the rootfs is busy) without touching the record of the
    // one that got it.
    st.save()?;
    // From here a ^C or TERM waits (blocked) until the container runs and
    // is then forwarded to it; if the start fails, the teardown runs
    // instead. Blocked only after the mount: the daemon forks from us and
    // must not inherit the mask.
    let signals = supervised_signals();
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut old_mask))
        .map_err(|e| setup_err("blocking signals", e))?;

    // 2. What to run, resolved against the rootfs.
    let rootfd: OwnedFd = std::fs::File::open(&rootfs)
        .map_err(|e| io_err(&rootfs, e))?
        .into();
    let user = match (
        &spec.user,
        defaults.user.as_deref().filter(|u| !u.is_empty()),
    ) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(u)) => Some(super::spec::parse_user(u)?),
        (None, None) => None,
    };
    let ids = image::resolve_user(&rootfd, user.as_ref())?;
    drop(rootfd);
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| spec.name.chars().take(63).collect::<String>());
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(RunError::Invalid(format!(
            "hostname {hostname:?}: 1 to 64 characters"
        )));
    }
    let mut env = image::merge_env(
        defaults.env.as_deref().unwrap_or(&[]),
        &spec.env,
        &ids.home,
        &hostname,
    );
    let console = stdin_tty();
    if console.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let argv = defaults.argv(&spec.command);
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| defaults.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(RunError::Invalid(format!(
            "working directory {cwd:?} must be absolute"
        )));
    }
    let mut process =
        Process::new(&argv, &env, &cwd, &ids).map_err(|e| RunError::Invalid(e.to_string()))?;
    process.set_groups = mapping.as_ref().is_none_or(|m| m.full());
    let etc_files = state::write_etc(&dir, &hostname)?;
    st.command = argv.clone();
    st.env = env;
    st.cwd = cwd;
    st.uid = ids.uid;
    st.gid = ids.gid;
    st.groups = ids.groups.clone();

    // 3. The cgroup. Rootless, only for limits asked for, and where the
    // host delegates none, a warning naming what is not applied (as podman
    // does); without limits no cgroup is needed.
    let cg = match &mapping {
        Some(_) if spec.limits == super::Limits::default() => {
            tracing::debug!(container = %spec.name, "rootless: no limits asked for, no cgroup");
            None
        }
        Some(m) => match Cgroup::create(&spec.name, &spec.limits) {
            Ok(cg) => Some(cg),
            Err(e) => {
                warn_limits_not_applied(&spec.limits, m.host_uid, &e);
                None
            }
        },
        None => Some(Cgroup::create(&spec.name, &spec.limits)?),
    };
    if let Some(cg) = &cg {
        st.cgroup_v2 = cg.v2;
        st.cgroups = cg.dirs.clone();
        td.cgroup = Some(cg.clone());
    }

    // 4. The child, in new namespaces.
    let cfg = InitConfig {
        rootfs: rootfs.clone(),
        hostname,
        etc_files,
        volumes: spec.volumes.clone(),
        console,
        process,
    };
    let (go_rd, go_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_err("pipe", e))?;
    let (rep_rd, rep_wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_err("pipe", e))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == NetworkMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; 1 << 20];
    let (go_rd_raw, go_wr_raw, rep_rd_raw, rep_wr_raw) = (
        go_rd.as_raw_fd(),
        go_wr.as_raw_fd(),
        rep_rd.as_raw_fd(),
        rep_wr.as_raw_fd(),
    );
    let child_fn = Box::new(|| {
        // SAFETY: closing the child's copies of the parent's pipe ends.
        unsafe {
            libc::close(go_wr_raw);
            libc::close(rep_rd_raw);
        }
        init::init_main(&cfg, go_rd_raw, rep_wr_raw)
    });
    // SAFETY: this process is single-threaded (the mount daemon forked
    // away before any thread started), so the child may run Rust code.
    let cloned = unsafe { nix::sched::clone(child_fn, &mut stack, flags, Some(libc::SIGCHLD)) };
    drop(go_rd);
    drop(rep_wr);
    let child = cloned.map_err(|e| {
        setup_err(
            "creating the container's namespaces (clone)",
            match e {
                nix::errno::Errno::EPERM if rootless => {
                    format!("{e}: not permitted in the rootless user namespace")
                }
                nix::errno::Errno::EPERM => format!("{e}: not permitted (run as root)"),
                e => e.to_string(),
            },
        )
    })?;
    td.child = Some(child);
    if let Some(cg) = &cg {
        cg.add(child.as_raw())?;
    }
    let mut go = std::fs::File::from(go_wr);
    std::io::Write::write_all(&mut go, b"g").map_err(|e| setup_err("starting the container", e))?;
    drop(go);
    if let Some(err) = read_report(rep_rd) {
        return Err(err);
    }
    // Started: from here on the container (and its layer) is kept unless
    // --rm, whatever happens.
    td.remove_container = spec.remove;
    td.remove_state = spec.remove;
    st.pid = child.as_raw();
    st.pid_start = super::sys::start_time(child.as_raw()).unwrap_or(0);
    st.status = Status::Running;
    st.save()?;

    // 5. Wait, forwarding signals.
    let waited = wait_forwarding(child, &signals);
    td.child = None;
    let (code, signal) = waited?;
    let oom_killed = cg.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    st.status = Status::Exited;
    st.exit_code = Some(code);
    st.oom_killed = oom_killed;
    let errs = td.run();
    if !spec.remove {
        st.save()?;
    }
    if let Some(e) = errs.into_iter().next() {
        return Err(e);
    }
    Ok(Outcome {
        code,
        signal,
        oom_killed,
        memory_limit: spec.limits.memory_bytes,
    })
}
