//! `run --bundle DIR`: an OCI runtime bundle's config.json (read with the
//! `oci-spec` crate) turned into what `run` does anyway.
//!
//! The bundle's root is used as the single lower layer of a union (the
//! container writes to an upper in the runtime dir, never into the
//! bundle). What maps: process args/env/cwd/user, hostname, the network
//! namespace (absent: the host's network), memory/cpu/pids resources, and
//! bind mounts. The standard mounts (/proc, /sys, /dev and its submounts,
//! /sys/fs/cgroup) are the runtime's own. Anything else — other mount
//! types, a user namespace, a read-only root — is refused by name rather
//! than silently ignored.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::spec::{Limits, NetworkMode, User, Volume};
use super::{Result, RunError};

/// What a bundle asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleConfig {
    pub rootfs: PathBuf,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub hostname: Option<String>,
    pub network: NetworkMode,
    pub limits: Limits,
    pub volumes: Vec<Volume>,
}

/// Mounts every container gets from the runtime itself.
const STANDARD: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

fn bad(dir: &Path, what: impl std::fmt::Display) -> RunError {
    RunError::Invalid(format!("bundle {}: {what}", dir.display()))
}

pub fn load(dir: &Path) -> Result<BundleConfig> {
    let spec =
        Spec::load(dir.join("config.json")).map_err(|e| bad(dir, format!("config.json: {e}")))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bad(dir, "config.json has no root"))?;
    if root.readonly() == Some(true) {
        return Err(bad(
            dir,
            "root.readonly is not supported (the root is a writable union); set it to false",
        ));
    }
    let rootfs = dir.join(root.path());
    let rootfs = rootfs
        .canonicalize()
        .map_err(|e| bad(dir, format!("root {}: {e}", rootfs.display())))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad(dir, "config.json has no process"))?;
    let command = process.args().clone().unwrap_or_default();
    if command.is_empty() {
        return Err(bad(dir, "process.args is empty"));
    }
    if process.terminal() == Some(true) {
        tracing::warn!("bundle asks for a terminal; the command shares unionctl's stdio instead");
    }
    let u = process.user();
    let user = User {
        user: u.uid().to_string(),
        group: Some(u.gid().to_string()),
    };
    let mut network = NetworkMode::Host;
    let mut limits = Limits::default();
    if let Some(linux) = spec.linux() {
        for ns in linux.namespaces().as_deref().unwrap_or(&[]) {
            if ns.path().is_some() {
                return Err(bad(
                    dir,
                    format!(
                        "joining an existing {:?} namespace is not supported",
                        ns.typ()
                    ),
                ));
            }
            match ns.typ() {
                LinuxNamespaceType::Network => network = NetworkMode::None,
                LinuxNamespaceType::User => {
                    return Err(bad(
                        dir,
                        "user namespaces (rootless bundles) are not supported yet",
                    ))
                }
                _ => {}
            }
        }
        if let Some(r) = linux.resources() {
            if let Some(m) = r.memory().as_ref().and_then(|m| m.limit()) {
                if m > 0 {
                    limits.memory_bytes = Some(m as u64);
                }
            }
            if let Some(c) = r.cpu() {
                if let Some(q) = c.quota().filter(|q| *q > 0) {
                    limits.cpu_quota_us = Some((q as u64, c.period().unwrap_or(100_000)));
                }
            }
            if let Some(p) = r.pids() {
                if p.limit() > 0 {
                    limits.pids = Some(p.limit() as u64);
                }
            }
        }
    }
    let mut volumes = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let dest = m.destination();
        if STANDARD.iter().any(|s| Path::new(s) == dest) {
            continue;
        }
        let opts = m.options().clone().unwrap_or_default();
        let is_bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            return Err(bad(
                dir,
                format!(
                    "mount of type {:?} at {} is not supported (only bind mounts besides the standard ones)",
                    m.typ().as_deref().unwrap_or("none"),
                    dest.display()
                ),
            ));
        }
        let source = m.source().as_ref().ok_or_else(|| {
            bad(
                dir,
                format!("bind mount at {} has no source", dest.display()),
            )
        })?;
        let source = source
            .canonicalize()
            .map_err(|e| bad(dir, format!("bind source {}: {e}", source.display())))?;
        if !dest.is_absolute() {
            return Err(bad(
                dir,
                format!("mount destination {} is not absolute", dest.display()),
            ));
        }
        volumes.push(Volume {
            source,
            target: dest.clone(),
            read_only: opts.iter().any(|o| o == "ro"),
        });
    }
    Ok(BundleConfig {
        rootfs,
        command,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().to_string_lossy().into_owned(),
        user,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        network,
        limits,
        volumes,
    })
}
