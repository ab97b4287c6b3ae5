//! Test harness: scratch layer sets, mounts (layerfs through either command
//! line, or kernel overlayfs as the reference), and tree snapshots to
//! compare them.
//!
//! These tests need root and a usable /dev/fuse. They fail, loudly, when
//! either is missing: a union filesystem test that skips proves nothing.

#![allow(dead_code)]

pub mod layers;
pub mod sys;
pub mod tree;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use layers::{
    get_xattr, list_xattrs, remove_xattr, try_set_xattr, LayerBuilder, OpaqueForm, WhiteoutForm,
};
pub use tree::{assert_same, snapshot, Snapshot, View};

/// The OCI fixture in `../shared` (5 gzip layers built by podman; see its
/// README), or `LAYERFS_OCI_FIXTURE`. Read only: tests copy it before
/// changing anything.
pub fn fixture() -> PathBuf {
    let p = std::env::var_os("LAYERFS_OCI_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/oci-multilayer")
        });
    assert!(
        p.join("index.json").is_file(),
        "the OCI fixture is missing at {p:?} (set LAYERFS_OCI_FIXTURE)"
    );
    p
}

/// Path of a binary built by this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "unionctl" => PathBuf::from(env!("CARGO_BIN_EXE_unionctl")),
        "layerfs" => PathBuf::from(env!("CARGO_BIN_EXE_layerfs")),
        _ => panic!("unknown binary {name}"),
    }
}

static CHECKED: Once = Once::new();

/// Panics unless we are root with a working /dev/fuse and overlayfs.
pub fn require_environment() {
    CHECKED.call_once(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "fuse-tests must run as root (they mount FUSE and overlayfs); run them with sudo or in CI"
        );
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse");
        assert!(
            f.is_ok(),
            "/dev/fuse cannot be opened ({:?}); load the fuse module and check its permissions",
            f.err()
        );
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        assert!(
            fs.contains("overlay"),
            "kernel overlayfs is not available (modprobe overlay); the reference tests need it"
        );
    });
}

/// Where every test's scratch dirs live: `$LAYERFS_TEST_TMP`, or
/// /var/tmp/layerfs-tests.
///
/// Made a shared mount, once per process, as `/` is on a systemd host
/// (here it is private). A rootless container's supervisor lives in a
/// mount namespace of its own that copies every mount existing when it
/// starts; with private propagation an unmount by another test leaves that
/// copy, and the union's daemon, alive until the container ends, and the
/// unmount fails waiting for the daemon. Shared, the unmount reaches the
/// copy too.
pub fn test_base() -> PathBuf {
    static SHARED: Once = Once::new();
    let base = std::env::var_os("LAYERFS_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/layerfs-tests"));
    std::fs::create_dir_all(&base).expect("create test base dir");
    SHARED.call_once(|| {
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&base)
            .status()
            .expect("mountpoint")
            .success();
        let mount = |args: &[&str]| {
            let out = run(Command::new("mount").args(args).arg(&base));
            assert!(
                out.status.success(),
                "mount {args:?} {base:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if !mounted {
            mount(&["--bind", base.to_str().expect("UTF-8 test base")]);
        }
        mount(&["--make-rshared"]);
    });
    base
}

/// A scratch directory removed (after unmounting anything below) on drop.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        require_environment();
        let root = test_base().join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create scratch dir");
        Scratch { root }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).expect("create dir");
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Scratch {
    fn drop(&mut self) {
        // Unmount anything still mounted below the scratch dir, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.root))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let c = CString::new(m).unwrap_or_default();
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// How a union is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `unionctl mount --lower … --upper … --work … MNT`
    Unionctl,
    /// `layerfs -o lowerdir=…,upperdir=…,workdir=… MNT` (mount_program form)
    Compat,
    /// Kernel overlayfs, the reference.
    Kernel,
}

/// A mounted union; unmounted on drop.
pub struct Mounted {
    pub via: Via,
    pub mnt: PathBuf,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    live: bool,
}

/// Joins layer paths for `lowerdir=`, escaping colons.
pub fn lowerdir(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| {
            p.to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect::<Vec<_>>()
        .join(":")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Mounts a union; panics with the command's stderr on failure.
pub fn mount(
    via: Via,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    mnt: &Path,
    extra: &[&str],
) -> Mounted {
    let out = try_mount(via, lowers, upper, mnt, extra);
    assert!(
        out.status.success(),
        "{via:?} mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mountpoint(mnt),
        "{via:?}: mount reported success but {mnt:?} is not mounted"
    );
    Mounted {
        via,
        mnt: mnt.to_path_buf(),
        upper: upper.map(|(u, _)| u.to_path_buf()),
        work: upper.map(|(_, w)| w.to_path_buf()),
        live: true,
    }
}

/// Runs the mount command and returns its output, whatever it is.
pub fn try_mount(
    via: Via,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    mnt: &Path,
    extra: &[&str],
) -> Output {
    match via {
        Via::Unionctl => {
            let mut c = Command::new(bin("unionctl"));
            c.arg("mount");
            for l in lowers {
                c.arg("--lower").arg(l);
            }
            if let Some((u, w)) = upper {
                c.arg("--upper").arg(u).arg("--work").arg(w);
            }
            for e in extra {
                c.arg("-o").arg(e);
            }
            run(c.arg(mnt))
        }
        Via::Compat => {
            let mut opts = format!("lowerdir={}", lowerdir(lowers));
            if let Some((u, w)) = upper {
                opts.push_str(&format!(
                    ",upperdir={},workdir={}",
                    u.display(),
                    w.display()
                ));
            }
            for e in extra {
                opts.push(',');
                opts.push_str(e);
            }
            run(Command::new(bin("layerfs")).arg("-o").arg(opts).arg(mnt))
        }
        Via::Kernel => {
            let mut opts = format!("lowerdir={}", lowerdir(lowers));
            if let Some((u, w)) = upper {
                opts.push_str(&format!(
                    ",upperdir={},workdir={}",
                    u.display(),
                    w.display()
                ));
            }
            // The semantics layerfs implements today: directory renames
            // with redirects, metadata-only copy-up, no hard-link index.
            opts.push_str(",redirect_dir=on,index=off,metacopy=on");
            for e in extra {
                opts.push(',');
                opts.push_str(e);
            }
            run(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(opts)
                .arg(mnt))
        }
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| Path::new(&m.replace("\\040", " ")) == want)
}

impl Mounted {
    /// Unmounts and waits until the daemon is gone.
    pub fn unmount(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
        let umount = || match self.via {
            Via::Kernel => run(Command::new("umount").arg(&self.mnt)),
            _ => run(Command::new(bin("unionctl")).arg("umount").arg(&self.mnt)),
        };
        // EBUSY can be transient when tests run in parallel (kernel and FUSE
        // mounts alike, gone 10 ms later with no process holding the mount):
        // most likely a child another thread is spawning still holds copies
        // of this thread's fds until it execs. Retry before calling it a failure.
        let mut out = umount();
        let start = Instant::now();
        while !out.status.success()
            && is_mountpoint(&self.mnt)
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(20));
            out = umount();
        }
        assert!(
            out.status.success(),
            "unmount of {:?} failed: {}",
            self.mnt,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !is_mountpoint(&self.mnt),
            "{:?} still mounted after unmount",
            self.mnt
        );
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Lazily detaches a mount whose daemon is gone (killed), so the
    /// mountpoint can be used again; the mount counts as unmounted after.
    pub fn detach(&mut self) {
        self.live = false;
        let out = run(Command::new("umount").arg("-l").arg(&self.mnt));
        assert!(
            out.status.success(),
            "umount -l {:?}: {}",
            self.mnt,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// For a test that unmounted by itself: nothing is left to undo.
    pub fn unmounted_elsewhere(&mut self) {
        self.live = false;
    }

    /// The daemon's pid (layerfs mounts only).
    pub fn daemon_pid(&self) -> Option<i32> {
        daemon_pid_for(&self.mnt)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            let c = CString::new(self.mnt.as_os_str().as_bytes()).unwrap_or_default();
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Finds the daemon serving a mountpoint through its runtime record.
pub fn daemon_pid_for(mnt: &Path) -> Option<i32> {
    let mnt = mnt.canonicalize().ok()?;
    let dir = Path::new("/run/layerfs/mounts");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        // Other files may share the directory (status files, records being
        // written): skip whatever is not a "PID\nMOUNTPOINT" record.
        let body = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut lines = body.lines();
        let Some(Ok(pid)) = lines.next().map(str::parse::<i32>) else {
            continue;
        };
        if lines.next() == Some(mnt.to_str()?) {
            return Some(pid);
        }
    }
    None
}

/// Waits for `cond`, up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The errno of a failed std::io call.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// `echo 3 > /proc/sys/vm/drop_caches`: makes the kernel forget inodes.
/// Waits while a test (of any test process) holds the caches steady
/// ([`hold_caches`]).
pub fn drop_caches() {
    let _shared = caches_lock(libc::LOCK_SH);
    drop_caches_now();
}

fn drop_caches_now() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
}

/// A lock on a file beside the scratch dirs, shared by every test process
/// on the machine: dropping caches takes it shared, holding them steady
/// takes it exclusive.
fn caches_lock(how: libc::c_int) -> std::fs::File {
    let f = std::fs::File::create(test_base().join(".drop_caches.lock")).expect("caches lock file");
    // SAFETY: flock on an open fd; released when the file is closed.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), how) };
    assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
    f
}

/// While alive, no test (of this or another test process) drops the
/// kernel's caches: for measurements that depend on what it remembers.
pub struct CachesHeld(std::fs::File);

pub fn hold_caches() -> CachesHeld {
    CachesHeld(caches_lock(libc::LOCK_EX))
}

impl CachesHeld {
    /// Drops the caches; only the holder may.
    pub fn drop_caches(&self) {
        drop_caches_now();
    }
}

/// Whether a process has exited (gone, or a zombie waiting for its reaper).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|s| s == "Z" || s == "X"),
        Err(_) => true,
    }
}

/// A path as a C string.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The names in a directory, sorted.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Runs `argv` as user nobody (group nogroup, no supplementary groups).
pub fn as_nobody(argv: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(argv))
}

/// The `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}
