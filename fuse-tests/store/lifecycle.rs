//! Concurrent and killed imports, the container lifecycle, the driver trait.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

use super::*;

/// Two imports of the same image at once: both succeed, the layers are
/// there once, nothing is left in staging.
#[test]
fn concurrent_imports() {
    let s = Scratch::new("store-concurrent");
    let root = s.path("store");
    ok(&root, &["images"]);
    let spawn = |name: &str| {
        Command::new(bin("unionctl"))
            .arg("--root")
            .arg(&root)
            .args(["image", "import", "--json", "--name", name])
            .arg(fixture())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let children: Vec<_> = (0..3).map(|i| spawn(&format!("multi{i}"))).collect();
    // Meanwhile, readers: each opening of the store looks for abandoned
    // staging dirs, and must never take a live import's for one.
    let readers = {
        let root = root.clone();
        std::thread::spawn(move || {
            for _ in 0..40 {
                let out = uc(&root, &["images", "--json"]);
                assert!(
                    out.status.success(),
                    "images during imports: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    let mut unpacked = 0;
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "concurrent import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        unpacked += r["layers_unpacked"].as_u64().expect("count");
    }
    readers.join().expect("the readers");
    assert!(unpacked >= 5, "someone unpacked the layers");
    let images = json(&root, &["images", "--json"]);
    assert_eq!(
        images.as_array().map(Vec::len),
        Some(1),
        "one image: {images:#}"
    );
    assert_eq!(
        images[0]["names"].as_array().map(Vec::len),
        Some(3),
        "with all three names: {images:#}"
    );
    assert_eq!(
        json(&root, &["layers", "--json"]).as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
    let mp = create_and_mount(&root, "multi1", "c");
    assert_eq!(ok(&root, &["diff", "c"]), "");
    assert!(mp.join("etc/apt/sources.list").is_file());
    ok(&root, &["umount", "c"]);
}

/// An import killed half-way leaves a staging dir that the next command
/// removes: the store is then as if the import never ran.
#[test]
fn killed_import_leaves_nothing() {
    let s = Scratch::new("store-killed");
    let root = s.path("store");
    ok(&root, &["images"]);
    let empty = store_listing(&root);
    let mut child = Command::new(bin("unionctl"))
        .arg("--root")
        .arg(&root)
        .args(["image", "import"])
        .arg(fixture())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Until the base layer is half unpacked.
    let staged = wait_for(Duration::from_secs(60), || {
        fs::read_dir(root.join("tmp"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    });
    assert!(staged, "the import never started staging");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the import finished before it was killed; kill it sooner"
    );
    assert!(fs::read_dir(root.join("tmp")).expect("tmp").count() > 0);
    ok(&root, &["images"]);
    assert_listing_same("after a killed import", &empty, &store_listing(&root));
}

/// create / mount / umount / rm, by name and by path, and what is refused.
#[test]
fn container_lifecycle() {
    let s = Scratch::new("store-lifecycle");
    let root = s.path("store");
    import(&root, &fixture(), "multi:latest");
    refused(&root, &["create", "nosuch", "c"], "does not exist");
    refused(&root, &["create", "multi", "../evil"], "container name");
    let mp = create_and_mount(&root, "multi", "c");
    refused(&root, &["create", "multi", "c"], "already exists");
    refused(&root, &["mount", "c"], "mounted already");
    refused(&root, &["rm", "c"], "unmount it first");
    refused(&root, &["image", "rm", "multi"], "used by container");
    ok(&root, &["umount", "c"]);
    assert!(!is_mountpoint(&mp));
    refused(&root, &["umount", "c"], "not mounted");

    // At a mountpoint of our choosing; unmounted by path.
    let elsewhere = s.dir("elsewhere");
    ok(&root, &["mount", "c", elsewhere.to_str().expect("utf-8")]);
    assert!(is_mountpoint(&elsewhere));
    fs::write(elsewhere.join("root/note"), "x").expect("write");
    let ps = json(&root, &["ps", "--json"]);
    assert_eq!(
        ps[0]["mounted_at"],
        elsewhere.canonicalize().expect("abs").display().to_string()
    );
    ok(&root, &["umount", elsewhere.to_str().expect("utf-8")]);
    assert!(!is_mountpoint(&elsewhere));

    // Changes survive a remount.
    let mp = PathBuf::from(ok(&root, &["mount", "c"]).trim());
    assert_eq!(fs::read_to_string(mp.join("root/note")).expect("read"), "x");
    ok(&root, &["rm", "--force", "c"]);
    assert!(!is_mountpoint(&mp));
    assert_eq!(
        json(&root, &["ps", "--json"]).as_array().map(Vec::len),
        Some(0)
    );

    // The unionctl mount form with --lower still works beside the store form.
    let lower = s.dir("plain-lower");
    fs::write(lower.join("f"), "plain").expect("write");
    let mnt = s.dir("plain-mnt");
    ok(
        &root,
        &[
            "mount",
            "--lower",
            lower.to_str().expect("utf-8"),
            mnt.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(fs::read_to_string(mnt.join("f")).expect("read"), "plain");
    ok(&root, &["umount", mnt.to_str().expect("utf-8")]);

    let removed = json(&root, &["image", "rm", "--json", "multi"]);
    assert_eq!(removed.as_array().map(Vec::len), Some(5));
    assert_eq!(
        json(&root, &["layers", "--json"]).as_array().map(Vec::len),
        Some(0)
    );
}

/// The Driver trait's operations through the library (mounting, which
/// forks a daemon, through the command: a test process has threads).
#[test]
fn driver_operations() {
    use layerfs::store::driver::Driver;
    use layerfs::store::tar::Compression;
    use layerfs::store::{Digest, Store};

    let s = Scratch::new("store-driver");
    let root = s.path("store");
    import(&root, &fixture(), "multi:latest");
    let store = Store::open(&root).expect("open the store");
    let base = "sha256:145e56ab90dc4071e4c7ca0259e6f21aec10b3672cf08a6ab9e4042be1b95120";
    assert!(store.exists(base));
    assert!(!store.exists("d1"));
    store.create_rw("d1", "multi").expect("create_rw");
    assert!(store.exists("d1"));
    assert!(store.create_rw("d1", "multi").is_err(), "a second d1");

    let mp = PathBuf::from(ok(&root, &["mount", "d1"]).trim());
    fs::write(mp.join("etc/driver"), "12345").expect("write");
    fs::remove_file(mp.join("etc/issue")).expect("rm");
    ok(&root, &["umount", "d1"]);

    let changes: Vec<String> = store
        .changes("d1")
        .expect("changes")
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect();
    assert_eq!(changes, ["C /etc", "A /etc/driver", "D /etc/issue"]);
    assert_eq!(store.diff_size("d1").expect("diff_size"), 5);

    let mut tar = Vec::new();
    let blob = store.diff("d1", &mut tar, Compression::None).expect("diff");
    assert_eq!(blob.digest, Digest::of(&tar));
    assert_eq!(blob.diff_id, blob.digest, "uncompressed: one digest");

    // A layer from that tar: named by its content.
    let top = Digest::parse(base).expect("digest");
    let pending = store.create(Some(&top)).expect("create");
    let id = store
        .apply_diff(pending, &mut &tar[..])
        .expect("apply_diff");
    assert_eq!(id, blob.diff_id);
    assert!(store.exists(&id.to_string()));
    assert_eq!(store.layer(&id).expect("record").source, "apply-diff");
    // Used by no image: remove works, and cleanup would have done it.
    store.remove(&id.to_string()).expect("remove the layer");
    assert!(!store.exists(&id.to_string()));
    let again = store.create(None).expect("create");
    let gz = {
        let mut gz = Vec::new();
        store
            .diff("d1", &mut gz, Compression::Gzip)
            .expect("diff gz");
        gz
    };
    assert_eq!(store.apply_diff(again, &mut &gz[..]).expect("apply gz"), id);
    let cleaned = store.cleanup().expect("cleanup");
    assert_eq!(cleaned.layers, vec![id.clone()]);
    // Both incarnations of that layer had been indexed when committed;
    // the stack d1 was mounted on is all there and stays.
    assert_eq!(cleaned.indexes, 2, "index records of the removed layers");
    // An abandoned create leaves nothing.
    drop(store.create(None).expect("create"));
    assert_eq!(fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
    // A layer an image uses is not removed.
    assert!(store.remove(base).is_err());

    let status: BTreeMap<String, String> = store.status().expect("status").into_iter().collect();
    assert_eq!(status["Layers"], "5");
    assert_eq!(status["Containers"], "1 (0 mounted)");
    store.remove("d1").expect("remove the container");
    assert!(!store.exists("d1"));
}
