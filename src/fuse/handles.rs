//! Open file and directory handles, and how the kernel reaches a file's
//! data: through the daemon, or passed through to the layer file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an open that conflicts with passthrough handles waits for
/// releases already on their way. Only a real conflict waits it out; a
/// loaded machine can take well over 200 ms to deliver a RELEASE.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

use fuser::{FileHandle, FopenFlags};

use super::passthrough::Decision;
use super::UnionFs;
use crate::union::{DirEntry, OpenDir, OpenFile};

/// An open file handle.
pub(super) struct Handle {
    pub(super) file: Arc<OpenFile>,
    /// Counted in `backings` (passthrough in use for this mount).
    pub(super) counted: bool,
}

impl UnionFs {
    /// Registers an open handle and decides how the kernel reaches its
    /// data. `register` makes a backing id for the file when needed.
    pub(super) fn add_handle(
        &self,
        file: OpenFile,
        register: impl FnOnce(&OpenFile) -> std::io::Result<fuser::BackingId>,
    ) -> Result<(u64, Option<Arc<fuser::BackingId>>), fuser::Errno> {
        let fh = self.fh();
        if !self.passthrough.load(Ordering::Relaxed) {
            self.files.insert(
                fh,
                Handle {
                    file: Arc::new(file),
                    counted: false,
                },
            );
            return Ok((fh, None));
        }
        let node = file.node().id;
        // close() returns before the kernel's RELEASE reaches us, so a
        // conflict may be a handle already closed: give in-flight releases
        // a moment before calling the file busy.
        let start = Instant::now();
        let mut register = Some(register);
        let backing = loop {
            let mut make = || match register.take() {
                Some(r) => r(&file),
                None => Err(std::io::Error::other("backing file registered twice")),
            };
            match self.backings.acquire(node, file.in_upper(), &mut make) {
                Decision::Passthrough(id) => break Some(id),
                Decision::Cached => break None,
                Decision::Conflict if start.elapsed() < RELEASE_GRACE => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Decision::Conflict => return Err(fuser::Errno::ETXTBSY),
            }
        };
        self.files.insert(
            fh,
            Handle {
                file: Arc::new(file),
                counted: true,
            },
        );
        Ok((fh, backing))
    }

    pub(super) fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, fuser::Errno> {
        self.files
            .get(&fh.0)
            .map(|h| h.file.clone())
            .ok_or(fuser::Errno::EBADF)
    }

    /// An open directory and its listing for a read at `offset`.
    pub(super) fn listing(
        &self,
        fh: FileHandle,
        offset: u64,
    ) -> Result<(Arc<OpenDir>, Arc<Vec<DirEntry>>), fuser::Errno> {
        let dir = self.dir(fh)?;
        let entries = self
            .union
            .readdir(&dir, offset)
            .map_err(super::convert::errno)?;
        Ok((dir, entries))
    }

    pub(super) fn dir(&self, fh: FileHandle) -> Result<Arc<OpenDir>, fuser::Errno> {
        self.dirs
            .get(&fh.0)
            .map(|d| d.clone())
            .ok_or(fuser::Errno::EBADF)
    }

    pub(super) fn cache_flags(&self, file: &OpenFile) -> FopenFlags {
        // Lower files never change under us: keep their cached pages.
        if !file.is_writable() && !file.node().state().upper {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }
}
