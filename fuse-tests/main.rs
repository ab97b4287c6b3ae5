//! Integration tests that mount for real: layerfs through both of its
//! command lines, compared with kernel overlayfs where the kernel defines
//! the expected result. Run as root (`cargo test --release --test fuse`).

mod harness;

mod cli;
mod containerd;
mod hardlinks;
mod idmap;
mod index;
mod metacopy;
mod passthrough;
mod reference;
mod runtime;
mod semantics;
mod smoke;
mod store;
