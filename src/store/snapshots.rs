//! containerd's snapshot model, kept in the store: what the proxy
//! snapshotter (`unionctl snapshotter`) serves.
//!
//! A snapshot is a directory `snapshots/<id>/fs` (its layer: the upper dir
//! while active, a read-only lower once committed) beside `work/` (the
//! union's workdir). Names are containerd's keys and never touch a path, so
//! any key is safe. The table of snapshots is one file,
//! `snapshots/table.json`, replaced atomically under the store lock: it is
//! the only truth. A directory the table does not name is garbage from an
//! interrupted call, removed by [`Snapshots::cleanup`] and at start.
//!
//! Order of every change, so a `kill -9` anywhere leaves the table and the
//! directories consistent: a new snapshot's directory is made in staging and
//! renamed in before the table names it; a removed snapshot leaves the table
//! before its directory goes (renamed into staging, then deleted).
//!
//! Why not the store's read-only layers: those are named by content (diff
//! ID) once unpacked, while containerd names a snapshot itself, fills it
//! through a mount and commits it under a name of its choosing. Both live
//! under one root and share its lock, staging, removal and index.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{io_err, meta, Store, StoreError};
use crate::layer::{Dir, Kind, Layer};
use crate::mount::table::{self, MountEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
}

impl SnapshotKind {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// Bytes and inodes a snapshot's own layer holds (parents excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: SnapshotKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    created: u64,
    updated: u64,
    /// Measured once at commit: a committed layer never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// A snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub key: String,
    pub kind: SnapshotKind,
    /// The parent's name; empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// A mount for containerd to perform: `mount -t TYPE -o OPTIONS SOURCE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Why a snapshot call failed; each maps to the gRPC code containerd
/// turns back into its own error kinds.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

/// The mount type containerd hands to `mount.fuse3`, which runs
/// `layerfs SOURCE TARGET -o OPTIONS`.
pub const FUSE_TYPE: &str = "fuse3.layerfs";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// containerd's snapshots, on a store.
#[derive(Debug)]
pub struct Snapshots {
    store: Store,
}

impl Snapshots {
    /// Opens the snapshots of the store at `root` and removes what an
    /// interrupted call left behind.
    pub fn open(root: &Path) -> Result<Snapshots> {
        let store = Store::open(root)?;
        let s = Snapshots { store };
        // Mount options are comma-separated and lowerdir colon-separated:
        // a root whose path holds either could not be named in them.
        let dir = s.dir();
        let text = dir.to_string_lossy();
        if text.contains([',', ':', '\n']) || text.chars().any(char::is_whitespace) {
            return Err(SnapshotError::InvalidArgument(format!(
                "{}: a snapshot root path cannot hold ',', ':' or whitespace (mount options could not name it)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        s.cleanup()?;
        Ok(s)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn dir(&self) -> PathBuf {
        self.store.root().join("snapshots")
    }

    fn table_path(&self) -> PathBuf {
        self.dir().join("table.json")
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir().join(id.to_string())
    }

    /// The layer directory of snapshot `id`.
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn read_table(&self) -> Result<Table> {
        let p = self.table_path();
        if !p.exists() {
            return Ok(Table {
                next_id: 1,
                ..Table::default()
            });
        }
        Ok(meta::read_json(&p)?)
    }

    fn write_table(&self, t: &Table) -> Result<()> {
        Ok(meta::write_json(&self.table_path(), t)?)
    }

    fn get<'t>(t: &'t Table, key: &str) -> Result<&'t Record> {
        t.snapshots
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
    }

    /// The chain of layer ids below `parent`, nearest first.
    fn chain(t: &Table, parent: Option<&str>) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = parent;
        while let Some(name) = next {
            let r = Self::get(t, name)?;
            if ids.len() > t.snapshots.len() {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {name:?}: the parent chain loops"
                )));
            }
            ids.push(r.id);
            next = r.parent.as_deref();
        }
        Ok(ids)
    }

    /// Prepare (`kind` Active) or View: a new snapshot `key` on `parent`
    /// (empty for none), and the mounts that show it.
    pub fn create(
        &self,
        kind: SnapshotKind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<SnapshotMount>> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let parent = (!parent.is_empty()).then_some(parent);
        // The directory is built in staging, outside the lock, and renamed
        // in under it.
        let staging = self.store.staging("snapshot")?;
        let new = staging.path().join("snapshot");
        for d in [new.join("fs"), new.join("work")] {
            std::fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
        }
        let _l = self.store.lock_exclusive()?;
        let mut t = self.read_table()?;
        if t.snapshots.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_string()));
        }
        if let Some(p) = parent {
            let r = Self::get(&t, p)?;
            if r.kind != SnapshotKind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {p:?} is not a committed snapshot (it is {})",
                    r.kind.name()
                )));
            }
            // As kernel overlayfs shows it: the root of the union takes its
            // upper dir's owner, which should be the image's.
            let pfs = self.fs_dir(r.id);
            let st = std::fs::symlink_metadata(&pfs).map_err(|e| io_err(&pfs, e))?;
            let fs = new.join("fs");
            std::os::unix::fs::lchown(&fs, Some(st.uid()), Some(st.gid()))
                .map_err(|e| io_err(&fs, e))?;
        }
        let id = t.next_id.max(1);
        t.next_id = id + 1;
        let dest = self.snapshot_dir(id);
        if dest.exists() {
            // Only an interrupted call leaves a directory the table does
            // not name; cleanup would remove it.
            self.store.remove_dir_safely(&dest)?;
        }
        std::fs::rename(&new, &dest).map_err(|e| io_err(&dest, e))?;
        meta::fsync_dir(&self.dir())?;
        let now = now_ns();
        let rec = Record {
            id,
            kind,
            parent: parent.map(str::to_string),
            labels: labels.into_iter().collect(),
            created: now,
            updated: now,
            usage: None,
        };
        t.snapshots.insert(key.to_string(), rec);
        self.write_table(&t)?;
        self.mounts_in(&t, key)
    }

    /// The mounts of active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<SnapshotMount>> {
        let _l = self.store.lock_shared()?;
        let t = self.read_table()?;
        self.mounts_in(&t, key)
    }

    fn mounts_in(&self, t: &Table, key: &str) -> Result<Vec<SnapshotMount>> {
        let r = Self::get(t, key)?;
        let lowers = Self::chain(t, r.parent.as_deref())?;
        let fs = self.fs_dir(r.id);
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let bind = |p: &Path, mode: &str| SnapshotMount {
            kind: "bind".into(),
            source: path(p),
            options: vec![mode.into(), "rbind".into()],
        };
        let lowerdir = lowers
            .iter()
            .map(|id| path(&self.fs_dir(*id)))
            .collect::<Vec<_>>()
            .join(":");
        let fsname = path(&self.snapshot_dir(r.id));
        let layered = |mut options: Vec<String>| {
            options.push(format!("lowerdir={lowerdir}"));
            options.push(format!("fsname={fsname}"));
            options.push(format!("index_dir={}", path(&self.store.index_dir())));
            SnapshotMount {
                kind: FUSE_TYPE.into(),
                source: fsname.clone(),
                options,
            }
        };
        Ok(match (r.kind, lowers.len()) {
            (SnapshotKind::Committed, _) => {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} is committed: only active snapshots and views have mounts"
                )))
            }
            (SnapshotKind::Active, 0) => vec![bind(&fs, "rw")],
            (SnapshotKind::Active, _) => vec![layered(vec![
                format!("upperdir={}", path(&fs)),
                format!("workdir={}", path(&self.snapshot_dir(r.id).join("work"))),
            ])],
            (SnapshotKind::View, 0) => vec![bind(&fs, "ro")],
            (SnapshotKind::View, 1) => vec![bind(&self.fs_dir(lowers[0]), "ro")],
            (SnapshotKind::View, _) => vec![layered(vec!["ro".into()])],
        })
    }

    /// Commits active snapshot `key` as `name`: the same layer, now a
    /// read-only parent for others.
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot name".into()));
        }
        // Measured before the lock: an active layer is not being written
        // once its owner commits it.
        let id = {
            let _l = self.store.lock_shared()?;
            Self::get(&self.read_table()?, key)?.id
        };
        let usage = disk_usage(&self.fs_dir(id))?;
        let _l = self.store.lock_exclusive()?;
        let mut t = self.read_table()?;
        let r = Self::get(&t, key)?;
        if r.kind != SnapshotKind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is {}, not active: only active snapshots can be committed",
                r.kind.name()
            )));
        }
        if r.id != id {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} was replaced while being committed"
            )));
        }
        if t.snapshots.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        let mut r = t
            .snapshots
            .remove(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
        r.kind = SnapshotKind::Committed;
        r.usage = Some(usage);
        r.labels = labels.into_iter().collect();
        let now = now_ns();
        r.created = now;
        r.updated = now;
        t.snapshots.insert(name.to_string(), r);
        self.write_table(&t)
    }

    /// Removes snapshot `key` (no snapshot may have it as parent), and
    /// unmounts any union still showing it.
    pub fn remove(&self, key: &str) -> Result<()> {
        let _l = self.store.lock_exclusive()?;
        let mut t = self.read_table()?;
        let r = Self::get(&t, key)?;
        if let Some((child, _)) = t
            .snapshots
            .iter()
            .find(|(_, c)| c.parent.as_deref() == Some(key))
        {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} has a child ({child:?}): remove that first"
            )));
        }
        let dir = self.snapshot_dir(r.id);
        detach_mounts_of(&dir);
        t.snapshots.remove(key);
        self.write_table(&t)?;
        if dir.exists() {
            self.store.remove_dir_safely(&dir)?;
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let _l = self.store.lock_shared()?;
        let t = self.read_table()?;
        Ok(info(key, Self::get(&t, key)?))
    }

    /// Updates the labels of `info.key`: all of them when `paths` is empty,
    /// else the named `labels` / `labels.KEY` paths. Nothing else of a
    /// snapshot may change.
    pub fn update(&self, new: SnapshotInfo, paths: &[String]) -> Result<SnapshotInfo> {
        let _l = self.store.lock_exclusive()?;
        let mut t = self.read_table()?;
        let r = t
            .snapshots
            .get_mut(&new.key)
            .ok_or_else(|| SnapshotError::NotFound(new.key.clone()))?;
        if paths.is_empty() {
            r.labels = new.labels.clone().into_iter().collect();
        }
        for p in paths {
            if p == "labels" {
                r.labels = new.labels.clone().into_iter().collect();
            } else if let Some(k) = p.strip_prefix("labels.") {
                match new.labels.get(k) {
                    Some(v) => r.labels.insert(k.to_string(), v.clone()),
                    None => r.labels.remove(k),
                };
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {p:?} of snapshot {:?}: only labels change",
                    new.key
                )));
            }
        }
        r.updated = now_ns();
        let out = info(&new.key, r);
        self.write_table(&t)?;
        Ok(out)
    }

    /// Every snapshot, in key order.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let _l = self.store.lock_shared()?;
        let t = self.read_table()?;
        Ok(t.snapshots.iter().map(|(k, r)| info(k, r)).collect())
    }

    /// What snapshot `key`'s own layer holds.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let r = {
            let _l = self.store.lock_shared()?;
            Self::get(&self.read_table()?, key)?.clone()
        };
        match r.usage {
            Some(u) => Ok(u),
            None => disk_usage(&self.fs_dir(r.id)),
        }
    }

    /// Removes snapshot directories the table does not name (left by an
    /// interrupted call), unmounts unions of snapshots that are gone and
    /// drops the index records of removed snapshots. Returns how many
    /// directories went.
    pub fn cleanup(&self) -> Result<usize> {
        let _l = self.store.lock_exclusive()?;
        let t = self.read_table()?;
        let live: std::collections::HashSet<u64> = t.snapshots.values().map(|r| r.id).collect();
        let dir = self.dir();
        let mut removed = 0;
        for e in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let e = e.map_err(|e| io_err(&dir, e))?;
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if live.contains(&id) {
                continue;
            }
            let p = e.path();
            tracing::info!(path = %p.display(), "removing a snapshot directory no snapshot names");
            detach_mounts_of(&p);
            self.store.remove_dir_safely(&p)?;
            removed += 1;
        }
        detach_dead_unions(&dir);
        let dropped = self.store.collect_index();
        if dropped > 0 {
            tracing::info!(dropped, "dropped the indexes of removed snapshots");
        }
        Ok(removed)
    }
}

fn info(key: &str, r: &Record) -> SnapshotInfo {
    SnapshotInfo {
        key: key.to_string(),
        kind: r.kind,
        parent: r.parent.clone().unwrap_or_default(),
        labels: r.labels.clone().into_iter().collect(),
        created: time_of(r.created),
        updated: time_of(r.updated),
    }
}

/// Bytes (allocated blocks) and inodes under `root`, hard links counted
/// once, as `du` would; never follows a symlink out of the layer.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let layer = Layer::open(root).map_err(|e| io_err(root, e))?;
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let st = layer.root().stat_self().map_err(|e| io_err(root, e))?;
    u.inodes += 1;
    u.size += blocks(&st);
    walk_usage(layer.root(), root, &mut seen, &mut u)?;
    Ok(u)
}

fn blocks(st: &crate::layer::Stat) -> u64 {
    (st.0.st_blocks as u64).saturating_mul(512)
}

fn walk_usage(
    dir: &Dir,
    path: &Path,
    seen: &mut std::collections::HashSet<u64>,
    u: &mut Usage,
) -> Result<()> {
    for e in dir.entries().map_err(|e| io_err(path, e))? {
        let name: &CStr = &e.name;
        let Some(st) = dir.stat(name).map_err(|e| io_err(path, e))? else {
            continue; // removed meanwhile
        };
        if st.nlink() > 1 && !st.is_dir() && !seen.insert(st.ino()) {
            continue;
        }
        u.inodes += 1;
        u.size += blocks(&st);
        if st.kind() == Some(Kind::Dir) {
            let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let sub = dir.open_subdir(name).map_err(|e| io_err(&child, e))?;
            walk_usage(&sub, &child, seen, u)?;
        }
    }
    Ok(())
}

/// Lazily unmounts every layerfs union whose fsname is `dir` (how
/// [`Snapshots::mounts`] names them), so removing a snapshot never leaves
/// its union mounted over a deleted layer.
fn detach_mounts_of(dir: &Path) {
    let want = dir.to_string_lossy();
    for m in layerfs_mounts() {
        if m.source == want {
            detach(&m, "unmounting a union of a snapshot being removed");
        }
    }
}

/// Lazily unmounts unions of snapshots under `dir` whose daemon has died
/// (the mount answers ENOTCONN): nothing can use them, and containerd would
/// fail on them.
fn detach_dead_unions(dir: &Path) {
    let prefix = format!("{}/", dir.to_string_lossy());
    for m in layerfs_mounts() {
        // statfs always reaches the daemon; a stat may be answered from
        // the kernel's attribute cache even once the daemon is gone.
        if m.source.starts_with(&prefix)
            && matches!(
                nix::sys::statfs::statfs(&m.target),
                Err(nix::errno::Errno::ENOTCONN)
            )
        {
            detach(&m, "unmounting a union whose daemon is gone");
        }
    }
}

/// FUSE mounts this process sees (a `fuse3.layerfs` mount is listed as
/// `fuse.layerfs`).
fn layerfs_mounts() -> impl Iterator<Item = MountEntry> {
    table::mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse"))
}

fn detach(m: &MountEntry, why: &str) {
    tracing::warn!(target = %m.target.display(), snapshot = %m.source, "{why}");
    if let Err(e) = nix::mount::umount2(&m.target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(target = %m.target.display(), "cannot unmount: {e}");
    }
}

#[cfg(test)]
mod tests;
