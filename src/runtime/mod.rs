//! The minimal container runtime: `unionctl run`, `exec`, `kill`, `state`.
//!
//! The order is DESIGN.md §6: mount the union as the rootfs (its FUSE
//! daemon in its own process), create the cgroup, clone into new
//! namespaces, build the container's mounts and pivot_root in the child,
//! drop privileges, exec; the supervisor forwards signals, waits, and tears
//! everything down in reverse.
//!
//! - [`bundle`]: `--bundle DIR`, an OCI runtime bundle's config.json;
//! - [`spec`]: what to run, and parsing of limits, volumes, users, signals;
//! - [`image`]: defaults from an image's OCI config;
//! - [`cgroup`]: per-container cgroups, v1 controllers or v2;
//! - [`init`]: the child's side, from the new namespaces to `execve`;
//! - [`caps`]: capability bounding/dropping and no_new_privs;
//! - [`state`]: runtime records (`<runtime dir>/containers/NAME/state.json`);
//! - [`supervise`]: the `run` supervisor and its teardown;
//! - [`join`]: `exec` and `kill` on a running container;
//! - [`rootless`]: an unprivileged caller's user namespace and id maps.
//!
//! Rootless (any caller but host root): the supervisor first enters a user
//! namespace of its own (container root = the caller, 1..N = the caller's
//! subuid/subgid range via newuidmap/newgidmap, or only the caller's ids
//! with a warning when it has no range) and a mount namespace it owns; the
//! union is mounted there, owners kept in `user.containers.override_stat`.
//! Records live under `$XDG_RUNTIME_DIR/layerfs`. Limits need a cgroup
//! the host delegates to the user: asked for without one, `run` warns,
//! naming the limits not applied, and runs without them; not asked for, no
//! cgroup is made.
//! `exec` joins the container's user namespace first, then the others.

pub mod bundle;
pub mod caps;
pub mod cgroup;
pub mod image;
mod init;
pub mod join;
pub mod rootless;
pub mod spec;
pub mod state;
pub mod supervise;
mod sys;

use std::path::{Path, PathBuf};

pub use spec::{Limits, NetworkMode, RootfsSource, RunSpec, User, Volume};
pub use supervise::run;

/// Why a container could not be run, joined or signalled. Every message
/// names the step or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad argument (limit syntax, volume, user, signal).
    #[error("{0}")]
    Invalid(String),
    /// A file or directory the runtime needed.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// A setup step (cgroup, namespaces, mounts) failed.
    #[error("{step}: {reason}")]
    Setup { step: String, reason: String },
    /// The container's init reported a failure before exec; `code` is the
    /// exit status to report (127: command not found, 126: not executable).
    #[error("{message}")]
    Start { code: i32, message: String },
    #[error("container {0:?} is not running")]
    NotRunning(String),
    #[error("container {0:?} is already running")]
    Running(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Mount(#[from] crate::mount::MountError),
}

pub type Result<T> = std::result::Result<T, RunError>;

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub(crate) fn setup_err(step: impl Into<String>, e: impl std::fmt::Display) -> RunError {
    RunError::Setup {
        step: step.into(),
        reason: e.to_string(),
    }
}
