//! The layer store: layers (content-addressed by diff ID), images (ordered
//! layer chains plus OCI config) and containers (a writable layer on an
//! image), kept under one root directory.
//!
//! ```text
//! <root>/store.lock                  flock: shared for readers, exclusive for writers
//! <root>/layers/<diffid-hex>/diff    unpacked content (immutable once here)
//! <root>/layers/<diffid-hex>/layer.json
//! <root>/images/<config-hex>/{image.json,config.json,manifest.json}
//! <root>/containers/<name>/{container.json,upper,work,merged}
//! <root>/index/                      the layers' metadata index (RocksDB)
//! <root>/tmp/<staging>/              imports and removals in progress
//! ```
//!
//! Invariants, enforced here:
//! - Everything under `layers/`, `images/` and `containers/` is complete:
//!   new entries are built in `tmp/` and renamed into place under the
//!   exclusive lock; removals rename out to `tmp/` first. A failed or
//!   killed command therefore leaves only a staging dir, which the next
//!   writer removes (each live staging dir is flock'ed by its owner).
//! - Metadata files are replaced atomically (temp, fsync, rename, fsync of
//!   the directory).
//! - Lock order: the store lock, then the index's own lock. Nothing holds
//!   the store lock while a mount daemon forks (it would inherit it).

pub mod changes;
mod container;
mod digest;
pub mod driver;
mod export;
mod import;
mod lock;
mod meta;
mod plan;
pub mod snapshots;
mod source;
pub mod tar;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use changes::{Change, ChangeKind};
pub use container::{is_live_mount, ContainerInfo, LayerInfo};
pub use digest::Digest;
pub use export::{ExportReport, ExportedBlob};
pub use import::{
    check_image_name, ImportOptions, ImportReport, ImportedImage, ImportedLayer, Progress,
};
pub use lock::StoreLock;
pub use meta::{ContainerRecord, ImageRecord, LayerRecord};

use crate::layer::Dir;

/// Why a store operation failed. Every message names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Mount(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Not root: layers are unpacked with `.wh.`-free user-xattr whiteouts
    /// and owners in the override_stat xattr.
    rootless: bool,
}

/// Where the store lives unless `--root` says otherwise.
pub fn default_root() -> PathBuf {
    if crate::userns::privileged() {
        return PathBuf::from("/var/lib/layerfs");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/layerfs-{}", crate::userns::host_euid())));
    data.join("layerfs")
}

const SUBDIRS: [&str; 4] = ["layers", "images", "containers", "tmp"];

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes staging
    /// dirs that no live process owns.
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        let root = root.canonicalize().map_err(|e| io_err(root, e))?;
        for d in SUBDIRS {
            let p = root.join(d);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&p, e)),
            }
        }
        let store = Store {
            root,
            // Root in a user namespace can neither chown to arbitrary ids
            // nor write trusted.* xattrs: rootless too.
            rootless: !crate::userns::privileged(),
        };
        store.remove_stale_staging()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_rootless(&self) -> bool {
        self.rootless
    }

    /// Where the layers' metadata index lives.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Drops the index records of layers that are gone from the store and
    /// of the stacks that merged them, in the store's indexes (its own and
    /// the one of mounts made from a user namespace); returns how many
    /// indexes went. The index is an optimisation, so a problem with it
    /// is logged, never fails the caller. Callers hold the store lock, so
    /// this does not wait behind a build (a first mount of a large stack
    /// can take minutes): a busy index is left for the next cleanup.
    pub(crate) fn collect_index(&self) -> usize {
        use crate::index::{Index, IndexError};
        let mut dropped = 0;
        for dir in [self.index_dir(), self.root.join("index-userns")] {
            if !dir.join("CURRENT").exists() {
                continue;
            }
            let r = Index::open_for_write(&dir, std::time::Duration::from_secs(1))
                .and_then(|ix| ix.gc(false));
            match r {
                Ok(r) => dropped += r.layers_dropped.len() + r.stacks_dropped,
                Err(IndexError::Locked { .. }) => {
                    tracing::info!(index = %dir.display(), "index busy building; collecting it next time");
                }
                Err(e) => {
                    tracing::warn!(index = %dir.display(), error = %e, "cannot collect the index")
                }
            }
        }
        dropped
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The content directory of layer `diff_id`.
    pub fn layer_diff(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex()).join("diff")
    }

    /// Readers: any number at once, never beside a writer.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        StoreLock::acquire(&self.root.join("store.lock"), false)
    }

    /// Writers: one at a time.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        StoreLock::acquire(&self.root.join("store.lock"), true)
    }

    /// A new staging dir in `tmp/`, locked for as long as it lives. It is
    /// made under a shared store lock: between its mkdir and its flock it
    /// looks abandoned, and only a holder of the exclusive lock removes
    /// abandoned ones.
    pub(crate) fn staging(&self, what: &str) -> Result<lock::Staging> {
        let _l = self.lock_shared()?;
        lock::Staging::create(&self.tmp_dir(), what)
    }

    /// [`Store::staging`] for a caller that holds the store lock already.
    pub(crate) fn staging_locked(&self, what: &str) -> Result<lock::Staging> {
        lock::Staging::create(&self.tmp_dir(), what)
    }

    fn remove_stale_staging(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        let entries = std::fs::read_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut stale = Vec::new();
        for e in entries {
            let e = e.map_err(|e| io_err(&tmp, e))?;
            stale.push(e.file_name());
        }
        if stale.is_empty() {
            return Ok(());
        }
        let _guard = self.lock_exclusive()?;
        for name in stale {
            let p = tmp.join(&name);
            if lock::Staging::try_claim(&p).map_err(|e| io_err(&p, e))? {
                tracing::info!(path = %p.display(), "removing a leftover staging dir");
                remove_path_tree(&tmp, &name).map_err(|e| io_err(&p, e))?;
            }
        }
        Ok(())
    }

    /// Moves `path` (a direct child of a store dir) out of sight into
    /// `tmp/`, then removes it: a crash half-way leaves a staging dir, not a
    /// half-removed layer or container.
    pub(crate) fn remove_dir_safely(&self, path: &Path) -> Result<()> {
        // Callers hold the exclusive lock.
        let staging = self.staging_locked("rm")?;
        let target = staging.path().join("victim");
        std::fs::rename(path, &target).map_err(|e| io_err(path, e))?;
        meta::fsync_dir(path.parent().unwrap_or(&self.root))?;
        drop(staging);
        Ok(())
    }
}

/// Removes `name` in `parent` with everything below it, without following
/// symlinks (layer contents may hold anything).
pub(crate) fn remove_path_tree(parent: &Path, name: &std::ffi::OsStr) -> io::Result<()> {
    let dir = crate::layer::Layer::open(parent)?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    remove_in(dir.root(), &c)
}

fn remove_in(dir: &Dir, name: &std::ffi::CStr) -> io::Result<()> {
    crate::union::remove_tree(dir, name).map_err(io::Error::from)
}

/// Checks a container name: it becomes a directory name.
pub fn check_container_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "container name {name:?}: use 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` as an RFC 3339 UTC time (what OCI configs use).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn container_names() {
        assert!(check_container_name("web-1.a_b").is_ok());
        for bad in ["", ".x", "-x", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_container_name(bad).is_err(), "{bad}");
        }
    }
}
