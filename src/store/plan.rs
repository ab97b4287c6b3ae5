//! Reading an image source (OCI layout or archive, docker-archive) into
//! a plan: each image's verified documents and the layers it needs, by
//! blob name, blob digest and diff ID. Nothing is written; `import` stages
//! and commits what a plan names.

use serde_json::Value;

use super::source::Source;
use super::{Digest, Result, StoreError};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub(super) struct LayerPlan {
    /// Member name of the blob in the source.
    pub(super) blob: String,
    /// Digest of the blob itself, when the manifest gives it.
    pub(super) digest: Option<Digest>,
    pub(super) size: Option<u64>,
    pub(super) diff_id: Digest,
}

pub(super) struct ImagePlan {
    pub(super) config: Vec<u8>,
    pub(super) id: Digest,
    pub(super) manifest: Option<(Vec<u8>, Digest)>,
    pub(super) names: Vec<String>,
    pub(super) layers: Vec<LayerPlan>,
}

pub(super) fn bad(src: &Source, what: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("{}: {what}", src.describe()))
}

fn json(src: &Source, what: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| bad(src, format!("{what} is not valid JSON: {e}")))
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads and verifies a small blob named by a descriptor.
fn read_descriptor(src: &Source, desc: &Value, what: &str) -> Result<(Vec<u8>, Digest)> {
    let digest = desc
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(src, format!("{what}: descriptor without a digest")))?;
    let digest = Digest::parse(digest).map_err(|e| bad(src, format!("{what}: {e}")))?;
    let bytes = src
        .read_member(&blob_name(&digest))
        .map_err(|e| bad(src, format!("{what} {digest}: {e}")))?;
    Digest::of(&bytes).check(&digest, format!("{} {what}", src.describe()))?;
    if let Some(size) = desc.get("size").and_then(Value::as_u64) {
        if size != bytes.len() as u64 {
            return Err(bad(
                src,
                format!(
                    "{what} {digest}: size {} but the descriptor says {size}",
                    bytes.len()
                ),
            ));
        }
    }
    Ok((bytes, digest))
}

fn diff_ids(src: &Source, config: &Value, id: &Digest) -> Result<Vec<Digest>> {
    let ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(src, format!("config {id} has no rootfs.diff_ids")))?;
    ids.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad(src, format!("config {id}: a diff id is not a string")))
                .and_then(|s| Digest::parse(s).map_err(|e| bad(src, format!("config {id}: {e}"))))
        })
        .collect()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The image manifests an OCI index refers to: nested indexes are followed
/// to the entry for this platform.
fn oci_manifests(
    src: &Source,
    index: &Value,
    depth: usize,
    out: &mut Vec<(Value, Vec<String>)>,
) -> Result<()> {
    if depth > 4 {
        return Err(bad(src, "indexes nested too deeply"));
    }
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(src, "index without manifests"))?;
    let nested = depth > 0;
    let mut chosen = Vec::new();
    for desc in manifests {
        if nested {
            let os = desc.pointer("/platform/os").and_then(Value::as_str);
            let arch = desc
                .pointer("/platform/architecture")
                .and_then(Value::as_str);
            if (os.is_some() && os != Some("linux")) || (arch.is_some() && arch != Some(oci_arch()))
            {
                continue;
            }
        }
        chosen.push(desc);
        if nested {
            break;
        }
    }
    if chosen.is_empty() {
        return Err(bad(
            src,
            format!("no manifest for linux/{} in the index", oci_arch()),
        ));
    }
    for desc in chosen {
        let names: Vec<String> = [
            // The full name first; ref.name is often only a tag.
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ]
        .iter()
        .filter_map(|k| desc.pointer(&format!("/annotations/{}", k.replace('/', "~1"))))
        .filter_map(Value::as_str)
        .take(1)
        .map(str::to_string)
        .collect();
        let mt = desc.get("mediaType").and_then(Value::as_str).unwrap_or("");
        if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
            let (bytes, _) = read_descriptor(src, desc, "index")?;
            let nested_index = json(src, "index", &bytes)?;
            let before = out.len();
            oci_manifests(src, &nested_index, depth + 1, out)?;
            for (_, n) in &mut out[before..] {
                if n.is_empty() {
                    n.clone_from(&names);
                }
            }
        } else {
            out.push((desc.clone(), names));
        }
    }
    Ok(())
}

pub(super) fn plan_oci(src: &Source) -> Result<Vec<ImagePlan>> {
    let layout = json(src, "oci-layout", &src.read_member("oci-layout")?)?;
    let version = layout.get("imageLayoutVersion").and_then(Value::as_str);
    if version != Some("1.0.0") {
        return Err(bad(
            src,
            format!("oci-layout: unsupported imageLayoutVersion {version:?}"),
        ));
    }
    let index = json(src, "index.json", &src.read_member("index.json")?)?;
    let mut manifests = Vec::new();
    oci_manifests(src, &index, 0, &mut manifests)?;
    // A bare tag (`latest`, as `skopeo copy … oci:DIR:latest` writes) names
    // nothing on its own: qualify it with the layout's name.
    for (_, names) in &mut manifests {
        for n in names.iter_mut() {
            if !n.contains(':') && !n.contains('/') {
                *n = format!("{}:{n}", src.stem());
            }
        }
    }
    let mut plans = Vec::new();
    for (desc, names) in manifests {
        let (bytes, mdigest) = read_descriptor(src, &desc, "manifest")?;
        let manifest = json(src, "manifest", &bytes)?;
        let cdesc = manifest
            .get("config")
            .ok_or_else(|| bad(src, format!("manifest {mdigest} has no config")))?;
        let (config, id) = read_descriptor(src, cdesc, "config")?;
        let config_v = json(src, "config", &config)?;
        let ids = diff_ids(src, &config_v, &id)?;
        let layers = manifest
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(src, format!("manifest {mdigest} has no layers")))?;
        if layers.len() != ids.len() {
            return Err(bad(
                src,
                format!(
                    "manifest {mdigest} lists {} layers but its config {} diff ids",
                    layers.len(),
                    ids.len()
                ),
            ));
        }
        let mut lp = Vec::new();
        for (desc, diff_id) in layers.iter().zip(ids) {
            let d = desc
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(src, format!("manifest {mdigest}: layer without digest")))?;
            let d = Digest::parse(d).map_err(|e| bad(src, e))?;
            if desc.get("urls").is_some() && !src.has(&blob_name(&d)) {
                return Err(bad(
                    src,
                    format!("layer {d} is a foreign layer (urls) and not in the layout"),
                ));
            }
            lp.push(LayerPlan {
                blob: blob_name(&d),
                size: desc.get("size").and_then(Value::as_u64),
                digest: Some(d),
                diff_id,
            });
        }
        plans.push(ImagePlan {
            config,
            id,
            manifest: Some((bytes, mdigest)),
            names,
            layers: lp,
        });
    }
    Ok(plans)
}

/// A digest spelled in a docker-archive member name
/// (`<hex>.json`, `<hex>/layer.tar`, `blobs/sha256/<hex>`), if any.
fn digest_in_name(name: &str) -> Option<Digest> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["blobs", "sha256", hex] => Digest::from_hex(hex),
        [file] => Digest::from_hex(file.strip_suffix(".json").unwrap_or(file)),
        _ => None,
    }
}

pub(super) fn plan_docker(src: &Source) -> Result<Vec<ImagePlan>> {
    let manifest = json(src, "manifest.json", &src.read_member("manifest.json")?)?;
    let entries = manifest
        .as_array()
        .ok_or_else(|| bad(src, "manifest.json is not a list"))?;
    let mut plans = Vec::new();
    for entry in entries {
        let config_name = entry
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(src, "manifest.json: an entry without Config"))?;
        let config = src.read_member(config_name)?;
        let id = Digest::of(&config);
        if let Some(named) = digest_in_name(config_name) {
            id.check(&named, format!("{} config {config_name}", src.describe()))?;
        }
        let config_v = json(src, "config", &config)?;
        let ids = diff_ids(src, &config_v, &id)?;
        let layers = entry
            .get("Layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(src, "manifest.json: an entry without Layers"))?;
        if layers.len() != ids.len() {
            return Err(bad(
                src,
                format!(
                    "manifest.json lists {} layers but config {config_name} {} diff ids",
                    layers.len(),
                    ids.len()
                ),
            ));
        }
        let mut lp = Vec::new();
        for (l, diff_id) in layers.iter().zip(ids) {
            let blob = l
                .as_str()
                .ok_or_else(|| bad(src, "manifest.json: a layer name is not a string"))?;
            lp.push(LayerPlan {
                blob: blob.to_string(),
                digest: digest_in_name(blob),
                size: None,
                diff_id,
            });
        }
        let names = entry
            .get("RepoTags")
            .and_then(Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        plans.push(ImagePlan {
            config,
            id,
            manifest: None,
            names,
            layers: lp,
        });
    }
    if plans.is_empty() {
        return Err(bad(src, "manifest.json lists no images"));
    }
    Ok(plans)
}
