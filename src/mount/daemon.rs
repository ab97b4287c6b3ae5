//! The mount daemon: mounts the union on `/dev/fuse` and serves it.
//!
//! In the default (daemon) mode the command forks; the child mounts and
//! reports over a pipe, and the parent exits 0 only once the mount is live,
//! or prints the child's error and exits non-zero. That is the contract
//! containers/storage relies on for a `mount_program`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, setsid, ForkResult};

use super::record::MountRecord;
use super::status::{Status, StatusSource};
use super::{claim_workdir, MountError, Prepared};
use crate::fuse::{FuseOptions, UnionFs};
use crate::union::idmap::IdMap;
use crate::union::{Union, UnionConfig, Upper};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Stay attached to the terminal instead of forking.
    pub foreground: bool,
    /// Write the daemon's pid here once the mount is live.
    pub pid_file: Option<PathBuf>,
    /// Where the daemon's log goes after it detaches (default: discarded).
    pub log_file: Option<PathBuf>,
    /// Unmount (and so end) when this process exits. The rootless runtime
    /// sets its supervisor here: the mount lives in the supervisor's mount
    /// namespace, which nobody else can enter to unmount it should the
    /// supervisor be killed.
    pub unmount_when_gone: Option<i32>,
}

/// Mounts and serves `prepared`; in daemon mode returns in the parent once
/// the mount is live.
pub fn run(prepared: Prepared, opts: &DaemonOptions) -> Result<(), MountError> {
    if opts.foreground {
        return serve(prepared, opts, None);
    }
    let (rd, wr) = nix::unistd::pipe().map_err(|e| MountError::Mount(format!("pipe: {e}")))?;
    // SAFETY: no other threads exist yet in this process (the daemon's
    // threads are started after the fork).
    match unsafe { fork() }.map_err(|e| MountError::Mount(format!("fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(wr);
            // The intermediate child exits right after the second fork.
            let _ = nix::sys::wait::waitpid(child, None);
            let mut status = String::new();
            let _ = File::from(rd).read_to_string(&mut status);
            match status.split_once(' ') {
                _ if status.starts_with("ok") => Ok(()),
                Some(("err", msg)) => Err(MountError::Mount(msg.trim_end().to_string())),
                _ => Err(MountError::Mount(
                    "the mount daemon exited before the mount was ready".into(),
                )),
            }
        }
        ForkResult::Child => {
            drop(rd);
            let _ = setsid();
            // SAFETY: still single-threaded.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Ok(ForkResult::Child) => {}
                Err(_) => std::process::exit(1),
            }
            let _ = std::env::set_current_dir("/");
            redirect_stdio(None);
            // Errors before the mount is live reach the parent through the
            // pipe; later ones go to the log.
            let code = match serve(prepared, opts, Some(wr)) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

/// Points stdin/stdout (and stderr, when `stderr_to` is given) away from the
/// terminal.
fn redirect_stdio(stderr_to: Option<&Path>) {
    let null = File::options().read(true).write(true).open("/dev/null");
    let Ok(null) = null else { return };
    // SAFETY: dup2 onto the standard descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    if let Some(p) = stderr_to {
        let target = File::options().create(true).append(true).open(p);
        let fd = target
            .as_ref()
            .map(|f| f.as_raw_fd())
            .unwrap_or(null.as_raw_fd());
        // SAFETY: dup2 onto stderr.
        unsafe {
            libc::dup2(fd, 2);
        }
    }
}

fn report(ready: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = ready.take() {
        let mut f = File::from(fd);
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Sets up the union, mounts it and serves requests until it is unmounted.
pub fn serve(
    prepared: Prepared,
    opts: &DaemonOptions,
    mut ready: Option<OwnedFd>,
) -> Result<(), MountError> {
    let mountpoint = prepared.mountpoint.clone();
    let session = match start(prepared) {
        Ok(s) => s,
        Err(e) => {
            report(&mut ready, &format!("err {e}\n"));
            return Err(e);
        }
    };
    let (session, _workdir_lock, status, _record) = session;
    if ready.is_some() {
        // Detaching: nothing may write to the caller's terminal any more.
        redirect_stdio(Some(
            opts.log_file.as_deref().unwrap_or(Path::new("/dev/null")),
        ));
    }
    if let Some(p) = &opts.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write pid file");
        }
    }
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    report(&mut ready, "ok\n");
    spawn_signal_handler(mountpoint.clone(), status);
    if let Some(pid) = opts.unmount_when_gone {
        spawn_owner_watch(pid, mountpoint.clone());
    }
    let result = session
        .run()
        .map_err(|e| MountError::Mount(format!("FUSE session ended: {e}")));
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    result
}

type Started = (
    fuser::Session<UnionFs>,
    Option<OwnedFd>,
    StatusSource,
    Option<MountRecord>,
);

fn start(mut prepared: Prepared) -> Result<Started, MountError> {
    // Signals must be blocked before any thread exists (RocksDB's and the
    // session's alike), so that only the handler thread receives them.
    block_signals();
    // The index is built here, after every fork (RocksDB's threads must
    // not cross one) and while stderr is still the caller's terminal.
    let index = super::indexing::prepare(&prepared)?;
    prepared.index = index.as_ref().map(|(plan, _)| plan.clone());
    let o = &prepared.spec.options;
    // Modes of new entries are computed from the caller's umask (or the
    // parent's default ACL); our own umask must not mask them again.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let read_only = prepared.upper.is_none();
    let (upper, lock) = match prepared.upper {
        Some((layer, workdir)) => {
            let work_path = o.work.clone().unwrap_or_default();
            let (lock, scratch, index) = claim_workdir(&workdir, &work_path)?;
            (Some(Upper::new(layer, scratch, index)), Some(lock))
        }
        None => (None, None),
    };
    let cfg = UnionConfig {
        xattr_ns: prepared.xattr_ns,
        fsync: o.fsync,
        acl: o.acl,
        static_nlink: o.static_nlink,
        metacopy: o.metacopy,
        override_stat: match o.xattr_permissions {
            1 => Some(crate::union::override_stat::FUSE_OVERLAYFS),
            2 => Some(crate::union::override_stat::CONTAINERS),
            _ => None,
        },
        uids: IdMap {
            ranges: o.uid_ranges.clone(),
            squash: o.squash_uid.or(o.squash_to_root.then_some(0)),
        },
        gids: IdMap {
            ranges: o.gid_ranges.clone(),
            squash: o.squash_gid.or(o.squash_to_root.then_some(0)),
        },
        redirect_dir: o.redirect_dir,
        ..UnionConfig::default()
    };
    let mut union = Union::new(prepared.lowers, upper, cfg)
        .map_err(|e| MountError::Mount(format!("cannot set up the union: {e}")))?;
    if let Some((plan, index)) = index {
        union.set_index(crate::union::LowerIndex {
            index,
            stack: plan.stack,
        });
    }
    let union = Arc::new(union);
    let template = Status {
        pid: std::process::id(),
        mountpoint: prepared.mountpoint.clone(),
        lower_layers: union.lower_count(),
        upper: o.upper.clone().filter(|_| !read_only),
        read_only,
        threads: prepared.threads,
        xattr_namespace: format!("{:?}", prepared.xattr_ns).to_lowercase(),
        passthrough: false,
        indexed: prepared.index.is_some(),
        nodes: 0,
        cached_dirs: 0,
        rss_kib: 0,
        peak_rss_kib: 0,
    };
    let fs = UnionFs::new(
        union.clone(),
        FuseOptions {
            timeout: prepared.timeout,
            acl: o.acl,
            // The kernel only lets a daemon with CAP_SYS_ADMIN in the
            // initial user namespace register backing files.
            passthrough: o.passthrough
                && nix::unistd::geteuid().is_root()
                && super::in_initial_user_ns(),
            writeback: o.writeback,
        },
    );
    let status = StatusSource {
        union,
        template,
        passthrough: fs.passthrough_flag(),
    };

    let dev = open_dev_fuse()?;
    // The record exists before the mount is visible, so whoever sees the
    // mount can find its daemon.
    let record = MountRecord::create(&prepared.mountpoint);
    kernel_mount(&prepared.mountpoint, o, dev.as_raw_fd(), read_only)?;
    let mut config = fuser::Config::default();
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(prepared.threads);
    config.clone_fd = true;
    let session =
        fuser::Session::from_fd(fs, dev, fuser::SessionACL::All, config).map_err(|e| {
            let _ = nix::mount::umount2(&prepared.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            MountError::Mount(format!("FUSE handshake failed: {e}"))
        })?;
    Ok((session, lock, status, record))
}

fn open_dev_fuse() -> Result<OwnedFd, MountError> {
    let f = File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            MountError::Mount(
                if e.kind() == std::io::ErrorKind::PermissionDenied
                    && !crate::userns::privileged()
                {
                    format!(
                        "cannot open /dev/fuse: {e}: an unprivileged (rootless) mount opens it as \
                         uid {}; it must be usable by that user (e.g. mode 0666)",
                        crate::userns::host_euid()
                    )
                } else {
                    format!(
                        "cannot open /dev/fuse: {e} (is the fuse module loaded, and is /dev/fuse accessible?)"
                    )
                },
            )
        })?;
    Ok(OwnedFd::from(f))
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// mount(2) of a FUSE filesystem on `mountpoint`.
fn kernel_mount(
    mountpoint: &Path,
    o: &super::Options,
    fd: RawFd,
    read_only: bool,
) -> Result<(), MountError> {
    use nix::mount::MsFlags;
    let mut data = format!(
        "fd={fd},rootmode=40000,user_id={},group_id={},default_permissions",
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if o.allow_other || o.allow_root {
        data.push_str(",allow_other");
    }
    if let Some(ctx) = &o.context {
        if selinux_enabled() {
            data.push(',');
            data.push_str(ctx);
        }
    }
    let mut flags = MsFlags::empty();
    for (on, flag) in [
        (!o.suid, MsFlags::MS_NOSUID),
        (!o.dev, MsFlags::MS_NODEV),
        (!o.exec, MsFlags::MS_NOEXEC),
        (o.noatime, MsFlags::MS_NOATIME),
        (read_only, MsFlags::MS_RDONLY),
        (o.sync, MsFlags::MS_SYNCHRONOUS),
        (o.dirsync, MsFlags::MS_DIRSYNC),
    ] {
        if on {
            flags |= flag;
        }
    }
    let source = o.fsname.clone().unwrap_or_else(|| "layerfs".to_string());
    nix::mount::mount(
        Some(source.as_str()),
        mountpoint,
        Some("fuse.layerfs"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| match e {
        Errno::EPERM => MountError::Mount(format!(
            "mount on {} not permitted: run as root, or as root in a user namespace that owns the mount namespace",
            mountpoint.display()
        )),
        e => MountError::Mount(format!("mount on {}: {e}", mountpoint.display())),
    })
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGUSR1);
    set
}

fn block_signals() {
    let _ = handled_signals().thread_block();
}

/// Lazily unmounts `mountpoint` once process `pid` has exited (a pidfd
/// becomes readable then), which ends the session.
fn spawn_owner_watch(pid: i32, mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("owner-watch".into())
        .spawn(move || {
            // SAFETY: pidfd_open with integer arguments.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd >= 0 {
                let mut p = libc::pollfd {
                    fd: fd as RawFd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    // SAFETY: one valid pollfd.
                    let r = unsafe { libc::poll(&mut p, 1, -1) };
                    if r > 0 || Errno::last() != Errno::EINTR {
                        break;
                    }
                }
                // SAFETY: closing the pidfd we opened.
                unsafe { libc::close(fd as RawFd) };
            }
            tracing::info!(pid, "owner exited; unmounting");
            let c = CString::new(mountpoint.as_os_str().as_bytes()).unwrap_or_default();
            // SAFETY: valid C string.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no owner watch thread; the mount may outlive its owner");
    }
}

/// SIGUSR1 writes the status. SIGTERM, SIGINT or SIGHUP unmount (lazily,
/// so open files do not keep the daemon alive), which ends the session.
fn spawn_signal_handler(mountpoint: PathBuf, status: StatusSource) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match handled_signals().wait() {
                Ok(Signal::SIGUSR1) => status.write(),
                Ok(sig) => {
                    tracing::info!(?sig, "unmounting on signal");
                    let c = CString::new(mountpoint.as_os_str().as_bytes()).unwrap_or_default();
                    // SAFETY: valid C string.
                    unsafe {
                        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                    }
                    return;
                }
                Err(_) => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no signal handler thread; signals will kill the daemon");
    }
}
