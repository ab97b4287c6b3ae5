//! The store's metadata records and how they reach the disk: JSON files
//! replaced atomically (write a temp file, fsync it, rename it over the
//! old one, fsync the directory).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{io_err, Digest, Result, StoreError};

/// One layer: `layers/<diffid-hex>/layer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    /// sha256 of the uncompressed tar; the layer's identity.
    pub diff_id: Digest,
    /// sha256 of the blob it was imported from, when it came compressed.
    pub compressed_digest: Option<Digest>,
    pub compressed_size: Option<u64>,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    /// The layer below it in the image that brought it in (a layer shared
    /// by several chains keeps its first parent; images hold the chains).
    pub parent: Option<Digest>,
    pub created: u64,
    /// Tar entries, whiteouts and opaque dirs it was unpacked from.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// How whiteouts are written in it: "chardev" or "userxattr".
    pub whiteout_form: String,
    /// Where it came from: "import", "commit" or "apply-diff".
    pub source: String,
}

/// One image: `images/<config-hex>/image.json`, beside the OCI config
/// (`config.json`) and manifest (`manifest.json`) exactly as imported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// sha256 of the config: the image's identity.
    pub id: Digest,
    pub names: Vec<String>,
    /// Diff IDs, bottom layer first (the config's `rootfs.diff_ids`).
    pub layers: Vec<Digest>,
    pub manifest_digest: Option<Digest>,
    pub created: u64,
}

/// One container: `containers/<name>/container.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: Digest,
    pub created: u64,
    /// Where it was last mounted (the mount may have gone since).
    pub mountpoint: Option<PathBuf>,
}

/// fsyncs a directory, so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, format!("fsync: {e}")))
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Invalid(format!("{}: no parent dir", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| StoreError::Invalid(format!("{}: no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    fsync_dir(dir)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| io_err(path, format!("cannot encode: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(path, format!("unreadable record: {e}")))
}

/// Reads `<dir>/<each child>/<file>`, in name order; children without the
/// file (not complete, so never renamed in) are skipped.
pub fn read_all<T: DeserializeOwned>(dir: &Path, file: &str) -> Result<Vec<T>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let e = e.map_err(|e| io_err(dir, e))?;
        names.push(e.file_name());
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let p = dir.join(&n).join(file);
        if p.exists() {
            out.push(read_json(&p)?);
        }
    }
    Ok(out)
}
