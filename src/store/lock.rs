//! The store lock and staging directories.
//!
//! The store lock is an flock on `<root>/store.lock`: shared while reading
//! metadata, exclusive while changing it. Long work (unpacking a layer)
//! happens in a staging dir without the store lock; only the final renames
//! take it. A staging dir is flock'ed by the process that owns it, so a
//! writer can tell a live one from the leftover of a crash.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{io_err, Result};

/// A held store lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl StoreLock {
    pub(crate) fn acquire(path: &Path, exclusive: bool) -> Result<StoreLock> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .or_else(|e| {
                // A read-only store (or a reader without write access):
                // shared locks work on a read-only descriptor too.
                if exclusive {
                    Err(e)
                } else {
                    File::open(path)
                }
            })
            .map_err(|e| io_err(path, format!("cannot open the store lock: {e}")))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        flock(&file, op).map_err(|e| io_err(path, format!("cannot lock the store: {e}")))?;
        Ok(StoreLock { _file: file })
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory in `<root>/tmp`, locked by this process and removed with
/// everything left in it when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    _lock: File,
}

impl Staging {
    pub(crate) fn create(tmp: &Path, what: &str) -> Result<Staging> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = tmp.join(format!(
            "{what}-{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        let lock = File::open(&path).map_err(|e| io_err(&path, e))?;
        // Nobody else knows this name yet, so this cannot block.
        flock(&lock, libc::LOCK_EX).map_err(|e| io_err(&path, e))?;
        Ok(Staging { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the staging dir at `path` is abandoned (its owner is gone);
    /// if so, the caller may remove it.
    pub(crate) fn try_claim(path: &Path) -> io::Result<bool> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        if let Err(e) = super::remove_path_tree(parent, name) {
            tracing::warn!(path = %self.path.display(), "cannot remove staging dir: {e}");
        }
    }
}
