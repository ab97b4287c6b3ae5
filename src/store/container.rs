//! Images and containers in the store: listing, looking up, creating,
//! mounting, unmounting and removing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::meta::{self, ContainerRecord, ImageRecord, LayerRecord};
use super::{check_container_name, io_err, Digest, Result, Store, StoreError};
use crate::mount::daemon::{self, DaemonOptions};
use crate::mount::{self, MountSpec, Options};

/// A container and whether it is mounted now.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    #[serde(flatten)]
    pub record: ContainerRecord,
    pub image_names: Vec<String>,
    /// Where it is mounted, when a live layerfs daemon serves it.
    pub mounted_at: Option<PathBuf>,
    pub upper: PathBuf,
}

/// A layer and how many images use it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    #[serde(flatten)]
    pub record: LayerRecord,
    pub path: PathBuf,
    pub images: usize,
}

/// Whether a layerfs mount is at `mp` now, as the kernel lists it (a mount
/// whose daemon died still counts: it must still be unmounted).
pub fn is_live_mount(mp: &Path) -> bool {
    crate::mount::table::mounts()
        .iter()
        .any(|m| m.target == mp && m.fstype.starts_with("fuse"))
}

impl Store {
    /// Every image; the caller holds a lock.
    pub(crate) fn images_unlocked(&self) -> Result<Vec<ImageRecord>> {
        meta::read_all(&self.images_dir(), "image.json")
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let _l = self.lock_shared()?;
        self.images_unlocked()
    }

    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let _l = self.lock_shared()?;
        let images = self.images_unlocked()?;
        let records: Vec<LayerRecord> = meta::read_all(&self.layers_dir(), "layer.json")?;
        Ok(records
            .into_iter()
            .map(|r| LayerInfo {
                path: self.layer_diff(&r.diff_id),
                images: images
                    .iter()
                    .filter(|i| i.layers.contains(&r.diff_id))
                    .count(),
                record: r,
            })
            .collect())
    }

    pub fn layer(&self, d: &Digest) -> Result<LayerRecord> {
        let p = self.layers_dir().join(d.hex()).join("layer.json");
        if !p.is_file() {
            return Err(StoreError::NotFound {
                what: "layer",
                name: d.to_string(),
            });
        }
        meta::read_json(&p)
    }

    pub(crate) fn containers_unlocked(&self) -> Result<Vec<ContainerRecord>> {
        meta::read_all(&self.containers_dir(), "container.json")
    }

    pub fn containers(&self) -> Result<Vec<ContainerInfo>> {
        let _l = self.lock_shared()?;
        let images = self.images_unlocked()?;
        Ok(self
            .containers_unlocked()?
            .into_iter()
            .map(|r| self.container_info(r, &images))
            .collect())
    }

    fn container_info(&self, r: ContainerRecord, images: &[ImageRecord]) -> ContainerInfo {
        ContainerInfo {
            image_names: images
                .iter()
                .find(|i| i.id == r.image)
                .map(|i| i.names.clone())
                .unwrap_or_default(),
            mounted_at: r.mountpoint.clone().filter(|mp| is_live_mount(mp)),
            upper: self.containers_dir().join(&r.name).join("upper"),
            record: r,
        }
    }

    /// Finds an image by name (`name`, or `name:latest`), full id
    /// (`sha256:…`) or unique id prefix.
    pub(crate) fn find_image(&self, images: &[ImageRecord], r: &str) -> Result<ImageRecord> {
        let not_found = || StoreError::NotFound {
            what: "image",
            name: r.to_string(),
        };
        if let Some(i) = images.iter().find(|i| i.names.iter().any(|n| n == r)) {
            return Ok(i.clone());
        }
        let tagged = format!("{r}:latest");
        let last = r.rsplit('/').next().unwrap_or(r);
        if !last.contains(':') {
            if let Some(i) = images.iter().find(|i| i.names.contains(&tagged)) {
                return Ok(i.clone());
            }
        }
        let hex = r.strip_prefix("sha256:").unwrap_or(r);
        if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let matches: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| i.id.hex().starts_with(hex))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(not_found()),
            _ => Err(StoreError::Invalid(format!(
                "image id prefix {r:?} is ambiguous ({} images)",
                matches.len()
            ))),
        }
    }

    pub fn image(&self, r: &str) -> Result<ImageRecord> {
        let _l = self.lock_shared()?;
        let images = self.images_unlocked()?;
        self.find_image(&images, r)
    }

    /// The OCI config of an image, as imported.
    pub fn image_config(&self, id: &Digest) -> Result<Vec<u8>> {
        let p = self.images_dir().join(id.hex()).join("config.json");
        std::fs::read(&p).map_err(|e| io_err(&p, e))
    }

    pub fn container(&self, name: &str) -> Result<ContainerRecord> {
        check_container_name(name)?;
        let p = self.containers_dir().join(name).join("container.json");
        if !p.is_file() {
            return Err(StoreError::NotFound {
                what: "container",
                name: name.to_string(),
            });
        }
        meta::read_json(&p)
    }

    pub fn container_exists(&self, name: &str) -> bool {
        check_container_name(name).is_ok()
            && self
                .containers_dir()
                .join(name)
                .join("container.json")
                .is_file()
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers_dir().join(name)
    }

    /// The lower layers of a container, top first (as `lowerdir=` wants).
    pub fn container_lowers(&self, rec: &ContainerRecord) -> Result<Vec<PathBuf>> {
        let images = self.images_unlocked()?;
        let image =
            images
                .iter()
                .find(|i| i.id == rec.image)
                .ok_or_else(|| StoreError::NotFound {
                    what: "image",
                    name: rec.image.to_string(),
                })?;
        Ok(image
            .layers
            .iter()
            .rev()
            .map(|d| self.layer_diff(d))
            .collect())
    }

    /// A new container `name`: an empty writable layer on `image`.
    pub fn create_container(&self, image: &str, name: &str) -> Result<ContainerRecord> {
        check_container_name(name)?;
        let _l = self.lock_exclusive()?;
        let images = self.images_unlocked()?;
        let img = self.find_image(&images, image)?;
        let dest = self.container_dir(name);
        if dest.exists() {
            return Err(StoreError::Exists {
                what: "container",
                name: name.to_string(),
            });
        }
        let staging = self.staging_locked("create")?;
        let tmp = staging.path().join(name);
        for d in ["", "upper", "work", "merged"] {
            let p = tmp.join(d);
            std::fs::create_dir(&p).map_err(|e| io_err(&p, e))?;
        }
        // The merged root shows the upper root's attributes: start it as
        // the image's root.
        if let Some(top) = img.layers.last() {
            let root = self.layer_diff(top);
            let m = std::fs::metadata(&root).map_err(|e| io_err(&root, e))?;
            let upper = tmp.join("upper");
            std::fs::set_permissions(
                &upper,
                std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777),
            )
            .map_err(|e| io_err(&upper, e))?;
            if !self.rootless {
                std::os::unix::fs::chown(&upper, Some(m.uid()), Some(m.gid()))
                    .map_err(|e| io_err(&upper, e))?;
            }
        }
        let rec = ContainerRecord {
            name: name.to_string(),
            image: img.id.clone(),
            created: super::now_secs(),
            mountpoint: None,
        };
        meta::write_json(&tmp.join("container.json"), &rec)?;
        std::fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
        meta::fsync_dir(&self.containers_dir())?;
        Ok(rec)
    }

    /// Mounts container `name` at `mountpoint` (default: its `merged`
    /// dir) through the same path as `unionctl mount`. `options` carries
    /// any extra `-o` options; layers come from the store.
    pub fn mount_container(
        &self,
        name: &str,
        mountpoint: Option<&Path>,
        extra_options: &[String],
        daemon_opts: &DaemonOptions,
    ) -> Result<PathBuf> {
        // Directory renames are copied rather than recorded as redirects,
        // so that every upper can be committed as an OCI layer (a layer tar
        // cannot express a renamed lower directory); `-o redirect_dir=on`
        // restores them.
        let mut options = Options {
            redirect_dir: false,
            ..Options::default()
        };
        for o in extra_options {
            options
                .apply(o)
                .map_err(|e| StoreError::Invalid(format!("-o {o}: {e}")))?;
        }
        let (rec, lowers) = {
            let _l = self.lock_shared()?;
            let rec = self.container(name)?;
            let lowers = self.container_lowers(&rec)?;
            (rec, lowers)
        };
        if let Some(mp) = rec.mountpoint.as_ref().filter(|mp| is_live_mount(mp)) {
            return Err(StoreError::Busy(format!(
                "container {name} is mounted already at {}",
                mp.display()
            )));
        }
        let dir = self.container_dir(name);
        let mp = match mountpoint {
            Some(p) => p.to_path_buf(),
            None => dir.join("merged"),
        };
        if !options.lowers.is_empty() || options.upper.is_some() || options.work.is_some() {
            return Err(StoreError::Invalid(
                "a store container's layers come from the store: drop lowerdir=, upperdir=, workdir="
                    .into(),
            ));
        }
        options.lowers = lowers;
        options.upper = Some(dir.join("upper"));
        options.work = Some(dir.join("work"));
        if options.index_dir.is_none() {
            // The index records owners as the namespace that built it sees
            // them: a daemon in a user namespace (the rootless runtime's,
            // where the caller is uid 0) keeps an index of its own, built
            // there, rather than serve the caller's host uid from the
            // import's.
            options.index_dir = Some(if crate::userns::in_initial_user_ns() {
                self.index_dir()
            } else {
                self.root.join("index-userns")
            });
        }
        if self.rootless && options.xattr_permissions == 0 {
            // Layers were unpacked with owners in the override xattr.
            options.xattr_permissions = 2;
        }
        let prepared = mount::prepare(MountSpec {
            options,
            mountpoint: mp,
        })
        .map_err(|e| StoreError::Mount(format!("container {name}: {e}")))?;
        let canonical = prepared.mountpoint.clone();
        // Recorded before mounting: a foreground daemon returns only at
        // unmount, and whether it is mounted is read live anyway.
        {
            let _l = self.lock_exclusive()?;
            let mut rec = self.container(name)?;
            rec.mountpoint = Some(canonical.clone());
            meta::write_json(&dir.join("container.json"), &rec)?;
        }
        // No store lock here: the daemon forks and would inherit it.
        daemon::run(prepared, daemon_opts)
            .map_err(|e| StoreError::Mount(format!("container {name}: {e}")))?;
        Ok(canonical)
    }

    /// Unmounts container `name`; returns where it was mounted.
    pub fn umount_container(&self, name: &str, lazy: bool) -> Result<PathBuf> {
        let rec = {
            let _l = self.lock_shared()?;
            self.container(name)?
        };
        let mp = rec
            .mountpoint
            .clone()
            .filter(|mp| is_live_mount(mp))
            .ok_or_else(|| StoreError::Invalid(format!("container {name} is not mounted")))?;
        mount::umount(&mp, lazy)
            .map_err(|e| StoreError::Mount(format!("container {name}: {e}")))?;
        let _l = self.lock_exclusive()?;
        let mut rec = self.container(name)?;
        rec.mountpoint = None;
        meta::write_json(&self.container_dir(name).join("container.json"), &rec)?;
        Ok(mp)
    }

    /// Removes container `name` and its writable layer. Refused while it is
    /// mounted, unless `force` (then it is unmounted first).
    pub fn remove_container(&self, name: &str, force: bool) -> Result<()> {
        let rec = {
            let _l = self.lock_shared()?;
            self.container(name)?
        };
        if let Some(mp) = rec.mountpoint.as_ref().filter(|mp| is_live_mount(mp)) {
            if !force {
                return Err(StoreError::Busy(format!(
                    "container {name} is mounted at {}; unmount it first (or use --force)",
                    mp.display()
                )));
            }
            if mount::umount(mp, false).is_err() {
                mount::umount(mp, true)
                    .map_err(|e| StoreError::Mount(format!("container {name}: {e}")))?;
            }
        }
        let _l = self.lock_exclusive()?;
        // Checked again under the lock: it may have been mounted since.
        let rec = self.container(name)?;
        if let Some(mp) = rec.mountpoint.as_ref().filter(|mp| is_live_mount(mp)) {
            return Err(StoreError::Busy(format!(
                "container {name} was mounted again at {}",
                mp.display()
            )));
        }
        self.remove_dir_safely(&self.container_dir(name))
    }

    /// Removes an image, and the layers no other image uses. Refused while
    /// a container uses it.
    pub fn remove_image(&self, r: &str) -> Result<Vec<Digest>> {
        let _l = self.lock_exclusive()?;
        let images = self.images_unlocked()?;
        let img = self.find_image(&images, r)?;
        let users: Vec<String> = self
            .containers_unlocked()?
            .into_iter()
            .filter(|c| c.image == img.id)
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(StoreError::Busy(format!(
                "image {r} is used by container(s) {}",
                users.join(", ")
            )));
        }
        self.remove_dir_safely(&self.images_dir().join(img.id.hex()))?;
        let mut removed = Vec::new();
        for d in &img.layers {
            if removed.contains(d) {
                continue;
            }
            let used = images
                .iter()
                .filter(|i| i.id != img.id)
                .any(|i| i.layers.contains(d));
            if !used && self.layer_exists(d) {
                self.remove_dir_safely(&self.layers_dir().join(d.hex()))?;
                removed.push(d.clone());
            }
        }
        Ok(removed)
    }
}
