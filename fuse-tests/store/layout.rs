//! Copies of the fixture's OCI layout, broken on purpose with digests
//! kept consistent.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

use super::*;

/// A copy of the fixture to break.
pub(super) fn copy_fixture(s: &Scratch, tag: &str) -> PathBuf {
    let dst = s.path(tag);
    let out = run(Command::new("cp").arg("-r").arg(fixture()).arg(&dst));
    assert!(out.status.success(), "cp -r fixture");
    let out = run(Command::new("chmod").arg("-R").arg("u+w").arg(&dst));
    assert!(out.status.success(), "chmod copy");
    dst
}

pub(super) fn blob(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex)
}

pub(super) const MANIFEST: &str =
    "e5b5fd80a825ce522757f25f94c9d77041ce400c698a5e1488c45e5ed63a0b08";
pub(super) const CONFIG: &str = "8efc0d0a19f54549e80714f69eb4d91ad162c2e8b86ea0135a104878ae23fbf7";
pub(super) const BASE: &str = "1a816cd357b157c19ce966bff0aa0456867857536128bcb48e2bdc34f5c9d6c7";
pub(super) const LAYER2: &str = "fc6b20b9925962225586a249470d32c821c78188b7a9714c542e608c577d5435";
pub(super) const LAYER3: &str = "bc5f72a10c80c19cf0b55418a94b5b0bae5b6383b0ac8931b0f59c910ee5aa83";

/// Writes `bytes` as a blob; returns its digest hex.
pub(super) fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let tmp = layout.join("blobs/sha256/tmp");
    fs::write(&tmp, bytes).expect("write blob");
    let hex = sha256_hex(&tmp);
    fs::rename(&tmp, blob(layout, &hex)).expect("rename blob");
    hex
}

/// Rewrites the layout's config with `edit`, then the manifest (and
/// `edit_manifest`) and index.json so that every digest matches again.
pub(super) fn rewrite(
    layout: &Path,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_manifest: impl FnOnce(&mut serde_json::Value),
) {
    let read = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(blob(layout, hex)).expect("read")).expect("json")
    };
    let mut config = read(CONFIG);
    edit_config(&mut config);
    let cbytes = serde_json::to_vec(&config).expect("encode");
    let chex = put_blob(layout, &cbytes);
    let mut manifest = read(MANIFEST);
    manifest["config"]["digest"] = format!("sha256:{chex}").into();
    manifest["config"]["size"] = cbytes.len().into();
    edit_manifest(&mut manifest);
    let mbytes = serde_json::to_vec(&manifest).expect("encode");
    let mhex = put_blob(layout, &mbytes);
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    index["manifests"][0]["digest"] = format!("sha256:{mhex}").into();
    index["manifests"][0]["size"] = mbytes.len().into();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("encode"),
    )
    .expect("write index");
}

/// A raw ustar member (name bytes as given, no checks: that is the point).
pub(super) fn tar_member(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8], link: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}", v, width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Adds a sixth, uncompressed layer made of `members` to a layout, with
/// every digest correct: only the content is hostile.
/// A tar member: name, type flag, data, link target.
pub(super) type Member<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

pub(super) fn add_layer(layout: &Path, members: &[Member<'_>]) {
    let mut tar = Vec::new();
    for (name, kind, data, link) in members {
        tar_member(&mut tar, name, *kind, data, link);
    }
    tar.resize(tar.len() + 1024, 0);
    let hex = put_blob(layout, &tar);
    let size = tar.len();
    rewrite(
        layout,
        |c| {
            c["rootfs"]["diff_ids"]
                .as_array_mut()
                .expect("diff_ids")
                .push(format!("sha256:{hex}").into())
        },
        |m| {
            m["layers"]
                .as_array_mut()
                .expect("layers")
                .push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{hex}"),
                    "size": size,
                }))
        },
    );
}
