//! Out of the store: a container's upper layer as an OCI layer tar
//! (`export-layer`), as a new layer and image in the store (`commit`), and
//! an image as an OCI layout (`image export`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::digest::HashingWriter;
use super::import::{self, StagedLayer};
use super::meta::{self, ImageRecord, LayerRecord};
use super::tar::{self as codec, Compression, PackOptions};
use super::{io_err, Digest, Result, Store, StoreError};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One layer blob written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedBlob {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// sha256 of the blob as written (equal to `diff_id` when uncompressed).
    pub digest: Digest,
    pub size: u64,
    pub compressed_size: u64,
    pub entries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub layers: Vec<ExportedBlob>,
    pub config: Option<Digest>,
    pub manifest: Option<Digest>,
    pub image: Option<Digest>,
    pub seconds: f64,
}

/// The compression an output name asks for.
pub fn compression_for(path: &Path) -> Result<Compression> {
    let name = path.to_string_lossy();
    if name.ends_with(".tar") {
        Ok(Compression::None)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(Compression::Gzip)
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Ok(Compression::Zstd)
    } else {
        Err(StoreError::Invalid(format!(
            "{}: name it .tar, .tar.gz or .tar.zst to choose the compression",
            path.display()
        )))
    }
}

/// A temp name beside `path`, for writing it whole then renaming.
fn beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Packs `upper` (over `lowers`, which hold the data of metadata-only
/// copies) into `out`, hashing the uncompressed stream and the blob.
pub(crate) fn pack_to(
    upper: &Path,
    lowers: &[PathBuf],
    out: File,
    compression: Compression,
) -> Result<(ExportedBlob, File)> {
    let blob = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let opts = PackOptions {
        lowers: lowers.to_vec(),
    };
    let what = |e: &dyn std::fmt::Display| io_err(upper, format!("packing: {e}"));
    let (diff_id, size, entries, blob) = match compression {
        Compression::None => {
            let mut plain = HashingWriter::new(blob);
            let stats = codec::pack_layer_with(upper, &mut plain, Compression::None, &opts)
                .map_err(|e| what(&e))?;
            let (d, n, blob) = plain.finish();
            (d, n, stats.entries, blob)
        }
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::default());
            let mut plain = HashingWriter::new(gz);
            let stats = codec::pack_layer_with(upper, &mut plain, Compression::None, &opts)
                .map_err(|e| what(&e))?;
            let (d, n, gz) = plain.finish();
            (d, n, stats.entries, gz.finish().map_err(|e| what(&e))?)
        }
        Compression::Zstd => {
            let zs = zstd::stream::write::Encoder::new(blob, 3).map_err(|e| what(&e))?;
            let mut plain = HashingWriter::new(zs);
            let stats = codec::pack_layer_with(upper, &mut plain, Compression::None, &opts)
                .map_err(|e| what(&e))?;
            let (d, n, zs) = plain.finish();
            (d, n, stats.entries, zs.finish().map_err(|e| what(&e))?)
        }
    };
    let (digest, csize, buf) = blob.finish();
    let file = buf.into_inner().map_err(|e| what(&e.error()))?;
    file.sync_all().map_err(|e| what(&e))?;
    Ok((
        ExportedBlob {
            diff_id,
            digest,
            size,
            compressed_size: csize,
            entries,
        },
        file,
    ))
}

impl Store {
    /// The upper dir and lower layers of container `name`.
    fn container_paths(&self, name: &str) -> Result<(PathBuf, Vec<PathBuf>, ImageRecord)> {
        let _l = self.lock_shared()?;
        let rec = self.container(name)?;
        let images = self.images_unlocked()?;
        let img = images
            .into_iter()
            .find(|i| i.id == rec.image)
            .ok_or_else(|| StoreError::NotFound {
                what: "image",
                name: rec.image.to_string(),
            })?;
        let lowers = self.container_lowers(&rec)?;
        Ok((self.container_dir(name).join("upper"), lowers, img))
    }

    /// Writes container `name`'s changes as an OCI layer tar at `out`
    /// (compressed as its name says), whole or not at all.
    pub fn export_layer(&self, name: &str, out: &Path) -> Result<ExportReport> {
        let start = std::time::Instant::now();
        let compression = compression_for(out)?;
        let (upper, lowers, _) = self.container_paths(name)?;
        let tmp = beside(out);
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let result = pack_to(&upper, &lowers, file, compression).and_then(|(blob, _)| {
            std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
            Ok(blob)
        });
        let blob = result.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(ExportReport {
            path: out.to_path_buf(),
            layers: vec![blob],
            config: None,
            manifest: None,
            image: None,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Adds a layer to the store from an uncompressed layer tar already
    /// written (and hashed) in `staging`; returns whether it is new.
    pub(crate) fn stage_layer_from_tar(
        &self,
        staging: &super::lock::Staging,
        tar: &Path,
        diff_id: &Digest,
        size: u64,
        parent: Option<Digest>,
        source: &str,
    ) -> Result<Option<StagedLayer>> {
        if self.layer_exists(diff_id) {
            return Ok(None);
        }
        let dir = staging.path().join(diff_id.hex());
        let diff = dir.join("diff");
        std::fs::create_dir_all(&diff).map_err(|e| io_err(&diff, e))?;
        let input = File::open(tar).map_err(|e| io_err(tar, e))?;
        let stats = codec::unpack_layer(input, &diff, &import::unpack_options(self), &mut |_| {})
            .map_err(|e| io_err(tar, e))?;
        let record = LayerRecord {
            diff_id: diff_id.clone(),
            compressed_digest: None,
            compressed_size: None,
            size,
            parent,
            created: super::now_secs(),
            entries: stats.entries,
            whiteouts: stats.whiteouts,
            opaque_dirs: stats.opaque_dirs,
            whiteout_form: import::whiteout_form_name(self).to_string(),
            source: source.to_string(),
        };
        meta::write_json(&dir.join("layer.json"), &record)?;
        import::sync_tree(&dir)?;
        Ok(Some(StagedLayer { dir, record }))
    }

    /// Container `name`'s changes as a new layer on its image, and a new
    /// image (named `image_name`) with that layer on top.
    pub fn commit(&self, name: &str, image_name: &str) -> Result<ExportReport> {
        let start = std::time::Instant::now();
        import::check_image_name(image_name)?;
        let (upper, lowers, base) = self.container_paths(name)?;
        let base_config = self.image_config(&base.id)?;
        let staging = self.staging("commit")?;
        let tar = staging.path().join("layer.tar");
        let file = File::create(&tar).map_err(|e| io_err(&tar, e))?;
        let (blob, _) = pack_to(&upper, &lowers, file, Compression::None)?;
        let staged = self.stage_layer_from_tar(
            &staging,
            &tar,
            &blob.diff_id,
            blob.size,
            base.layers.last().cloned(),
            "commit",
        )?;

        let mut config: Value = serde_json::from_slice(&base_config)
            .map_err(|e| StoreError::Invalid(format!("image {} config: {e}", base.id)))?;
        let now = super::rfc3339(super::now_secs());
        let ids = config
            .pointer_mut("/rootfs/diff_ids")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                StoreError::Invalid(format!("image {} config has no rootfs.diff_ids", base.id))
            })?;
        ids.push(Value::String(blob.diff_id.to_string()));
        if let Some(obj) = config.as_object_mut() {
            obj.insert("created".into(), Value::String(now.clone()));
            let history = obj
                .entry("history")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(h) = history.as_array_mut() {
                h.push(json!({
                    "created": now,
                    "created_by": format!("unionctl commit {name}"),
                }));
            }
        }
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| StoreError::Invalid(format!("new config: {e}")))?;
        let id = Digest::of(&config_bytes);
        let mut layers = base.layers.clone();
        layers.push(blob.diff_id.clone());

        let mut new_layers = Vec::new();
        {
            let _l = self.lock_exclusive()?;
            if !self.container_exists(name) {
                return Err(StoreError::NotFound {
                    what: "container",
                    name: name.to_string(),
                });
            }
            if let Some(s) = staged {
                let mut m = HashMap::new();
                m.insert(blob.diff_id.clone(), s);
                new_layers = self.commit_layers(&m)?;
            }
            self.add_image(
                &staging,
                &id,
                &config_bytes,
                None,
                &layers,
                &[image_name.to_string()],
            )?;
        }
        if let Err(e) = self.index_layers(&new_layers, &mut |_, _| {}) {
            tracing::warn!("indexing the committed layer: {e}");
        }
        Ok(ExportReport {
            path: self.images_dir().join(id.hex()),
            layers: vec![blob],
            config: Some(id.clone()),
            manifest: None,
            image: Some(id),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Writes image `r` as an OCI layout at `dir` (which must not exist):
    /// each layer packed afresh (gzip), its config with the diff IDs of
    /// those tars, a manifest and `index.json` naming it by tag.
    pub fn export_image(&self, r: &str, dir: &Path) -> Result<ExportReport> {
        let start = std::time::Instant::now();
        if dir.exists() {
            return Err(io_err(dir, "exists already; give a new directory"));
        }
        let img = self.image(r)?;
        let config = self.image_config(&img.id)?;
        let tmp = beside(dir);
        let result = self.write_layout(&img, &config, &tmp).and_then(|rep| {
            std::fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
            Ok(rep)
        });
        let (layers, config_d, manifest_d) = result.inspect_err(|_| {
            if let (Some(parent), Some(name)) = (tmp.parent(), tmp.file_name()) {
                let _ = super::remove_path_tree(parent, name);
            }
        })?;
        Ok(ExportReport {
            path: dir.to_path_buf(),
            layers,
            config: Some(config_d),
            manifest: Some(manifest_d),
            image: Some(img.id),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn write_layout(
        &self,
        img: &ImageRecord,
        config: &[u8],
        out: &Path,
    ) -> Result<(Vec<ExportedBlob>, Digest, Digest)> {
        let blobs = out.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| io_err(&blobs, e))?;
        let put = |bytes: &[u8]| -> Result<(Digest, u64)> {
            let d = Digest::of(bytes);
            let p = blobs.join(d.hex());
            std::fs::write(&p, bytes).map_err(|e| io_err(&p, e))?;
            Ok((d, bytes.len() as u64))
        };
        let mut layers = Vec::new();
        for d in &img.layers {
            let _l = self.lock_shared()?;
            let tmp = blobs.join("layer.tmp");
            let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            let (blob, _) = pack_to(&self.layer_diff(d), &[], file, Compression::Gzip)?;
            let to = blobs.join(blob.digest.hex());
            std::fs::rename(&tmp, &to).map_err(|e| io_err(&to, e))?;
            layers.push(blob);
        }
        let mut cfg: Value = serde_json::from_slice(config)
            .map_err(|e| StoreError::Invalid(format!("image {} config: {e}", img.id)))?;
        if let Some(ids) = cfg
            .pointer_mut("/rootfs/diff_ids")
            .and_then(Value::as_array_mut)
        {
            *ids = layers
                .iter()
                .map(|b| Value::String(b.diff_id.to_string()))
                .collect();
        }
        // Unchanged diff IDs keep the config (and so the image ID) as it was.
        let same = layers.iter().map(|b| &b.diff_id).eq(img.layers.iter());
        let cfg_bytes = if same {
            config.to_vec()
        } else {
            serde_json::to_vec(&cfg).map_err(|e| StoreError::Invalid(e.to_string()))?
        };
        let (cfg_d, cfg_n) = put(&cfg_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cfg_d.to_string(), "size": cfg_n},
            "layers": layers.iter().map(|b| json!({
                "mediaType": MT_LAYER_GZIP,
                "digest": b.digest.to_string(),
                "size": b.compressed_size,
            })).collect::<Vec<_>>(),
        });
        let m_bytes =
            serde_json::to_vec(&manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (m_d, m_n) = put(&m_bytes)?;
        let tag = img
            .names
            .first()
            .and_then(|n| {
                let last = n.rsplit('/').next().unwrap_or(n);
                last.split_once(':').map(|(_, t)| t.to_string())
            })
            .unwrap_or_else(|| "latest".to_string());
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            "org.opencontainers.image.ref.name".into(),
            Value::String(tag),
        );
        if let Some(n) = img.names.first() {
            annotations.insert("io.containerd.image.name".into(), Value::String(n.clone()));
        }
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MT_MANIFEST,
                "digest": m_d.to_string(),
                "size": m_n,
                "annotations": annotations,
            }],
        });
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let p = out.join(name);
            let mut f = File::create(&p).map_err(|e| io_err(&p, e))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| io_err(&p, e))
        };
        write(
            "index.json",
            &serde_json::to_vec(&index).map_err(|e| StoreError::Invalid(e.to_string()))?,
        )?;
        write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok((layers, cfg_d, m_d))
    }
}
