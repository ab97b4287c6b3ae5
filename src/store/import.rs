//! `image import`: OCI layouts, OCI archives and docker-archives into the
//! store.
//!
//! Three phases, so that a failure anywhere leaves the store as it was:
//! 1. plan (`plan.rs`): read and verify the documents (index, manifests,
//!    configs);
//! 2. stage: stream each new layer blob through two sha256s (compressed
//!    bytes against the manifest, uncompressed against the config's
//!    `rootfs.diff_ids`) into the tar codec, unpacking into a staging dir,
//!    without the store lock;
//! 3. commit: under the exclusive lock, rename the staged layers and the
//!    image into place.
//!
//! Then each new layer is indexed (layers are immutable from then on).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use super::digest::{Hasher, HashingReader};
use super::meta::{self, ImageRecord, LayerRecord};
use super::plan::{bad, plan_docker, plan_oci, ImagePlan, LayerPlan};
use super::source::Source;
use super::tar::{self as codec, UnpackOptions, UnpackStats, WhiteoutForm};
use super::{io_err, Digest, Result, Store, StoreError};

/// What the importer reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Reading layer `layer` (1-based) of `layers`; `bytes` of `total`
    /// compressed bytes read so far over all layers being unpacked.
    Unpacking {
        layer: usize,
        layers: usize,
        bytes: u64,
        total: u64,
    },
    /// Indexing a new layer: entries so far.
    Indexing {
        layer: usize,
        entries: u64,
    },
    Done,
}

pub struct ImportOptions<'a> {
    /// Name to give the image (only when the source holds one image).
    pub name: Option<String>,
    pub progress: &'a mut dyn FnMut(&Progress),
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedLayer {
    pub diff_id: Digest,
    pub digest: Option<Digest>,
    /// "unpacked" (new in the store) or "present" (already there).
    pub status: &'static str,
    pub size: u64,
    pub stats: Option<UnpackStats>,
    pub indexed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedImage {
    pub id: Digest,
    pub names: Vec<String>,
    /// False when the image was in the store already (names may be new).
    pub new: bool,
    pub layers: Vec<ImportedLayer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub source: String,
    pub format: &'static str,
    pub images: Vec<ImportedImage>,
    pub layers_unpacked: usize,
    pub bytes_read: u64,
    pub seconds: f64,
}

/// Counts and hashes the compressed bytes, and lets progress see them.
struct Tap<R> {
    inner: R,
    state: Rc<RefCell<Hasher>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn decoder<'a, R: BufRead + 'a>(
    mut r: R,
) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Gzip,
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok((
            Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Compression::Zstd,
        ))
    } else {
        Ok((Box::new(r), Compression::None))
    }
}

/// What streaming one blob produced.
struct Streamed {
    digest: Digest,
    compressed_size: u64,
    diff_id: Digest,
    size: u64,
    stats: Option<UnpackStats>,
    compression: Compression,
}

/// Streams blob `plan` through both hashes, into the codec when `dest` is
/// given, else nowhere (verification only); checks both digests.
fn stream_blob(
    src: &Source,
    plan: &LayerPlan,
    dest: Option<(&Path, &UnpackOptions)>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Streamed> {
    let what = format!("{} layer {}", src.describe(), plan.blob);
    let (raw, member_size) = src.open_member(&plan.blob)?;
    let state = Rc::new(RefCell::new(Hasher::new()));
    let tap = Tap {
        inner: raw,
        state: Rc::clone(&state),
    };
    let (dec, compression) = decoder(BufReader::with_capacity(1 << 20, tap))
        .map_err(|e| StoreError::Invalid(format!("{what}: {e}")))?;
    let mut plain = HashingReader::new(dec);
    let stats = match dest {
        Some((dir, opts)) => {
            let st = Rc::clone(&state);
            let mut report = move |_: u64| on_bytes(st.borrow().len());
            let stats = codec::unpack_layer(&mut plain, dir, opts, &mut report)
                .map_err(|e| StoreError::Invalid(format!("{what}: {e}")))?;
            Some(stats)
        }
        None => None,
    };
    let (diff_id, size, dec) = plain
        .finish()
        .map_err(|e| StoreError::Invalid(format!("{what}: {e}")))?;
    drop(dec);
    let hasher = Rc::try_unwrap(state)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| rc.borrow().clone());
    if hasher.len() != member_size {
        return Err(StoreError::Invalid(format!(
            "{what}: {} bytes follow the end of the compressed stream",
            member_size.saturating_sub(hasher.len())
        )));
    }
    let digest = hasher.finish();
    if let Some(expected) = &plan.digest {
        digest.check(expected, format!("{what} (compressed blob)"))?;
    }
    if let Some(expected) = plan.size {
        if expected != member_size {
            return Err(StoreError::Invalid(format!(
                "{what}: {member_size} bytes but the manifest says {expected}"
            )));
        }
    }
    diff_id.check(
        &plan.diff_id,
        format!("{what} (uncompressed, against the config's diff_ids)"),
    )?;
    Ok(Streamed {
        digest,
        compressed_size: member_size,
        diff_id,
        size,
        stats,
        compression,
    })
}

/// Only the compressed digest, where the manifest names it: enough to
/// trust that the blob is the one the manifest means, when the layer it
/// unpacks to is already in the store (verified when it came in).
fn hash_blob(src: &Source, plan: &LayerPlan, expected: &Digest) -> Result<()> {
    let (mut r, _) = src.open_member(&plan.blob)?;
    let mut h = HashingReader::new(&mut r);
    io::copy(&mut h, &mut io::sink()).map_err(|e| bad(src, format!("{}: {e}", plan.blob)))?;
    let (d, _, _) = h
        .finish()
        .map_err(|e| bad(src, format!("{}: {e}", plan.blob)))?;
    d.check(expected, format!("{} layer {}", src.describe(), plan.blob))
}

/// How layers are written for this process.
pub(crate) fn unpack_options(store: &Store) -> UnpackOptions {
    if store.rootless {
        UnpackOptions {
            whiteouts: WhiteoutForm::UserXattr,
            allow_devices: false,
            preserve_owners: false,
            override_stat: true,
        }
    } else {
        UnpackOptions {
            whiteouts: WhiteoutForm::CharDevice,
            allow_devices: true,
            preserve_owners: true,
            override_stat: false,
        }
    }
}

pub(crate) fn whiteout_form_name(store: &Store) -> &'static str {
    if store.rootless {
        "userxattr"
    } else {
        "chardev"
    }
}

/// Flushes everything written below `dir` to disk (one syncfs, cheaper
/// than an fsync per file).
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| io_err(dir, e))?;
    // SAFETY: syncfs on a valid fd.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(io_err(dir, io::Error::last_os_error()));
    }
    Ok(())
}

/// A layer staged for the store: `<staging>/<hex>/{diff,layer.json}`.
pub(crate) struct StagedLayer {
    pub dir: PathBuf,
    pub record: LayerRecord,
}

impl Store {
    pub fn layer_exists(&self, diff_id: &Digest) -> bool {
        self.layers_dir()
            .join(diff_id.hex())
            .join("layer.json")
            .is_file()
    }

    /// Imports every image in the OCI layout, OCI archive or docker-archive
    /// at `path`.
    pub fn import(&self, path: &Path, opts: ImportOptions<'_>) -> Result<ImportReport> {
        let start = Instant::now();
        let src = Source::open(path)?;
        let (format, mut plans) = if src.has("index.json") && src.has("oci-layout") {
            (
                match src {
                    Source::Dir(_) => "oci-layout",
                    Source::Archive { .. } => "oci-archive",
                },
                plan_oci(&src)?,
            )
        } else if src.has("manifest.json") {
            ("docker-archive", plan_docker(&src)?)
        } else {
            return Err(bad(
                &src,
                "neither an OCI layout (oci-layout, index.json) nor a docker-archive (manifest.json)",
            ));
        };
        if let Some(name) = &opts.name {
            if plans.len() != 1 {
                return Err(bad(
                    &src,
                    format!("holds {} images; --name needs exactly one", plans.len()),
                ));
            }
            plans[0].names = vec![name.clone()];
        }
        for p in &plans {
            for n in &p.names {
                check_image_name(n)?;
            }
        }

        // Stage.
        let staging = self.staging("import")?;
        let unpack = unpack_options(self);
        let mut staged: HashMap<Digest, StagedLayer> = HashMap::new();
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut todo = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            for (j, l) in p.layers.iter().enumerate() {
                if !self.layer_exists(&l.diff_id) && seen.insert(l.diff_id.clone()) {
                    todo.push((i, j));
                }
            }
        }
        let total: u64 = todo
            .iter()
            .map(|&(i, j)| plans[i].layers[j].size.unwrap_or(0))
            .sum();
        let mut done_bytes = 0u64;
        let mut reports: Vec<Vec<ImportedLayer>> = plans.iter().map(|_| Vec::new()).collect();
        let mut unpacked_n = 0;
        for (i, p) in plans.iter().enumerate() {
            for (j, l) in p.layers.iter().enumerate() {
                let parent = j.checked_sub(1).map(|k| p.layers[k].diff_id.clone());
                if todo.contains(&(i, j)) {
                    unpacked_n += 1;
                    let dir = staging.path().join(l.diff_id.hex());
                    let diff = dir.join("diff");
                    std::fs::create_dir_all(&diff).map_err(|e| io_err(&diff, e))?;
                    let n = unpacked_n;
                    let layers = todo.len();
                    let base = done_bytes;
                    let progress = &mut *opts.progress;
                    let s = stream_blob(&src, l, Some((&diff, &unpack)), &mut |b| {
                        progress(&Progress::Unpacking {
                            layer: n,
                            layers,
                            bytes: base + b,
                            total,
                        })
                    })?;
                    done_bytes += s.compressed_size;
                    let stats = s.stats.clone().unwrap_or_default();
                    let record = LayerRecord {
                        diff_id: s.diff_id.clone(),
                        compressed_digest: (s.compression != Compression::None)
                            .then(|| s.digest.clone()),
                        compressed_size: (s.compression != Compression::None)
                            .then_some(s.compressed_size),
                        size: s.size,
                        parent,
                        created: super::now_secs(),
                        entries: stats.entries,
                        whiteouts: stats.whiteouts,
                        opaque_dirs: stats.opaque_dirs,
                        whiteout_form: whiteout_form_name(self).to_string(),
                        source: "import".into(),
                    };
                    meta::write_json(&dir.join("layer.json"), &record)?;
                    reports[i].push(ImportedLayer {
                        diff_id: s.diff_id.clone(),
                        digest: Some(s.digest),
                        status: "unpacked",
                        size: s.size,
                        stats: s.stats,
                        indexed: false,
                    });
                    staged.insert(s.diff_id, StagedLayer { dir, record });
                } else {
                    // In the store, or earlier in this import: check the
                    // blob is the one the manifest names, unpack nothing.
                    match &l.digest {
                        Some(d) => hash_blob(&src, l, d)?,
                        None => {
                            stream_blob(&src, l, None, &mut |_| {})?;
                        }
                    }
                    let size = staged
                        .get(&l.diff_id)
                        .map(|s| s.record.size)
                        .unwrap_or_default();
                    reports[i].push(ImportedLayer {
                        diff_id: l.diff_id.clone(),
                        digest: l.digest.clone(),
                        status: "present",
                        size,
                        stats: None,
                        indexed: false,
                    });
                }
            }
        }
        if !staged.is_empty() {
            sync_tree(staging.path())?;
        }

        // Commit.
        let mut images = Vec::new();
        let new_layers;
        {
            let _lock = self.lock_exclusive()?;
            for p in &plans {
                for l in &p.layers {
                    if !staged.contains_key(&l.diff_id) && !self.layer_exists(&l.diff_id) {
                        return Err(StoreError::Busy(format!(
                            "layer {} was removed from the store while this import ran; import again",
                            l.diff_id
                        )));
                    }
                }
            }
            new_layers = self.commit_layers(&staged)?;
            for (p, layers) in plans.iter().zip(reports) {
                let (record, new) = self.commit_image(&staging, p)?;
                images.push(ImportedImage {
                    id: record.id,
                    names: record.names,
                    new,
                    layers,
                });
            }
        }

        // Index the new layers. The store is complete without it (a mount
        // builds what is missing), so a failure here is only reported.
        let progress = &mut *opts.progress;
        let indexed: HashSet<Digest> = match self.index_layers(&new_layers, &mut |k, entries| {
            progress(&Progress::Indexing {
                layer: k + 1,
                entries,
            })
        }) {
            Ok(()) => new_layers.iter().cloned().collect(),
            Err(e) => {
                tracing::warn!("indexing the new layers: {e}");
                HashSet::new()
            }
        };
        for img in &mut images {
            for l in &mut img.layers {
                l.indexed = indexed.contains(&l.diff_id) || self.layer_indexed(&l.diff_id);
            }
        }
        (opts.progress)(&Progress::Done);
        Ok(ImportReport {
            source: src.describe(),
            format,
            images,
            layers_unpacked: unpacked_n,
            bytes_read: done_bytes,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Renames staged layers into `layers/` (the caller holds the exclusive
    /// lock); returns those that are new.
    pub(crate) fn commit_layers(
        &self,
        staged: &HashMap<Digest, StagedLayer>,
    ) -> Result<Vec<Digest>> {
        let mut new = Vec::new();
        let mut ids: Vec<&Digest> = staged.keys().collect();
        ids.sort();
        for d in ids {
            if self.layer_exists(d) {
                continue; // Another import got there first; ours is dropped.
            }
            let to = self.layers_dir().join(d.hex());
            let from = &staged[d].dir;
            std::fs::rename(from, &to).map_err(|e| io_err(&to, e))?;
            new.push(d.clone());
        }
        if !new.is_empty() {
            meta::fsync_dir(&self.layers_dir())?;
        }
        Ok(new)
    }

    /// Adds image `p` (or its names, when it is there already). The caller
    /// holds the exclusive lock.
    fn commit_image(
        &self,
        staging: &super::lock::Staging,
        p: &ImagePlan,
    ) -> Result<(ImageRecord, bool)> {
        self.add_image(
            staging,
            &p.id,
            &p.config,
            p.manifest.as_ref(),
            &p.layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>(),
            &p.names,
        )
    }

    /// Writes an image (config, manifest, record) into `images/`, moving
    /// its names away from other images. The caller holds the exclusive
    /// lock.
    pub(crate) fn add_image(
        &self,
        staging: &super::lock::Staging,
        id: &Digest,
        config: &[u8],
        manifest: Option<&(Vec<u8>, Digest)>,
        layers: &[Digest],
        names: &[String],
    ) -> Result<(ImageRecord, bool)> {
        let dir = self.images_dir().join(id.hex());
        let existing = dir.join("image.json");
        for other in self.images_unlocked()? {
            if other.id == *id {
                continue;
            }
            if other.names.iter().any(|n| names.contains(n)) {
                let mut o = other.clone();
                o.names.retain(|n| !names.contains(n));
                meta::write_json(&self.images_dir().join(o.id.hex()).join("image.json"), &o)?;
            }
        }
        if existing.is_file() {
            let mut rec: ImageRecord = meta::read_json(&existing)?;
            for n in names {
                if !rec.names.contains(n) {
                    rec.names.push(n.clone());
                }
            }
            meta::write_json(&existing, &rec)?;
            return Ok((rec, false));
        }
        let tmp = staging.path().join(format!("image-{}", id.hex()));
        std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        meta::write_atomic(&tmp.join("config.json"), config)?;
        if let Some((m, _)) = manifest {
            meta::write_atomic(&tmp.join("manifest.json"), m)?;
        }
        let rec = ImageRecord {
            id: id.clone(),
            names: names.to_vec(),
            layers: layers.to_vec(),
            manifest_digest: manifest.map(|(_, d)| d.clone()),
            created: super::now_secs(),
        };
        meta::write_json(&tmp.join("image.json"), &rec)?;
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        meta::fsync_dir(&self.images_dir())?;
        Ok((rec, true))
    }

    /// Indexes layers of the store into the store's index (those indexed
    /// already are skipped). `progress` gets (layer number, entries).
    pub(crate) fn index_layers(
        &self,
        layers: &[Digest],
        progress: &mut dyn FnMut(usize, u64),
    ) -> Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        let err = |e: crate::index::IndexError| io_err(&self.index_dir(), e);
        let ix = crate::index::Index::open_for_write(
            &self.index_dir(),
            std::time::Duration::from_secs(600),
        )
        .map_err(err)?;
        for (k, d) in layers.iter().enumerate() {
            let path = self.layer_diff(d);
            let layer = crate::layer::Layer::open(&path).map_err(|e| io_err(&path, e))?;
            let id = crate::index::layer_id(&layer).map_err(err)?;
            if ix.layer_ready(id).map_err(err)?.is_none() {
                crate::index::build_layer(&ix, &layer, id, &mut |n| progress(k, n)).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Whether layer `d` has a complete index.
    pub fn layer_indexed(&self, d: &Digest) -> bool {
        let Ok(layer) = crate::layer::Layer::open(&self.layer_diff(d)) else {
            return false;
        };
        let Ok(id) = crate::index::layer_id(&layer) else {
            return false;
        };
        crate::index::Index::open_read_only(&self.index_dir())
            .ok()
            .and_then(|ix| ix.layer_ready(id).ok().flatten())
            .is_some()
    }
}

/// Image names are kept in JSON, never in paths; they only have to be
/// printable.
pub fn check_image_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == ' ') {
        return Err(StoreError::Invalid(format!(
            "image name {name:?}: use 1 to 255 printable characters without spaces"
        )));
    }
    Ok(())
}
