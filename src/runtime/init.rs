//! The container's side: from the fresh namespaces to `execve`.
//!
//! Runs in the cloned child (pid 1 of the new pid namespace) of a
//! single-threaded supervisor, so plain Rust is fine here; everything it
//! needs was prepared before the clone. Any failure is written to the
//! report pipe as `CODE\nMESSAGE` and the child exits; a successful
//! `execve` closes the pipe (close-on-exec) with nothing written, which is
//! how the supervisor learns the command started.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::caps;
use super::spec::Volume;
use super::sys::{self, ensure_in_root, fd_path, Kind};

/// Exit code for a failure of the runtime itself (as Docker's 125).
pub const CODE_SETUP: i32 = 125;
pub const CODE_NOT_EXECUTABLE: i32 = 126;
pub const CODE_NOT_FOUND: i32 = 127;

/// A failure in the child: the exit code to report and what happened.
pub struct ChildError(pub i32, pub String);

fn fail(step: &str, e: impl std::fmt::Display) -> ChildError {
    ChildError(CODE_SETUP, format!("{step}: {e}"))
}

/// The process to exec, fully prepared before any fork or clone.
#[derive(Debug, Clone)]
pub struct Process {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Paths to try for argv[0], in order (the PATH search, done by hand:
    /// libc would search *our* PATH, not the container's).
    pub candidates: Vec<CString>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps_mask: u64,
    pub last_cap: u32,
    /// False in a user namespace that denies setgroups (a rootless one
    /// mapping only the caller's ids): the groups stay as they are.
    pub set_groups: bool,
}

impl Process {
    pub fn new(
        argv: &[String],
        env: &[String],
        cwd: &str,
        ids: &super::image::Ids,
    ) -> io::Result<Process> {
        let Some(cmd) = argv.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no command: give one after -- (the image has no Entrypoint or Cmd)",
            ));
        };
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let candidates = if cmd.contains('/') {
            vec![sys::cstr(cmd)?]
        } else {
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| sys::cstr(format!("{}/{cmd}", d.trim_end_matches('/'))))
                .collect::<io::Result<_>>()?
        };
        Ok(Process {
            argv: argv.iter().map(sys::cstr).collect::<io::Result<_>>()?,
            env: env.iter().map(sys::cstr).collect::<io::Result<_>>()?,
            candidates,
            cwd: PathBuf::from(if cwd.is_empty() { "/" } else { cwd }),
            uid: ids.uid,
            gid: ids.gid,
            groups: ids.groups.clone(),
            caps_mask: caps::default_mask(),
            last_cap: caps::last_cap(),
            set_groups: true,
        })
    }
}

/// The container's mounts, prepared before the clone.
#[derive(Debug, Clone)]
pub struct InitConfig {
    pub rootfs: PathBuf,
    pub hostname: String,
    /// Host files bind-mounted over `/etc/<name>`.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    pub volumes: Vec<Volume>,
    /// The terminal to show as /dev/console, when stdin is one.
    pub console: Option<PathBuf>,
    pub process: Process,
}

/// Entry point of the cloned child. Returns only on failure, with the
/// exit code (the report is on `report`).
pub fn init_main(cfg: &InitConfig, go: RawFd, report: RawFd) -> isize {
    let r = run_init(cfg, go);
    let ChildError(code, msg) = match r {
        Ok(never) => match never {},
        Err(e) => e,
    };
    sys::write_all_raw(report, format!("{code}\n{msg}").as_bytes());
    code as isize
}

pub enum Never {}

fn run_init(cfg: &InitConfig, go: RawFd) -> Result<Never, ChildError> {
    // Die with the supervisor rather than outlive it unsupervised.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // Wait until the supervisor has put us in the cgroup.
    let mut b = [0u8; 1];
    loop {
        // SAFETY: one-byte read into a local buffer.
        let n = unsafe { libc::read(go, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // The supervisor is gone.
        std::process::exit(CODE_SETUP);
    }
    // SAFETY: closing our copy of the pipe.
    unsafe { libc::close(go) };
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0) };
    // Now that we are in the container's cgroup, make it our cgroup root.
    // SAFETY: unshare with a flag.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(fail("cgroup namespace", io::Error::last_os_error()));
    }
    let h = &cfg.hostname;
    // SAFETY: pointer and length of a live string.
    if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
        return Err(fail("sethostname", io::Error::last_os_error()));
    }
    setup_rootfs(cfg)?;
    pivot(&cfg.rootfs)?;
    enter_cwd(&cfg.process.cwd)?;
    exec(&cfg.process)
}

fn mnt(
    step: &str,
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), ChildError> {
    sys::mount(src, target, fstype, flags, data).map_err(|e| fail(step, e))
}

fn setup_rootfs(cfg: &InitConfig) -> Result<(), ChildError> {
    let root = &cfg.rootfs;
    // Nothing we mount may propagate back to the host.
    mnt(
        "making mounts private",
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mnt(
        "binding the rootfs",
        Some(root),
        root,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let rootfd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| fail(&format!("opening rootfs {}", root.display()), e))?
        .into();
    let ensure = |rel: &str, kind: Kind| {
        ensure_in_root(&rootfd, Path::new(rel), kind)
            .map_err(|e| fail(&format!("creating /{rel} in the rootfs"), e))
    };
    let nsx = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

    let proc_ = ensure("proc", Kind::Dir)?;
    mnt(
        "mounting /proc",
        Some(Path::new("proc")),
        &fd_path(&proc_),
        Some("proc"),
        nsx,
        None,
    )?;

    let sysd = ensure("sys", Kind::Dir)?;
    if sys::mount(
        Some(Path::new("sysfs")),
        &fd_path(&sysd),
        Some("sysfs"),
        nsx | libc::MS_RDONLY,
        None,
    )
    .is_err()
    {
        // sysfs refuses a second mount in the host's network namespace
        // for some callers; a read-only bind of the host's is equivalent.
        mnt(
            "binding /sys",
            Some(Path::new("/sys")),
            &fd_path(&sysd),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        let again = ensure("sys", Kind::Dir)?;
        mnt(
            "making /sys read-only",
            None,
            &fd_path(&again),
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | nsx
                | sys::locked_flags(&fd_path(&again)),
            None,
        )?;
    }

    setup_dev(&rootfd, cfg.console.as_deref())?;
    mask_kernel_files(&rootfd)?;

    for (src, name) in &cfg.etc_files {
        let rel = format!("etc/{name}");
        // An image whose file is a dangling symlink keeps its own.
        let Ok(fd) = ensure_in_root(&rootfd, Path::new(&rel), Kind::File) else {
            continue;
        };
        mnt(
            &format!("binding /{rel}"),
            Some(src),
            &fd_path(&fd),
            None,
            libc::MS_BIND,
            None,
        )?;
    }

    for v in &cfg.volumes {
        let kind = if v.source.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        let rel = v
            .target
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let step = format!("volume {} on {}", v.source.display(), v.target.display());
        let fd =
            ensure(&rel, kind).map_err(|ChildError(c, m)| ChildError(c, format!("{step}: {m}")))?;
        mnt(
            &step,
            Some(&v.source),
            &fd_path(&fd),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        if v.read_only {
            // Reopened: the path now leads to the bind mount's root.
            let fd = ensure(&rel, kind)?;
            mnt(
                &step,
                None,
                &fd_path(&fd),
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | sys::locked_flags(&fd_path(&fd)),
                None,
            )?;
        }
    }
    Ok(())
}

/// Kernel files a default container may not read (hidden) or change
/// (read-only): the same lists a default OCI spec carries.
const MASKED: [&str; 10] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
];
const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn mask_kernel_files(rootfd: &OwnedFd) -> Result<(), ChildError> {
    let nsx = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for rel in MASKED {
        // Absent on this kernel: nothing to hide.
        let Ok(fd) = sys::path_in_root(rootfd, Path::new(rel)) else {
            continue;
        };
        let step = format!("masking /{rel}");
        let is_dir = std::fs::metadata(fd_path(&fd)).is_ok_and(|m| m.is_dir());
        if is_dir {
            mnt(
                &step,
                Some(Path::new("tmpfs")),
                &fd_path(&fd),
                Some("tmpfs"),
                nsx | libc::MS_RDONLY,
                Some("size=0"),
            )?;
        } else {
            mnt(
                &step,
                Some(Path::new("/dev/null")),
                &fd_path(&fd),
                None,
                libc::MS_BIND,
                None,
            )?;
        }
    }
    for rel in READ_ONLY {
        let Ok(fd) = sys::path_in_root(rootfd, Path::new(rel)) else {
            continue;
        };
        let step = format!("making /{rel} read-only");
        mnt(
            &step,
            Some(&fd_path(&fd)),
            &fd_path(&fd),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        let again = sys::path_in_root(rootfd, Path::new(rel)).map_err(|e| fail(&step, e))?;
        mnt(
            &step,
            None,
            &fd_path(&again),
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | nsx
                | sys::locked_flags(&fd_path(&again)),
            None,
        )?;
    }
    Ok(())
}

/// A tmpfs /dev with the usual nodes, pts, shm and mqueue.
fn setup_dev(rootfd: &OwnedFd, console: Option<&Path>) -> Result<(), ChildError> {
    let dev0 = ensure_in_root(rootfd, Path::new("dev"), Kind::Dir)
        .map_err(|e| fail("creating /dev in the rootfs", e))?;
    mnt(
        "mounting /dev",
        Some(Path::new("tmpfs")),
        &fd_path(&dev0),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    let dev =
        ensure_in_root(rootfd, Path::new("dev"), Kind::Dir).map_err(|e| fail("opening /dev", e))?;
    let devp = fd_path(&dev);
    let d = dev.as_raw_fd();
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let n = sys::cstr(name).map_err(|e| fail("dev", e))?;
        // SAFETY: valid dirfd and name.
        let r = unsafe {
            libc::mknodat(
                d,
                n.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if r != 0 {
            // Not allowed to make device nodes: bind the host's.
            // SAFETY: as above, a regular file.
            unsafe { libc::mknodat(d, n.as_ptr(), libc::S_IFREG | 0o666, 0) };
            let host = Path::new("/dev").join(name);
            mnt(
                &format!("binding /dev/{name}"),
                Some(&host),
                &devp.join(name),
                None,
                libc::MS_BIND,
                None,
            )?;
        }
    }
    let mkdir = |name: &str, mode: u32| -> Result<(), ChildError> {
        let n = sys::cstr(name).map_err(|e| fail("dev", e))?;
        // SAFETY: valid dirfd and name.
        if unsafe { libc::mkdirat(d, n.as_ptr(), mode) } != 0 {
            return Err(fail(
                &format!("mkdir /dev/{name}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    };
    mkdir("pts", 0o755)?;
    let pts_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    let pts_opts = "newinstance,ptmxmode=0666,mode=0620";
    let pts = devp.join("pts");
    let devpts = Some(Path::new("devpts"));
    // gid 5 (tty) is unmapped in a rootless container without a subgid
    // range: the kernel refuses it, so the terminals keep group 0 there.
    if let Err(e) = sys::mount(
        devpts,
        &pts,
        Some("devpts"),
        pts_flags,
        Some(&format!("{pts_opts},gid=5")),
    ) {
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(fail("mounting /dev/pts", e));
        }
        mnt(
            "mounting /dev/pts",
            devpts,
            &pts,
            Some("devpts"),
            pts_flags,
            Some(pts_opts),
        )?;
    }
    mkdir("shm", 0o1777)?;
    mnt(
        "mounting /dev/shm",
        Some(Path::new("shm")),
        &devp.join("shm"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    mkdir("mqueue", 0o755)?;
    mnt(
        "mounting /dev/mqueue",
        Some(Path::new("mqueue")),
        &devp.join("mqueue"),
        Some("mqueue"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    for (target, name) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        let t = sys::cstr(target).map_err(|e| fail("dev", e))?;
        let n = sys::cstr(name).map_err(|e| fail("dev", e))?;
        // SAFETY: valid strings and dirfd.
        if unsafe { libc::symlinkat(t.as_ptr(), d, n.as_ptr()) } != 0 {
            return Err(fail(
                &format!("symlink /dev/{name}"),
                io::Error::last_os_error(),
            ));
        }
    }
    if let Some(tty) = console {
        let n = sys::cstr("console").map_err(|e| fail("dev", e))?;
        // SAFETY: valid dirfd and name.
        unsafe { libc::mknodat(d, n.as_ptr(), libc::S_IFREG | 0o600, 0) };
        mnt(
            "binding /dev/console",
            Some(tty),
            &devp.join("console"),
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

/// Makes `rootfs` the root and detaches the old one.
fn pivot(rootfs: &Path) -> Result<(), ChildError> {
    std::env::set_current_dir(rootfs).map_err(|e| fail("chdir to the rootfs", e))?;
    let dot = sys::cstr(".").map_err(|e| fail("pivot_root", e))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // where a lazy unmount of "." removes it; no directory for it needed.
    // SAFETY: valid C strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(fail("pivot_root", io::Error::last_os_error()));
    }
    // SAFETY: valid C string.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(fail("detaching the old root", io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))
}

fn enter_cwd(cwd: &Path) -> Result<(), ChildError> {
    if let Err(e) = std::env::set_current_dir(cwd) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(fail(&format!("working directory {}", cwd.display()), e));
        }
        std::fs::create_dir_all(cwd)
            .and_then(|()| std::env::set_current_dir(cwd))
            .map_err(|e| fail(&format!("working directory {}", cwd.display()), e))?;
    }
    Ok(())
}

/// Drops privileges and execs `p`; returns only on failure.
pub fn exec(p: &Process) -> Result<Never, ChildError> {
    caps::restrict(p.caps_mask, p.last_cap).map_err(|e| fail("dropping capabilities", e))?;
    // SAFETY: setgroups with a valid slice.
    if p.set_groups && unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) } != 0 {
        return Err(fail("setgroups", io::Error::last_os_error()));
    }
    // SAFETY: integer arguments.
    if unsafe { libc::setresgid(p.gid, p.gid, p.gid) } != 0 {
        return Err(fail(&format!("setgid {}", p.gid), id_error()));
    }
    // SAFETY: integer arguments.
    if unsafe { libc::setresuid(p.uid, p.uid, p.uid) } != 0 {
        return Err(fail(&format!("setuid {}", p.uid), id_error()));
    }
    caps::set_no_new_privs().map_err(|e| fail("no_new_privs", e))?;
    reset_signals();
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0o022) };
    // Nothing of ours leaks into the command (the report pipe included:
    // its closing at exec is the success signal).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut best = libc::ENOENT;
    for c in &p.candidates {
        // SAFETY: null-terminated arrays of valid C strings.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        match e {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => best = libc::EACCES,
            other => {
                best = other;
                break;
            }
        }
    }
    let cmd = p
        .argv
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let err = io::Error::from_raw_os_error(best);
    Err(match best {
        libc::ENOENT if p.candidates.len() > 1 => ChildError(
            CODE_NOT_FOUND,
            format!("exec {cmd:?}: executable file not found in the container's PATH"),
        ),
        libc::ENOENT => ChildError(CODE_NOT_FOUND, format!("exec {cmd:?}: {err}")),
        _ => ChildError(CODE_NOT_EXECUTABLE, format!("exec {cmd:?}: {err}")),
    })
}

/// The errno of a failed setresuid/setresgid; EINVAL means the id is not
/// mapped in our user namespace, which needs saying.
fn id_error() -> String {
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        format!("{e} (the id is not mapped in the container's user namespace: rootless without a subordinate id range maps only root)")
    } else {
        e.to_string()
    }
}

fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}
