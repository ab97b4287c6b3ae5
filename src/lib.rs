//! layerfs: a userspace union filesystem with overlayfs's on-disk format,
//! served over FUSE.
//!
//! - [`layer`]: access to layer directories (the only place that makes path
//!   syscalls on them) and the whiteout/opaque encodings;
//! - [`union`]: the union semantics, independent of FUSE;
//! - [`fuse`]: the FUSE adapter;
//! - [`mount`]: mount configuration, option parsing, the daemon;
//! - [`store`]: the layer store (layers, images, containers) and OCI import/export;
//! - [`runtime`]: the minimal container runtime (`unionctl run`, `exec`);
//! - [`cli`]: command lines of `unionctl` and `layerfs`;
//! - [`userns`]: privileged (host root) or rootless, and the caller's host uid.

pub mod cli;
pub mod fuse;
pub mod index;
pub mod layer;
pub mod mount;
pub mod runtime;
pub mod snapshotter;
pub mod store;
pub mod union;
pub mod userns;
