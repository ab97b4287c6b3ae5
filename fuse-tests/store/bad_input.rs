//! Bad input: broken archives and a full disk leave the store unchanged.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::harness::*;

use super::layout::*;
use super::*;

/// Each broken archive is refused with a message naming the problem, and
/// the store (empty, or holding the fixture) is exactly as before.
#[test]
fn bad_archives_leave_the_store_unchanged() {
    let s = Scratch::new("store-bad");
    let full = s.path("full");
    import(&full, &fixture(), "multi:latest");
    let empty = s.path("empty");
    ok(&empty, &["images"]);

    type Break = fn(&Path);
    let cases: &[(&str, Break, &str, &str)] = &[
        (
            "wrong digest of a layer blob",
            |l| {
                // The same tar, compressed differently: a valid blob whose
                // digest is not the manifest's.
                let p = blob(l, LAYER2);
                let out = run(Command::new("sh")
                    .arg("-c")
                    .arg("gzip -dc \"$0\" | gzip -1 -n > \"$0.new\" && mv \"$0.new\" \"$0\"")
                    .arg(&p));
                assert!(out.status.success(), "recompress: {out:?}");
            },
            "digest mismatch",
            "digest mismatch",
        ),
        (
            "truncated base layer",
            |l| {
                let p = blob(l, BASE);
                let f = fs::OpenOptions::new().write(true).open(&p).expect("open");
                f.set_len(20 << 20).expect("truncate");
            },
            // Present in the full store: the blob's digest fails; in the
            // empty one, unpacking it does.
            "digest mismatch",
            BASE,
        ),
        (
            "missing layer blob",
            |l| fs::remove_file(blob(l, LAYER3)).expect("rm"),
            LAYER3,
            LAYER3,
        ),
        (
            "wrong diff id in the config",
            |l| {
                rewrite(
                    l,
                    |c| {
                        c["rootfs"]["diff_ids"][4] = format!("sha256:{}", "0".repeat(64)).into();
                    },
                    |_| {},
                )
            },
            "diff_ids",
            "diff_ids",
        ),
        (
            "path traversal",
            |l| add_layer(l, &[(b"../../escaped", b'0', b"x", b"")]),
            "escape",
            "escape",
        ),
        (
            "write through a planted symlink",
            |l| {
                add_layer(
                    l,
                    &[
                        (b"planted", b'2', b"", b"/tmp"),
                        (b"planted/pwned", b'0', b"x", b""),
                    ],
                )
            },
            "symlink",
            "symlink",
        ),
        (
            "not an image at all",
            |l| {
                fs::remove_file(l.join("index.json")).expect("rm");
                fs::remove_file(l.join("oci-layout")).expect("rm");
            },
            "neither an OCI layout",
            "neither an OCI layout",
        ),
    ];
    for (i, (what, break_it, want_full, want_empty)) in cases.iter().enumerate() {
        let layout = copy_fixture(&s, &format!("bad{i}"));
        break_it(&layout);
        for (store, want) in [(&full, want_full), (&empty, want_empty)] {
            let before = store_listing(store);
            let err = refused(
                store,
                &[
                    "image",
                    "import",
                    "--name",
                    "bad",
                    layout.to_str().expect("utf-8"),
                ],
                want,
            );
            assert!(
                err.lines().count() <= 3,
                "{what}: a short message, got: {err}"
            );
            assert_listing_same(what, &before, &store_listing(store));
            assert_eq!(
                fs::read_dir(store.join("tmp")).expect("tmp").count(),
                0,
                "{what}: staging left behind"
            );
        }
    }
    assert!(!s.root.join("escaped").exists() && !Path::new("/tmp/pwned").exists());
    // The store still works.
    let mp = create_and_mount(&full, "multi", "after");
    assert!(mp.join("opt/x/g").is_file());
    ok(&full, &["umount", "after"]);
}

/// A disk that fills up during the import: a clear error (ENOSPC, naming
/// the layer), and the store as it was.
#[test]
fn full_disk_import() {
    let s = Scratch::new("store-full");
    let root = s.dir("small");
    let out = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&root));
    assert!(out.status.success(), "mount tmpfs: {out:?}");
    ok(&root, &["images"]);
    let before = store_listing(&root);
    let err = refused(
        &root,
        &["image", "import", fixture().to_str().expect("utf-8")],
        "No space left on device",
    );
    assert!(err.contains(BASE), "the message names the layer: {err}");
    assert_listing_same("after ENOSPC", &before, &store_listing(&root));
    let out = run(Command::new("umount").arg(&root));
    assert!(out.status.success(), "umount tmpfs: {out:?}");
}
