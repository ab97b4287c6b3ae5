//! The metadata index: what each immutable lower layer contains, and what
//! a whole lower stack resolves to, in RocksDB.
//!
//! - Each layer is indexed once (`L` records), keyed by its identity, so a
//!   layer shared by many stacks and mounts is walked once.
//! - Each stack gets a merged index (`S` records) built from its layers'
//!   records, not from the disk: every visible name of every merged
//!   directory with its top attributes and the layers holding it. A lookup
//!   through any number of layers is one point read; listing a merged
//!   directory is one range scan.
//!
//! Crash safety: an index is written under a meta record saying
//! "incomplete" and marked complete only after its last batch; an
//! incomplete index is rebuilt, never served.
//!
//! Sharing: builds take an exclusive lock on the database directory;
//! serving daemons open the database read-only, which any number may do at
//! once, beside a builder. Each index is flushed and compacted on its own
//! when built, so its records sit in tables of their own: a build costs
//! the size of what it indexes, never of the database, and it leaves the
//! tables readers use in place (a reader whose table did go opens the
//! database again).
//!
//! This module knows layers, not unions: it never imports the union core.

mod build;
mod gc;
mod merge;
pub mod record;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rocksdb::{BlockBasedOptions, Cache, Direction, IteratorMode, Options, ReadOptions, DB};

use crate::layer::Layer;
pub use build::{build_layer, verify_layer, Drift};
pub use gc::{Dropped, GcReport};
pub use merge::build_stack;
use record::{LayerMeta, Merged, LAYER, STACK, VERSION};

/// Why the index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {path}: {reason}")]
    Db { path: PathBuf, reason: String },
    #[error("index {path}: in use by another process that is building it; waited too long")]
    Locked { path: PathBuf },
    #[error("layer {path}: {reason}")]
    Layer { path: PathBuf, reason: String },
    #[error("index record for {what} is unreadable (re-index with `unionctl index rebuild`)")]
    Corrupt { what: String },
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// An open index database.
pub struct Index {
    /// Replaced only in a reader, when a builder deleted a table under it
    /// (see [`Index::read`]).
    db: RwLock<Arc<DB>>,
    reopens: AtomicU32,
    /// The stack a serving daemon reads.
    serving: Option<u64>,
    path: PathBuf,
    /// Held while open for writing: one builder at a time.
    _lock: Option<File>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

/// Where the index lives by default: under the store root for root, in
/// the XDG state directory otherwise.
pub fn default_dir() -> PathBuf {
    if crate::userns::privileged() {
        return PathBuf::from("/var/lib/layerfs/index");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    state.join("layerfs/index")
}

/// Table files an open index keeps open.
const MAX_OPEN_TABLES: i32 = 4096;

/// The size compaction cuts table files at.
const TABLE_SIZE: u64 = 4 << 20;

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Every table stays open once read. Indexes' keys never overlap and
    // each is compacted on its own (see `settle`), so compaction moves
    // tables instead of merging them: a store holds about one table per
    // index. A table dropped from the table cache is
    // opened again, its index read and decompressed, on the next lookup
    // that needs it. 64 open files split into RocksDB's default 64
    // cache shards leave each shard room for one table, so two hot tables
    // that hash to one shard evict each other on every lookup: with 30
    // tables, a podman test step took 6.5 minutes instead of 10 s, its
    // daemon's time nearly all in reopening tables. Few shards, room for
    // many tables; the daemon raises its open-file limit to match.
    opts.set_max_open_files(MAX_OPEN_TABLES);
    opts.set_table_cache_num_shard_bits(2);
    // Where a build's range does fall inside an existing table (one
    // written before indexes were compacted on their own), that table is
    // rewritten: small tables bound the cost.
    opts.set_target_file_size_base(TABLE_SIZE);
    // RocksDB's own log (LOG in the index directory), written by builders
    // and rolled over at each builder's open: a few, each bounded (a gc
    // of thousands of indexes wrote 26 MB into one), so that the log of
    // the build before the last is still there to read.
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(4 << 20);
    // Memory must stay small and bounded in a daemon per container.
    opts.set_write_buffer_size(8 << 20);
    opts.set_max_write_buffer_number(2);
    opts.set_max_background_jobs(2);
    let mut table = BlockBasedOptions::default();
    // Negative lookups are the common case of compilers and loaders.
    table.set_bloom_filter(10.0, false);
    // Bounded memory whatever the size of the indexed images: filters and
    // indexes live in the block cache too, not beside it, and in 4 KiB
    // partitions. Unpartitioned, a large table's filter is one block of
    // megabytes that does not fit a cache shard, so every lookup read,
    // checksummed and decompressed it again (a 500k-file stack walked 3x
    // slower with the index than without).
    table.set_partition_filters(true);
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(4096);
    table.set_block_cache(&Cache::new_lru_cache(8 << 20));
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Raises this process's soft open-file limit to its hard limit, once, so
/// that the index's open tables fit beside the daemon's other files (a
/// systemd service starts at 1024). Where it cannot, the index still works,
/// reopening tables.
fn make_room_for_tables() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit with a valid rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
                return;
            }
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                let e = std::io::Error::last_os_error();
                tracing::debug!(error = %e, soft, "cannot raise the open-file limit");
            }
        }
    });
}

/// Warns when tables hold records of several indexes: written by versions
/// that compacted the whole database, they are cut by size only, so every
/// new index whose keys fall inside one rewrites it (up to its size) when
/// settled. Nothing can cut them by index; a database with many of them
/// is best removed while no union uses it, and is rebuilt on demand.
fn warn_of_mixed_tables(db: &DB, path: &Path) {
    let mixed = mixed_tables(db);
    if mixed > 0 {
        tracing::warn!(
            index = %path.display(),
            tables = mixed,
            "tables from an older layout of the index make new builds slower; \
             remove the directory while no union uses it to start afresh"
        );
    }
}

/// How many tables hold records of more than one index.
fn mixed_tables(db: &DB) -> usize {
    let Ok(files) = db.live_files() else { return 0 };
    files
        .iter()
        .filter(|f| match (&f.start_key, &f.end_key) {
            // A table of one index ends at its last key, or at the end of
            // the range deleted when it was rebuilt.
            (Some(a), Some(b)) => {
                let index = a.get(..9).unwrap_or(a);
                !b.starts_with(index) && *b != record::prefix_end(index)
            }
            _ => false,
        })
        .count()
}

/// Opens the database read-only. A builder may delete a table between
/// RocksDB's reading of the table list and its opening of the first
/// tables, so an I/O error is tried again.
fn open_db_read_only(path: &Path) -> Result<DB> {
    make_room_for_tables();
    let mut tries = 0;
    loop {
        match DB::open_for_read_only(&options(), path, false) {
            Ok(db) => return Ok(db),
            Err(e)
                if tries < 20
                    && e.kind() == rocksdb::ErrorKind::IOError
                    && path.join("CURRENT").exists() =>
            {
                tracing::debug!(error = %e, "index changed while opening it; again");
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(db_error(path, e)),
        }
    }
}

fn db_error(path: &Path, e: impl ToString) -> IndexError {
    IndexError::Db {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Index {
    /// Opens for building: waits (up to `wait`) for another builder to
    /// finish.
    pub fn open_for_write(path: &Path, wait: std::time::Duration) -> Result<Index> {
        std::fs::create_dir_all(path).map_err(|e| db_error(path, e))?;
        let lock = File::create(path.join("layerfs.lock")).map_err(|e| db_error(path, e))?;
        let start = std::time::Instant::now();
        // SAFETY: flock on a valid fd.
        while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if start.elapsed() >= wait {
                return Err(IndexError::Locked {
                    path: path.to_path_buf(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        make_room_for_tables();
        let db = DB::open(&options(), path).map_err(|e| db_error(path, e))?;
        warn_of_mixed_tables(&db, path);
        Ok(Index {
            db: RwLock::new(Arc::new(db)),
            reopens: AtomicU32::new(0),
            serving: None,
            path: path.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// Opens for serving, beside any number of other readers and a builder.
    pub fn open_read_only(path: &Path) -> Result<Index> {
        Ok(Index {
            db: RwLock::new(Arc::new(open_db_read_only(path)?)),
            reopens: AtomicU32::new(0),
            serving: None,
            path: path.to_path_buf(),
            _lock: None,
        })
    }

    fn current(&self) -> Arc<DB> {
        Arc::clone(&self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `op`, a read, on the database. A reader sees the tables that
    /// existed when it opened the database and opens each on first use
    /// (a daemon needs only its stack's few). A builder's compaction may
    /// have deleted a table since; the records it held are then in newer
    /// tables (unless their index was dropped: see [`Self::reopen`]), so
    /// the reader opens the database again, once, and `op` runs again: it
    /// must resume where it stopped, not start over.
    fn read<T>(
        &self,
        mut op: impl FnMut(&DB) -> std::result::Result<T, rocksdb::Error>,
    ) -> Result<T> {
        let db = self.current();
        match op(&db) {
            Err(e) if self._lock.is_none() && e.kind() == rocksdb::ErrorKind::IOError => {
                tracing::debug!(error = %e, "index tables changed; opening the index again");
                let db = self.reopen(&db)?;
                op(&db).map_err(|e| db_error(&self.path, e))
            }
            r => r.map_err(|e| db_error(&self.path, e)),
        }
    }

    /// Opens the database again, unless another thread already replaced
    /// `stale`. A reader that serves a stack refuses a database where that
    /// stack is no longer complete (dropped by `gc` because its layers
    /// went, or being rebuilt): its reads then fail, as EIO to the union's
    /// callers, instead of showing an empty tree.
    fn reopen(&self, stale: &Arc<DB>) -> Result<Arc<DB>> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&db, stale) {
            let fresh = open_db_read_only(&self.path)?;
            if let Some(stack) = self.serving {
                let meta = fresh
                    .get(record::meta_key(STACK, stack))
                    .map_err(|e| db_error(&self.path, e))?;
                if !meta
                    .and_then(|v| LayerMeta::decode(&v))
                    .is_some_and(|m| m.usable())
                {
                    return Err(db_error(
                        &self.path,
                        format!("the index of stack {stack:016x} was dropped while in use"),
                    ));
                }
            }
            *db = Arc::new(fresh);
            self.reopens.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Arc::clone(&db))
    }

    /// Marks this reader as serving `stack` (see [`Self::reopen`]).
    pub fn serving(mut self, stack: u64) -> Index {
        self.serving = Some(stack);
        self
    }

    /// How many times this reader opened the database again.
    pub fn reopens(&self) -> u32 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Writes index (`space`, `id`) to table files and compacts its key
    /// range, so readers open a few sorted tables instead of replaying a
    /// write-ahead log. One index per flush, and only its range: a table
    /// holding a layer's and a stack's records spans most of the key
    /// space, and compacting it merged every table in between (2.7 s, with
    /// the builders' lock held, for each new mount on a 127 MiB index).
    fn settle(&self, space: u8, id: u64) -> Result<()> {
        let db = self.current();
        db.flush().map_err(|e| db_error(&self.path, e))?;
        let start = record::index_prefix(space, id);
        let end = record::prefix_end(&start);
        db.compact_range(Some(&start), Some(&end));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|db| db.get(key))
    }

    fn meta(&self, space: u8, id: u64) -> Result<Option<LayerMeta>> {
        match self.get(&record::meta_key(space, id))? {
            None => Ok(None),
            Some(v) => LayerMeta::decode(&v)
                .map(Some)
                .ok_or_else(|| IndexError::Corrupt {
                    what: format!("{} {id:016x}", space as char),
                }),
        }
    }

    /// Whether layer `id` is indexed, completely, in this format.
    pub fn layer_ready(&self, id: u64) -> Result<Option<LayerMeta>> {
        Ok(self.meta(LAYER, id)?.filter(LayerMeta::usable))
    }

    /// Whether stack `id` has a complete merged index.
    pub fn stack_ready(&self, id: u64) -> Result<bool> {
        Ok(self.meta(STACK, id)?.is_some_and(|m| m.usable()))
    }

    fn put_meta(&self, space: u8, id: u64, meta: &LayerMeta) -> Result<()> {
        self.current()
            .put(record::meta_key(space, id), meta.encode())
            .map_err(|e| db_error(&self.path, e))
    }

    /// Removes every record of one index, in one atomic batch. An index
    /// with no records (the usual first build) gets no range deletion,
    /// which would otherwise stay in its table for good.
    fn clear(&self, space: u8, id: u64) -> Result<()> {
        let start = record::index_prefix(space, id);
        let any = self.read(|db| {
            let mut it = db.raw_iterator();
            it.seek(&start);
            it.status()
                .map(|()| it.key().is_some_and(|k| k.starts_with(&start)))
        })?;
        if !any {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(&start, &record::prefix_end(&start));
        self.write(batch)
    }

    /// Starts (re)building one index: its old records go, and it is marked
    /// incomplete until its builder writes the final meta record.
    fn begin_build(&self, space: u8, id: u64) -> Result<()> {
        self.clear(space, id)?;
        self.put_meta(
            space,
            id,
            &LayerMeta {
                version: VERSION,
                complete: false,
                entries: 0,
            },
        )
    }

    /// Ends a build begun with [`Self::begin_build`]: its last batch, then
    /// the meta record that marks it complete (never before the batch).
    fn finish_build(
        &self,
        space: u8,
        id: u64,
        batch: rocksdb::WriteBatch,
        entries: u64,
    ) -> Result<()> {
        self.write(batch)?;
        self.put_meta(
            space,
            id,
            &LayerMeta {
                version: VERSION,
                complete: true,
                entries,
            },
        )?;
        self.settle(space, id)
    }

    fn write(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        self.current()
            .write(batch)
            .map_err(|e| db_error(&self.path, e))
    }

    /// Every record of directory `dir` of index (`space`, `id`), in name
    /// order, handed to `f` until it returns false.
    pub fn scan_dir(
        &self,
        space: u8,
        id: u64,
        dir: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let prefix = record::dir_prefix(space, id, dir);
        // The last key handed to `f`: a rerun resumes after it.
        let mut last: Option<Vec<u8>> = None;
        self.read(|db| {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(record::prefix_end(&prefix));
            ro.fill_cache(true);
            let from = last.as_deref().unwrap_or(&prefix);
            for item in db.iterator_opt(IteratorMode::From(from, Direction::Forward), ro) {
                let (k, v) = item?;
                if last.as_deref() == Some(&*k) {
                    continue;
                }
                let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                let go_on = f(name, &v);
                last = Some(k.into_vec());
                if !go_on {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Entry `name` of directory `dir` of a stack, resolved.
    pub fn lookup(&self, stack: u64, dir: &[u8], name: &[u8]) -> Result<Option<Merged>> {
        let mut key = record::dir_prefix(STACK, stack, dir);
        key.extend_from_slice(name);
        match self.get(&key)? {
            None => Ok(None),
            Some(v) => Merged::decode(&v)
                .map(Some)
                .ok_or_else(|| IndexError::Corrupt {
                    what: String::from_utf8_lossy(&key).into_owned(),
                }),
        }
    }

    /// Entries of a stack's merged directory, handed to `f` until it
    /// returns false.
    pub fn list(
        &self,
        stack: u64,
        dir: &[u8],
        mut f: impl FnMut(&[u8], Merged) -> bool,
    ) -> Result<()> {
        let mut bad = None;
        self.scan_dir(STACK, stack, dir, |name, v| match Merged::decode(v) {
            Some(m) => f(name, m),
            None => {
                bad = Some(String::from_utf8_lossy(name).into_owned());
                false
            }
        })?;
        match bad {
            Some(what) => Err(IndexError::Corrupt { what }),
            None => Ok(()),
        }
    }

    /// Number of records of one index.
    pub fn count(&self, space: u8, id: u64) -> Result<u64> {
        let prefix = record::entries_prefix(space, id);
        self.read(|db| {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(record::prefix_end(&prefix));
            let mut n = 0;
            for item in db.iterator_opt(IteratorMode::From(&prefix, Direction::Forward), ro) {
                item?;
                n += 1;
            }
            Ok(n)
        })
    }
}

/// FNV-1a: stable across runs and builds (std's hasher is not).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The identity of a layer: its root directory's device, inode and times.
/// Lower layers are immutable while in use; a layer replaced or touched at
/// its root gets a new identity and is indexed again (and `verify` finds
/// changes below the root).
pub fn layer_id(layer: &Layer) -> Result<u64> {
    let st = layer.root().stat_self().map_err(|e| IndexError::Layer {
        path: layer.path().to_path_buf(),
        reason: e.to_string(),
    })?;
    let s = &st.0;
    let nums = [
        s.st_dev,
        s.st_ino,
        s.st_ctime as u64,
        s.st_ctime_nsec as u64,
        s.st_mtime as u64,
        s.st_mtime_nsec as u64,
        u64::from(VERSION),
    ];
    let bytes: Vec<u8> = nums.iter().flat_map(|n| n.to_le_bytes()).collect();
    Ok(fnv(&[b"layer", &bytes]))
}

/// The identity of a stack: its layers in order, and how many of them the
/// root merges.
pub fn stack_id(layers: &[u64], root_layers: usize) -> u64 {
    let bytes: Vec<u8> = layers
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .chain((root_layers as u64).to_le_bytes())
        .collect();
    fnv(&[b"stack", &bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holds about one table per indexing run; once read, a table
    /// stays open. (With RocksDB's default 64 table-cache shards and 64
    /// open files, tables sharing a shard evicted each other and every
    /// lookup reopened one.)
    #[test]
    fn lookups_across_many_tables_open_each_once() {
        const TABLES: u64 = 300;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |table: u64, i: u64| [table.to_be_bytes(), i.to_be_bytes()].concat();
        {
            // One flushed table per "layer", never compacted together.
            let mut o = options();
            o.set_disable_auto_compactions(true);
            let db = DB::open(&o, dir.path()).expect("open for writing");
            for t in 0..TABLES {
                for i in 0..20 {
                    db.put(key(t, i), [7u8; 64]).expect("put");
                }
                db.flush().expect("flush");
            }
        }
        let mut o = options();
        o.enable_statistics();
        let db = DB::open_for_read_only(&o, dir.path(), false).expect("open read-only");
        let pass = || {
            for t in 0..TABLES {
                for i in [0, 10, 19] {
                    assert!(db.get(key(t, i)).expect("get").is_some());
                }
            }
        };
        let opens = || o.get_ticker_count(rocksdb::statistics::Ticker::NoFileOpens);
        pass();
        let first = opens();
        assert!(first >= TABLES, "{first} table opens for {TABLES} tables");
        pass();
        pass();
        assert_eq!(opens(), first, "tables were opened again");
    }

    /// Ids spread over the key space, as hashes are.
    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Writes one index of `entries` records of (space, `id`) as a builder
    /// does, with values that do not compress away.
    fn fake_build(ix: &Index, space: u8, id: u64, entries: u64) {
        ix.begin_build(space, id).expect("begin");
        let mut batch = rocksdb::WriteBatch::default();
        let mut x = id | 1;
        for i in 0..entries {
            let mut key = record::dir_prefix(space, id, b"d");
            key.extend_from_slice(format!("{i:08}").as_bytes());
            let value: Vec<u8> = (0..48)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            batch.put(key, value);
        }
        ix.finish_build(space, id, batch, entries).expect("finish");
    }

    fn tables(dir: &Path) -> std::collections::BTreeMap<String, u64> {
        std::fs::read_dir(dir)
            .expect("read index dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
            .map(|e| {
                let len = e.metadata().expect("stat table").len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect()
    }

    /// Indexing one more small layer costs about its own size, not the
    /// size of the database: every new mount of a new layer pays it while
    /// holding the builders' lock. (Compacting the whole database after
    /// each build rewrote all of it: 2.7 s per mount on a 127 MiB index.)
    #[test]
    fn a_small_build_rewrites_a_small_part_of_a_large_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open_for_write(dir.path(), std::time::Duration::ZERO).expect("open");
        // As mounts do: a layer, then the stack merging it.
        for i in 0..12 {
            fake_build(&ix, LAYER, spread(i), 25_000);
            fake_build(&ix, STACK, spread(i), 25_000);
        }
        let before = tables(dir.path());
        let total: u64 = before.values().sum();
        assert!(total > 24 << 20, "the index is only {total} bytes");
        fake_build(&ix, LAYER, spread(1000), 10);
        fake_build(&ix, STACK, spread(1001), 10);
        let written: u64 = tables(dir.path())
            .iter()
            .filter(|(name, _)| !before.contains_key(*name))
            .map(|(_, len)| len)
            .sum();
        assert!(
            written <= 3 * TABLE_SIZE,
            "two 10-entry builds wrote {written} bytes of tables into an index of {total}"
        );
        for i in 0..12 {
            assert_eq!(ix.count(LAYER, spread(i)).expect("count"), 25_000);
            assert_eq!(ix.count(STACK, spread(i)).expect("count"), 25_000);
        }
    }

    /// Every table holds one index's records, rebuilt ones included; a
    /// table written as older versions did (two indexes flushed together)
    /// is told apart.
    #[test]
    fn tables_hold_one_index_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open_for_write(dir.path(), std::time::Duration::ZERO).expect("open");
        for i in 1..6 {
            fake_build(&ix, LAYER, i << 40, 100);
            fake_build(&ix, STACK, i << 40, 100);
        }
        fake_build(&ix, LAYER, 2 << 40, 50);
        // A range deletion moved down with its table (as versions that
        // cleared every index before building it left them) ends the
        // table at the end of the range.
        let start = record::index_prefix(LAYER, 7 << 40);
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(&start, &record::prefix_end(&start));
        batch.put(record::meta_key(LAYER, 7 << 40), b"x");
        ix.write(batch).expect("write");
        ix.settle(LAYER, 7 << 40).expect("settle");
        assert_eq!(mixed_tables(&ix.current()), 0);
        let db = ix.current();
        db.put(record::meta_key(LAYER, 9 << 40), b"x").expect("put");
        db.put(record::meta_key(STACK, 9 << 40), b"x").expect("put");
        db.flush().expect("flush");
        assert_eq!(mixed_tables(&db), 1);
    }

    /// Rewrites every table of the index, as a builder's compaction may
    /// rewrite any, deleting the old ones.
    fn rewrite_every_table(ix: &Index, dir: &Path) {
        let old = tables(dir);
        let mut force = rocksdb::CompactOptions::default();
        force.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        ix.current()
            .compact_range_opt::<&[u8], &[u8]>(None, None, &force);
        let left = tables(dir);
        assert!(
            left.keys().all(|t| !old.contains_key(t)),
            "the compaction kept old tables: {left:?}"
        );
    }

    /// A builder's compactions delete table files; a serving daemon that
    /// opened the index before keeps reading every record it had, even in
    /// the middle of a listing.
    #[test]
    fn readers_keep_their_records_while_a_builder_compacts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open_for_write(dir.path(), std::time::Duration::ZERO).expect("open");
        // More tables than RocksDB opens when it opens the database (16),
        // then a directory over several tables that sort after them.
        for i in 0..40 {
            fake_build(&ix, LAYER, spread(i), 200);
        }
        const BIG: u64 = 150_000;
        fake_build(&ix, STACK, 7, BIG);
        assert!(tables(dir.path()).len() > 16 + 2);

        let reader = Index::open_read_only(dir.path()).expect("open read-only");
        let mut names = Vec::new();
        reader
            .scan_dir(STACK, 7, b"d", |name, _| {
                if names.is_empty() {
                    rewrite_every_table(&ix, dir.path());
                }
                names.push(String::from_utf8_lossy(name).into_owned());
                true
            })
            .expect("listing across the rewrite");
        assert_eq!(names.len() as u64, BIG, "names lost or listed twice");
        assert!(
            names
                .iter()
                .enumerate()
                .all(|(i, n)| *n == format!("{i:08}")),
            "the listing is out of order"
        );
        assert_eq!(reader.reopens(), 1, "the listing never met a deleted table");

        rewrite_every_table(&ix, dir.path());
        for i in 0..40 {
            assert!(reader.layer_ready(spread(i)).expect("meta").is_some());
            assert_eq!(reader.count(LAYER, spread(i)).expect("count"), 200);
        }
    }
}
