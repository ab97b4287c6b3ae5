//! Feeds arbitrary bytes to `unpack_layer` (plain, gzip or zstd: the
//! decoder is picked by the magic bytes, so the fuzzer finds all three)
//! and checks that nothing appears beside the destination.
//!
//! Run: `cargo +nightly fuzz run unpack_layer` from the repository root.
//! Seeds: any layer tar, e.g. the blobs of shared/fixtures/oci-multilayer.

#![no_main]

use layerfs::store::tar::{unpack_layer, UnpackOptions, WhiteoutForm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(scratch) = tempfile::tempdir() else {
        return;
    };
    let rootless = UnpackOptions {
        whiteouts: WhiteoutForm::UserXattr,
        allow_devices: false,
        preserve_owners: false,
        override_stat: true,
    };
    for (i, opts) in [UnpackOptions::default(), rootless].iter().enumerate() {
        let dest = scratch.path().join(format!("dest{i}"));
        std::fs::create_dir(&dest).expect("create dest");
        let _ = unpack_layer(data, &dest, opts, &mut |_| {});
    }
    let beside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside.len(), 2, "something was written beside dest: {beside:?}");
});
