//! A bounded cache of open directory fds, keyed by (node, layer).
//!
//! Resolving a name needs the directory that holds it in each layer. Opening
//! it from the layer root every time would cost a full path walk per layer
//! per request; keeping one fd per directory forever would run into the open
//! file limit on a large tree. So fds are cached with LRU eviction.
//!
//! An fd names the directory itself, not its path: a cached entry stays
//! right when the directory is renamed, and is dropped when it is removed.
//! Along with the fd, each entry remembers what one scan of the directory
//! told us: which names have a `.wh.` whiteout in this layer, and whether
//! the directory may contain xattr whiteouts.

use std::collections::HashSet;
use std::ffi::CStr;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

use super::node::{Loc, NodeId};
use crate::layer::sys::SysResult;
use crate::layer::whiteout::{self, DirMarks};
use crate::layer::Dir;

const SHARDS: usize = 16;

/// An open layer directory plus what we learnt by scanning it once.
#[derive(Debug)]
pub struct CachedDir {
    pub dir: Dir,
    scan: OnceLock<DirScan>,
    /// Marked impure by us since the scan.
    impure: AtomicBool,
}

/// Facts about one layer directory that cost a full scan to learn.
#[derive(Debug, Default)]
pub struct DirScan {
    /// Targets of `.wh.<name>` entries.
    pub wh_names: HashSet<Box<[u8]>>,
    /// Marks on the directory itself.
    pub marks: DirMarks,
}

impl CachedDir {
    pub fn new(dir: Dir) -> CachedDir {
        CachedDir {
            dir,
            scan: OnceLock::new(),
            impure: AtomicBool::new(false),
        }
    }

    /// The scan, done on first use.
    pub fn scan(&self) -> SysResult<&DirScan> {
        if let Some(s) = self.scan.get() {
            return Ok(s);
        }
        let mut scan = DirScan {
            marks: whiteout::dir_marks(&self.dir, c"")?,
            ..DirScan::default()
        };
        for e in self.dir.entries()? {
            if let Some(t) = whiteout::whiteout_target(e.name.to_bytes()) {
                scan.wh_names.insert(t.into());
            }
        }
        Ok(self.scan.get_or_init(|| scan))
    }

    /// Whether the directory holds entries with borrowed inode numbers.
    pub fn is_impure(&self) -> bool {
        self.impure.load(Ordering::Relaxed) || self.scan().is_ok_and(|s| s.marks.impure)
    }

    pub fn set_impure(&self) {
        self.impure.store(true, Ordering::Relaxed);
    }

    /// Whether a `.wh.<name>` whiteout exists in this directory.
    pub fn has_wh_file(&self, name: &CStr) -> SysResult<bool> {
        Ok(self.scan()?.wh_names.contains(name.to_bytes()))
    }
}

type Key = (NodeId, Loc);

#[derive(Debug)]
pub struct DirCache {
    shards: Vec<Mutex<LruCache<Key, Arc<CachedDir>>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl DirCache {
    pub fn new(capacity: usize) -> DirCache {
        let per = NonZeroUsize::new((capacity / SHARDS).max(4)).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<LruCache<Key, Arc<CachedDir>>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn get(&self, node: NodeId, loc: Loc) -> Option<Arc<CachedDir>> {
        let key = (node, loc);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(&key).cloned()
    }

    pub fn insert(&self, node: NodeId, loc: Loc, dir: Arc<CachedDir>) {
        let key = (node, loc);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        shard.put(key, dir);
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn remove(&self, node: NodeId, loc: Loc) {
        let key = (node, loc);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        shard.pop(&key);
    }
}
