//! The storage-driver operations, as one trait: what an engine (the CLI,
//! the runtime, a containerd snapshotter) needs from a layer store.
//!
//! Names: a read-only layer is its diff ID (`sha256:…`, content-addressed,
//! so it is created in two steps, [`Driver::create`] then
//! [`Driver::apply_diff`], and named only once its content is known); a
//! read-write layer is a container name.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::changes::{self, Change};
use super::digest::HashingReader;
use super::export::ExportedBlob;
use super::import::{self};
use super::lock::Staging;
use super::meta::{self, LayerRecord};
use super::tar::{self as codec, Compression};
use super::{io_err, Digest, Result, Store, StoreError};
use crate::layer::Layer;
use crate::mount::daemon::DaemonOptions;

/// A read-only layer being created: staged, not in the store until
/// [`Driver::apply_diff`] names it; dropped, it leaves nothing behind.
pub struct PendingLayer {
    staging: Staging,
    parent: Option<Digest>,
}

/// What [`Driver::cleanup`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    /// Layers no image used.
    pub layers: Vec<Digest>,
    /// Containers whose recorded mount had gone.
    pub stale_mounts: Vec<String>,
    /// Layer and stack indexes dropped from the metadata index.
    pub indexes: usize,
}

pub trait Driver {
    /// Starts a read-only layer on `parent`.
    fn create(&self, parent: Option<&Digest>) -> Result<PendingLayer>;
    /// A read-write layer (container) `id` on image `image`.
    fn create_rw(&self, id: &str, image: &str) -> Result<()>;
    /// Removes a container, or a read-only layer no image uses.
    fn remove(&self, id: &str) -> Result<()>;
    /// Mounts container `id` (at `mountpoint`, default its own dir) and
    /// returns where.
    fn get(&self, id: &str, mountpoint: Option<&Path>) -> Result<PathBuf>;
    /// Unmounts container `id`.
    fn put(&self, id: &str) -> Result<()>;
    fn exists(&self, id: &str) -> bool;
    /// Writes layer or container `id` as an OCI layer tar.
    fn diff(&self, id: &str, out: &mut dyn Write, compression: Compression)
        -> Result<ExportedBlob>;
    /// Fills a created layer from an OCI layer tar (plain, gzip or zstd)
    /// and adds it to the store under its diff ID.
    fn apply_diff(&self, layer: PendingLayer, tar: &mut dyn Read) -> Result<Digest>;
    /// What container `id` changed.
    fn changes(&self, id: &str) -> Result<Vec<Change>>;
    /// Bytes of file data container `id` changed (or layer `id` holds).
    fn diff_size(&self, id: &str) -> Result<u64>;
    /// Facts about the store, for humans.
    fn status(&self) -> Result<Vec<(String, String)>>;
    /// Removes what nothing uses: unreferenced layers, stale mount records.
    fn cleanup(&self) -> Result<Cleanup>;
}

impl Store {
    fn as_layer(&self, id: &str) -> Option<Digest> {
        Digest::parse(id).ok().filter(|d| self.layer_exists(d))
    }

    fn upper_of(&self, id: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
        let _l = self.lock_shared()?;
        let rec = self.container(id)?;
        Ok((
            self.container_dir(id).join("upper"),
            self.container_lowers(&rec)?,
        ))
    }
}

fn open_layer(p: &Path) -> Result<Layer> {
    Layer::open(p).map_err(|e| io_err(p, e))
}

impl Driver for Store {
    fn create(&self, parent: Option<&Digest>) -> Result<PendingLayer> {
        if let Some(p) = parent {
            if !self.layer_exists(p) {
                return Err(StoreError::NotFound {
                    what: "layer",
                    name: p.to_string(),
                });
            }
        }
        let staging = self.staging("layer")?;
        let diff = staging.path().join("layer/diff");
        std::fs::create_dir_all(&diff).map_err(|e| io_err(&diff, e))?;
        Ok(PendingLayer {
            staging,
            parent: parent.cloned(),
        })
    }

    fn create_rw(&self, id: &str, image: &str) -> Result<()> {
        self.create_container(image, id).map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<()> {
        if self.container_exists(id) {
            return self.remove_container(id, false);
        }
        let d = Digest::parse(id)?;
        let _l = self.lock_exclusive()?;
        if !self.layer_exists(&d) {
            return Err(StoreError::NotFound {
                what: "layer or container",
                name: id.to_string(),
            });
        }
        let users: Vec<String> = self
            .images_unlocked()?
            .into_iter()
            .filter(|i| i.layers.contains(&d))
            .map(|i| i.id.short().to_string())
            .collect();
        if !users.is_empty() {
            return Err(StoreError::Busy(format!(
                "layer {d} is used by image(s) {}",
                users.join(", ")
            )));
        }
        self.remove_dir_safely(&self.layers_dir().join(d.hex()))
    }

    fn get(&self, id: &str, mountpoint: Option<&Path>) -> Result<PathBuf> {
        self.mount_container(id, mountpoint, &[], &DaemonOptions::default())
    }

    fn put(&self, id: &str) -> Result<()> {
        self.umount_container(id, false).map(|_| ())
    }

    fn exists(&self, id: &str) -> bool {
        self.container_exists(id) || self.as_layer(id).is_some()
    }

    fn diff(
        &self,
        id: &str,
        out: &mut dyn Write,
        compression: Compression,
    ) -> Result<ExportedBlob> {
        let (upper, lowers) = match self.as_layer(id) {
            Some(d) => (self.layer_diff(&d), Vec::new()),
            None => self.upper_of(id)?,
        };
        let staging = self.staging("diff")?;
        let tmp = staging.path().join("layer");
        let file = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let (blob, _) = super::export::pack_to(&upper, &lowers, file, compression)?;
        let mut f = std::fs::File::open(&tmp).map_err(|e| io_err(&tmp, e))?;
        std::io::copy(&mut f, out).map_err(|e| io_err(&tmp, e))?;
        Ok(blob)
    }

    fn apply_diff(&self, layer: PendingLayer, tar: &mut dyn Read) -> Result<Digest> {
        let dir = layer.staging.path().join("layer");
        let diff = dir.join("diff");
        let (dec, _) = import::decoder(BufReader::with_capacity(1 << 20, tar))
            .map_err(|e| StoreError::Invalid(format!("layer tar: {e}")))?;
        let mut plain = HashingReader::new(dec);
        let stats = codec::unpack_layer(
            &mut plain,
            &diff,
            &import::unpack_options(self),
            &mut |_| {},
        )
        .map_err(|e| StoreError::Invalid(format!("layer tar: {e}")))?;
        let (diff_id, size, _) = plain
            .finish()
            .map_err(|e| StoreError::Invalid(format!("layer tar: {e}")))?;
        let record = LayerRecord {
            diff_id: diff_id.clone(),
            compressed_digest: None,
            compressed_size: None,
            size,
            parent: layer.parent.clone(),
            created: super::now_secs(),
            entries: stats.entries,
            whiteouts: stats.whiteouts,
            opaque_dirs: stats.opaque_dirs,
            whiteout_form: import::whiteout_form_name(self).to_string(),
            source: "apply-diff".into(),
        };
        meta::write_json(&dir.join("layer.json"), &record)?;
        import::sync_tree(&dir)?;
        let final_dir = layer.staging.path().join(diff_id.hex());
        std::fs::rename(&dir, &final_dir).map_err(|e| io_err(&final_dir, e))?;
        let mut staged = std::collections::HashMap::new();
        staged.insert(
            diff_id.clone(),
            import::StagedLayer {
                dir: final_dir,
                record,
            },
        );
        let new = {
            let _l = self.lock_exclusive()?;
            self.commit_layers(&staged)?
        };
        if let Err(e) = self.index_layers(&new, &mut |_, _| {}) {
            tracing::warn!("indexing layer {diff_id}: {e}");
        }
        Ok(diff_id)
    }

    fn changes(&self, id: &str) -> Result<Vec<Change>> {
        let (upper, lowers) = self.upper_of(id)?;
        let upper_l = open_layer(&upper)?;
        let lowers_l = lowers
            .iter()
            .map(|p| open_layer(p))
            .collect::<Result<Vec<_>>>()?;
        changes::changes(&upper_l, &lowers_l).map_err(|e| io_err(&upper, e))
    }

    fn diff_size(&self, id: &str) -> Result<u64> {
        let path = match self.as_layer(id) {
            Some(d) => self.layer_diff(&d),
            None => self.upper_of(id)?.0,
        };
        changes::upper_size(&open_layer(&path)?).map_err(|e| io_err(&path, e))
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        let layers = self.layers()?;
        let images = self.images()?;
        let containers = self.containers()?;
        let mounted = containers.iter().filter(|c| c.mounted_at.is_some()).count();
        Ok(vec![
            ("Root".into(), self.root().display().to_string()),
            (
                "Mode".into(),
                if self.rootless { "rootless" } else { "root" }.into(),
            ),
            (
                "Whiteouts".into(),
                import::whiteout_form_name(self).to_string(),
            ),
            ("Layers".into(), layers.len().to_string()),
            ("Images".into(), images.len().to_string()),
            (
                "Containers".into(),
                format!("{} ({mounted} mounted)", containers.len()),
            ),
            ("Index".into(), self.index_dir().display().to_string()),
        ])
    }

    fn cleanup(&self) -> Result<Cleanup> {
        let _l = self.lock_exclusive()?;
        let used: BTreeSet<Digest> = self
            .images_unlocked()?
            .into_iter()
            .flat_map(|i| i.layers)
            .collect();
        let mut out = Cleanup::default();
        let records: Vec<LayerRecord> = meta::read_all(&self.layers_dir(), "layer.json")?;
        for r in records {
            if !used.contains(&r.diff_id) {
                self.remove_dir_safely(&self.layers_dir().join(r.diff_id.hex()))?;
                out.layers.push(r.diff_id);
            }
        }
        for mut c in self.containers_unlocked()? {
            if c.mountpoint
                .as_ref()
                .is_some_and(|mp| !super::container::is_live_mount(mp))
            {
                c.mountpoint = None;
                meta::write_json(&self.container_dir(&c.name).join("container.json"), &c)?;
                out.stale_mounts.push(c.name);
            }
        }
        out.indexes = self.collect_index();
        Ok(out)
    }
}
