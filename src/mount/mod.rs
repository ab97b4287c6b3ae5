//! Mounting a union: checking what we were given, then serving it.
//!
//! [`prepare`] validates every input and opens the layers without writing
//! anything; only when all of it is sound does [`daemon::serve`] touch the
//! work directory and mount. A bad input therefore leaves every layer
//! exactly as it was.

pub mod daemon;
pub mod indexing;
pub mod options;
pub mod record;
mod status;
pub mod table;
mod umount;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

pub use options::Options;
pub use status::{query_status, Status};
pub use umount::umount;

use crate::layer::whiteout::XattrNs;
use crate::layer::{Dir, Layer};
use crate::union::MAX_LAYERS;

/// Why a mount could not be made. Every message names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Option(String),
    #[error("{what} {path}: {reason}")]
    Path {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Layout(String),
    #[error("mount failed: {0}")]
    Mount(String),
}

impl MountError {
    fn path(what: &'static str, path: &Path, reason: impl ToString) -> MountError {
        MountError::Path {
            what,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Everything needed to mount one union.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    pub options: Options,
    pub mountpoint: PathBuf,
}

/// A validated mount: layers open, nothing written yet.
#[derive(Debug)]
pub struct Prepared {
    pub spec: MountSpec,
    pub mountpoint: PathBuf,
    pub lowers: Vec<Layer>,
    pub upper: Option<(Layer, Dir)>,
    pub xattr_ns: XattrNs,
    pub timeout: Duration,
    pub threads: usize,
    /// The lower stack's merged index, once [`indexing::prepare`] made it.
    pub index: Option<indexing::IndexPlan>,
}

fn open_dir_checked(what: &'static str, path: &Path) -> Result<Layer, MountError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => "does not exist".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        MountError::path(what, path, reason)
    })?;
    if !meta.is_dir() {
        return Err(MountError::path(what, path, "is not a directory"));
    }
    // Absolute: the daemon changes directory, and the indexer is handed
    // layers by path.
    let abs = path
        .canonicalize()
        .map_err(|e| MountError::path(what, path, e))?;
    let layer = Layer::open(&abs).map_err(|e| MountError::path(what, path, e))?;
    // Readable: list it once.
    layer
        .root()
        .entries()
        .map_err(|e| MountError::path(what, path, format!("cannot be read: {e}")))?;
    Ok(layer)
}

fn is_mount_root(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid path and out pointer.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            stx.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded.
    let stx = unsafe { stx.assume_init() };
    const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
    Ok(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT != 0
        && stx.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0)
}

/// Whether `inner` is `outer` or lies below it (both canonical).
fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

fn canonical(what: &'static str, p: &Path) -> Result<PathBuf, MountError> {
    p.canonicalize().map_err(|e| MountError::path(what, p, e))
}

/// Checks a mount request and opens its layers. Writes nothing.
pub fn prepare(spec: MountSpec) -> Result<Prepared, MountError> {
    let o = &spec.options;
    if o.lowers.is_empty() {
        return Err(MountError::Option(
            "no lower layer given (lowerdir= or --lower)".into(),
        ));
    }
    if o.lowers.len() > MAX_LAYERS {
        return Err(MountError::Option(format!(
            "{} lower layers given; at most {MAX_LAYERS} are supported",
            o.lowers.len()
        )));
    }
    let lowers = o
        .lowers
        .iter()
        .map(|p| open_dir_checked("lower layer", p))
        .collect::<Result<Vec<_>, _>>()?;

    let upper = match (&o.upper, &o.work, o.read_only) {
        (None, None, _) | (Some(_), Some(_), true) => None,
        (Some(_), None, false) => {
            return Err(MountError::Option(
                "an upper layer needs a work directory (workdir= or --work)".into(),
            ))
        }
        (None, Some(_), false) => {
            return Err(MountError::Option(
                "a work directory was given without an upper layer (upperdir= or --upper)".into(),
            ))
        }
        (Some(_), None, true) | (None, Some(_), true) => None,
        (Some(up), Some(work), false) => Some(check_upper(up, work)?),
    };

    let mp = &spec.mountpoint;
    let meta = std::fs::metadata(mp).map_err(|e| {
        MountError::path(
            "mountpoint",
            mp,
            if e.kind() == io::ErrorKind::NotFound {
                "does not exist".to_string()
            } else {
                e.to_string()
            },
        )
    })?;
    if !meta.is_dir() {
        return Err(MountError::path("mountpoint", mp, "is not a directory"));
    }
    let mountpoint = canonical("mountpoint", mp)?;
    if is_mount_root(&mountpoint).map_err(|e| MountError::path("mountpoint", mp, e))? {
        return Err(MountError::path(
            "mountpoint",
            mp,
            "is already a mount point (unmount it first)",
        ));
    }

    let xattr_ns = if o.userxattr || !may_use_trusted_xattrs() {
        XattrNs::User
    } else {
        XattrNs::Trusted
    };
    let threads = o.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 16)
    });
    Ok(Prepared {
        timeout: o.timeout.unwrap_or(Duration::from_secs(1)),
        threads,
        spec: spec.clone(),
        mountpoint,
        lowers,
        upper,
        xattr_ns,
        index: None,
    })
}

/// Checks the upper and work directories and opens them: both must exist,
/// be writable, sit on one filesystem, and neither may contain the other.
fn check_upper(up: &Path, work: &Path) -> Result<(Layer, Dir), MountError> {
    let upper = open_dir_checked("upper layer", up)?;
    let workdir = open_dir_checked("work directory", work)?;
    for (what, p) in [("upper layer", up), ("work directory", work)] {
        nix::unistd::access(p, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| MountError::path(what, p, format!("is not writable: {e}")))?;
    }
    if upper.dev() != workdir.dev() {
        return Err(MountError::Layout(format!(
            "upper layer {} and work directory {} are on different filesystems; they must be on the same one",
            up.display(),
            work.display()
        )));
    }
    let (cu, cw) = (
        canonical("upper layer", up)?,
        canonical("work directory", work)?,
    );
    if cu == cw {
        return Err(MountError::Layout(format!(
            "upper layer and work directory are the same directory ({})",
            cu.display()
        )));
    }
    if is_within(&cw, &cu) {
        return Err(MountError::Layout(format!(
            "work directory {} is inside the upper layer {}; they must be separate trees",
            cw.display(),
            cu.display()
        )));
    }
    if is_within(&cu, &cw) {
        return Err(MountError::Layout(format!(
            "upper layer {} is inside the work directory {}; they must be separate trees",
            cu.display(),
            cw.display()
        )));
    }
    let work_dir = workdir
        .root()
        .try_clone()
        .map_err(|e| MountError::path("work directory", work, e))?;
    Ok((upper, work_dir))
}

/// trusted.* xattrs need CAP_SYS_ADMIN in the initial user namespace;
/// without it (rootless, in a user namespace) overlay metadata goes to
/// user.*, as kernel overlayfs does with `userxattr`.
fn may_use_trusted_xattrs() -> bool {
    crate::userns::privileged()
}

/// Whether we run in the initial user namespace.
pub fn in_initial_user_ns() -> bool {
    crate::userns::in_initial_user_ns()
}

/// How long a mount waits for the daemon of an earlier mount of the same
/// upper layer to exit. umount(2) returns once the kernel has detached the
/// mount, while its daemon is still shutting down; an engine that unmounts
/// and mounts again at once (containerd does, around reading a rootfs's
/// /etc/group) must not be refused for that.
const WORKDIR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn lock_workdir(fd: &OwnedFd, path: &Path) -> Result<(), MountError> {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let reason = match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if start.elapsed() < WORKDIR_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            Some(libc::EWOULDBLOCK) => format!(
                "is in use by another mount (still, after {} s)",
                WORKDIR_WAIT.as_secs()
            ),
            _ => format!("cannot be locked: {e}"),
        };
        return Err(MountError::path("work directory", path, reason));
    }
}

/// Takes the work directory for this mount: an exclusive lock (a second
/// daemon on the same upper layer is refused), an empty `work/`
/// subdirectory, the scratch space of copy-ups, and `layerfs-index/`, the
/// copied-up lower hard links (kept across mounts). Leftovers of a crash
/// are removed here, before anything can see them.
pub fn claim_workdir(work: &Dir, path: &Path) -> Result<(OwnedFd, Dir, Dir), MountError> {
    let lock = work
        .try_clone()
        .map_err(|e| MountError::path("work directory", path, e))?;
    let fd: OwnedFd = lock.into_fd();
    lock_workdir(&fd, path)?;
    let scratch = c"work";
    match work.stat(scratch) {
        Ok(Some(st)) if st.is_dir() => {
            let sub = work
                .open_subdir(scratch)
                .map_err(|e| MountError::path("work directory", path, e))?;
            for e in sub
                .entries()
                .map_err(|e| MountError::path("work directory", path, e))?
            {
                crate::union::remove_tree(&sub, &e.name).map_err(|err| {
                    MountError::path(
                        "work directory",
                        path,
                        format!("cannot remove leftover {:?}: {err}", e.name),
                    )
                })?;
            }
        }
        Ok(Some(_)) => {
            return Err(MountError::path(
                "work directory",
                path,
                "has a 'work' entry that is not a directory",
            ))
        }
        Ok(None) => work
            .mkdir(scratch, 0o700)
            .map_err(|e| MountError::path("work directory", path, e))?,
        Err(e) => return Err(MountError::path("work directory", path, e)),
    }
    let sub = work
        .open_subdir(scratch)
        .map_err(|e| MountError::path("work directory", path, e))?;
    let index = c"layerfs-index";
    match work.mkdir(index, 0o700) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(MountError::path("work directory", path, e)),
    }
    let index = work
        .open_subdir(index)
        .map_err(|e| MountError::path("work directory", path, e))?;
    Ok((fd, sub, index))
}

impl From<Errno> for MountError {
    fn from(e: Errno) -> Self {
        MountError::Mount(e.desc().to_string())
    }
}
