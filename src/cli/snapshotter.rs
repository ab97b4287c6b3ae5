//! `unionctl snapshotter`: serve containerd's snapshots API.

use std::path::PathBuf;

use clap::Args;

use crate::snapshotter::{self, DEFAULT_ADDRESS};

#[derive(Args, Debug)]
pub struct SnapshotterArgs {
    /// The unix socket containerd's `proxy_plugins` entry names.
    #[arg(long, value_name = "SOCKET", default_value = DEFAULT_ADDRESS)]
    address: PathBuf,
}

/// Serves until SIGTERM or SIGINT; the snapshots live in the store at
/// `root` (`--root`).
pub fn run(root: Option<&std::path::Path>, a: SnapshotterArgs) -> i32 {
    let root = root
        .map(PathBuf::from)
        .unwrap_or_else(crate::store::default_root);
    let address = a.address;
    let ready = || {
        eprintln!(
            "unionctl: serving containerd snapshots from {} on {}",
            root.display(),
            address.display()
        )
    };
    match snapshotter::serve(&root, &address, ready) {
        Ok(()) => 0,
        Err(e) => super::fail("unionctl snapshotter", e),
    }
}
