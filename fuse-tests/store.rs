//! The layer store, end to end through `unionctl`: importing the real
//! five-layer fixture (OCI layout, OCI archive, docker-archive) and
//! comparing the mounted container with the same image unpacked by podman
//! on kernel overlayfs; a round trip (change, commit, export, import into a
//! fresh store, and podman running the export); bad archives that must
//! leave the store exactly as it was; concurrent and killed imports; the
//! container lifecycle.
//!
//! podman and skopeo run against a private store in the scratch dir (never
//! the machine's), one test at a time.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::*;

/// What the fixture's files are, to prove the tests never write into it.
fn fixture_fingerprint() -> Vec<(String, u64, i64)> {
    let mut out = Vec::new();
    let blobs = fixture().join("blobs/sha256");
    for e in fs::read_dir(&blobs).expect("fixture blobs") {
        let e = e.expect("entry");
        let m = e.metadata().expect("stat");
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            m.len(),
            m.mtime(),
        ));
    }
    out.sort();
    out
}

fn uc(root: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("unionctl"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null()))
}

/// Runs `unionctl --root ROOT ARGS`; panics with its stderr on failure.
#[track_caller]
fn ok(root: &Path, args: &[&str]) -> String {
    let out = uc(root, args);
    assert!(
        out.status.success(),
        "unionctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs it and expects a failure whose message contains `want`.
#[track_caller]
fn refused(root: &Path, args: &[&str], want: &str) -> String {
    let out = uc(root, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "unionctl {args:?} succeeded; expected a failure mentioning {want:?}"
    );
    assert!(
        err.contains(want),
        "unionctl {args:?}: expected {want:?} in the error, got: {err}"
    );
    err
}

fn json(root: &Path, args: &[&str]) -> serde_json::Value {
    let out = ok(root, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn import(root: &Path, src: &Path, name: &str) -> serde_json::Value {
    json(
        root,
        &[
            "image",
            "import",
            "--json",
            "--name",
            name,
            src.to_str().expect("utf-8 path"),
        ],
    )
}

/// Creates container `name` on `image` and mounts it at its own dir;
/// returns the mountpoint.
fn create_and_mount(root: &Path, image: &str, name: &str) -> PathBuf {
    ok(root, &["create", image, name]);
    let out = ok(root, &["mount", name]);
    let mp = PathBuf::from(out.trim());
    assert!(
        is_mountpoint(&mp),
        "{mp:?} is not mounted after `mount {name}`"
    );
    mp
}

/// Everything under a store root: type, mode, owner, size and a content
/// hash of every file (layer contents included), without times (creating
/// and removing a staging dir changes `tmp/`'s mtime and nothing else).
fn store_listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("below").display().to_string();
            let hash = if m.is_file() && m.len() < (1 << 20) {
                format!("{:x}", fnv(&fs::read(&p).expect("read")))
            } else {
                String::new()
            };
            out.insert(
                rel,
                format!(
                    "{:o} {}:{} {} {hash}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.len() }
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[track_caller]
fn assert_listing_same(
    what: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("gone:    {k} {v}")),
            Some(w) if w != v => diffs.push(format!("changed: {k} {v} -> {w}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diffs.push(format!("new:     {k} {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: the store changed:\n{}",
        diffs.join("\n")
    );
}

fn sha256_hex(p: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(p));
    assert!(out.status.success(), "sha256sum {p:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

// ---------------------------------------------------------------------------
// podman and skopeo on a private store.

static PODMAN: Mutex<()> = Mutex::new(());

/// A private containers/storage (kernel overlay, rootful) under a scratch
/// dir. c/image still writes its blob-info cache to /var/lib/containers
/// and podman its network state to /run/containers (not configurable);
/// they are removed again if they were not there before.
struct Podman {
    dir: PathBuf,
    _serial: std::sync::MutexGuard<'static, ()>,
    /// Machine dirs podman and c/image create (blob-info cache, network
    /// state), removed at the end if they were not there before.
    absent_before: Vec<&'static str>,
}

impl Podman {
    fn new(s: &Scratch) -> Podman {
        let serial = PODMAN.lock().unwrap_or_else(|p| p.into_inner());
        for tool in ["podman", "skopeo"] {
            let out = Command::new(tool).arg("--version").output();
            assert!(
                out.is_ok_and(|o| o.status.success()),
                "{tool} is needed for the store tests (Debian package {tool})"
            );
        }
        let dir = s.dir("podman");
        for d in ["root", "runroot", "tmp", "net"] {
            fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 netns = \"none\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"file\"\n\
                 tmp_dir = \"{0}/tmp\"\n\
                 [network]\n\
                 network_config_dir = \"{0}/net\"\n",
                dir.display()
            ),
        )
        .expect("containers.conf");
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/runroot\"\n",
                dir.display()
            ),
        )
        .expect("storage.conf");
        Podman {
            absent_before: ["/var/lib/containers", "/run/containers"]
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect(),
            dir,
            _serial: serial,
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .stdin(Stdio::null());
        c
    }

    #[track_caller]
    fn podman(&self, args: &[&str]) -> String {
        let out = run(self.cmd("podman").args(args));
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `skopeo copy SRC` into this store as `name`.
    #[track_caller]
    fn copy_in(&self, src: &str, name: &str) {
        let dest = format!(
            "containers-storage:[overlay@{0}/root+{0}/runroot]{name}",
            self.dir.display()
        );
        let out = run(self
            .cmd("skopeo")
            .args(["--insecure-policy", "copy", "-q", src, &dest]));
        assert!(
            out.status.success(),
            "skopeo copy {src} {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Mounts image `name` (kernel overlayfs) and returns where.
    fn image_mount(&self, name: &str) -> PathBuf {
        PathBuf::from(self.podman(&["image", "mount", name]).trim())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = run(self.cmd("podman").args(["image", "unmount", "-a", "-f"]));
        let _ = run(self.cmd("podman").args(["rm", "-a", "-f"]));
        let _ = run(self.cmd("podman").args(["rmi", "-a", "-f"]));
        for p in &self.absent_before {
            let _ = fs::remove_dir_all(p);
        }
    }
}

// ---------------------------------------------------------------------------

/// The fixture imported, mounted as a container, and compared with the
/// same image as podman unpacks it on kernel overlayfs: types, modes,
/// owners, sizes, contents, symlink targets, xattrs, hard-link groups.
#[test]
fn import_matches_podman() {
    let before = fixture_fingerprint();
    let s = Scratch::new("store-podman");
    let root = s.path("store");
    let report = import(&root, &fixture(), "multi:latest");
    assert_eq!(report["format"], "oci-layout");
    assert_eq!(report["layers_unpacked"], 5, "{report:#}");
    let layers = report["images"][0]["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 5);
    for l in layers {
        assert_eq!(l["status"], "unpacked");
        assert_eq!(l["indexed"], true, "each new layer is indexed: {l}");
    }
    assert_eq!(
        layers[0]["diff_id"],
        "sha256:145e56ab90dc4071e4c7ca0259e6f21aec10b3672cf08a6ab9e4042be1b95120"
    );
    // Listings, human and JSON.
    let images = json(&root, &["images", "--json"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1));
    assert_eq!(images[0]["names"][0], "multi:latest");
    assert_eq!(
        json(&root, &["layers", "--json"]).as_array().map(Vec::len),
        Some(5)
    );
    assert!(ok(&root, &["images"]).contains("multi:latest"));

    // Importing it again unpacks nothing.
    let again = import(&root, &fixture(), "multi:latest");
    assert_eq!(again["layers_unpacked"], 0, "{again:#}");
    assert_eq!(again["images"][0]["new"], false);

    let mp = create_and_mount(&root, "multi", "c1");
    let ps = json(&root, &["ps", "--json"]);
    assert_eq!(ps[0]["name"], "c1");
    assert_eq!(ps[0]["mounted_at"], mp.display().to_string());
    let ours = snapshot(&mp, View::Merged);
    // What the fixture's README promises, seen through layerfs.
    for gone in ["usr/share/doc", "etc/motd", "opt/x/f"] {
        assert!(ours.get(gone).is_none(), "{gone} should be deleted");
    }
    assert_eq!(ours.get("usr/share/man").map(|e| e.kind), Some('f'));
    assert_eq!(ours.get("opt/x/fifo").map(|e| e.kind), Some('p'));
    assert_eq!(ours.get("opt/x/g").map(|e| e.perm), Some(0o4755));
    assert_eq!(
        ours.get("opt/x/hard").and_then(|e| e.link_group.clone()),
        Some("opt/x/g".to_string())
    );
    assert_eq!(ours.get("opt/deep/a/b/c/file").map(|e| e.uid), Some(1000));
    assert_eq!(
        fs::read_dir(mp.join("etc/apt")).expect("etc/apt").count(),
        1,
        "etc/apt is opaque: only sources.list"
    );
    assert_eq!(
        ok(&root, &["diff", "c1"]),
        "",
        "a fresh container has no changes"
    );

    let pm = Podman::new(&s);
    pm.copy_in(
        &format!("oci:{}:latest", fixture().display()),
        "localhost/lfs-multi:latest",
    );
    let theirs = snapshot(&pm.image_mount("localhost/lfs-multi:latest"), View::Merged);
    assert!(
        theirs.0.len() > 4000,
        "podman's tree is too small: {}",
        theirs.0.len()
    );
    assert_same(
        "layerfs container vs podman (kernel overlay)",
        &ours,
        &theirs,
    );
    drop(pm);

    ok(&root, &["umount", "c1"]);
    assert!(!is_mountpoint(&mp));
    assert_eq!(fixture_fingerprint(), before, "the fixture was written to");
}

/// The same image as an OCI archive and as a docker-archive (both written
/// by skopeo) imports to the same tree as the OCI layout.
#[test]
fn archives_import_like_the_layout() {
    let s = Scratch::new("store-archives");
    let oci_archive = s.path("multi.oci.tar");
    let docker_archive = s.path("multi.docker.tar");
    {
        let pm = Podman::new(&s);
        for (kind, path) in [
            ("oci-archive", &oci_archive),
            ("docker-archive", &docker_archive),
        ] {
            let dest = format!("{kind}:{}:localhost/multi:latest", path.display());
            let out = run(pm.cmd("skopeo").args([
                "--insecure-policy",
                "copy",
                "-q",
                &format!("oci:{}:latest", fixture().display()),
                &dest,
            ]));
            assert!(
                out.status.success(),
                "skopeo copy to {dest}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let root = s.path("store");
    import(&root, &fixture(), "layout");
    let reference = snapshot(&create_and_mount(&root, "layout", "ref"), View::Merged);
    for (path, format, name) in [
        (&oci_archive, "oci-archive", None),
        (
            &docker_archive,
            "docker-archive",
            Some("localhost/multi:latest"),
        ),
    ] {
        let r = s.path(&format!("store-{format}"));
        let report = json(
            &r,
            &["image", "import", "--json", path.to_str().expect("utf-8")],
        );
        assert_eq!(report["format"], format, "{report:#}");
        assert_eq!(report["layers_unpacked"], 5, "{report:#}");
        if let Some(n) = name {
            assert_eq!(
                report["images"][0]["names"][0], n,
                "docker RepoTags become names"
            );
        }
        let id = report["images"][0]["id"].as_str().expect("id").to_string();
        let mp = create_and_mount(&r, &id, "c");
        assert_same(format, &reference, &snapshot(&mp, View::Merged));
        ok(&r, &["umount", "c"]);
    }
    ok(&root, &["umount", "ref"]);
}

/// Import, change files in the container, commit, export as an OCI layout,
/// import into a fresh store: the same tree. podman loads the export,
/// shows the same tree and runs it.
#[test]
fn round_trip_commit_export_import() {
    let s = Scratch::new("store-roundtrip");
    let root = s.path("store");
    import(&root, &fixture(), "multi:latest");
    let mp = create_and_mount(&root, "multi", "work");
    // Add, modify, delete a lower file, rmdir+mkdir, chmod and chown a
    // lower file, a new symlink, a new hard link.
    fs::write(mp.join("etc/added"), "added\n").expect("add");
    fs::OpenOptions::new()
        .append(true)
        .open(mp.join("etc/os-release"))
        .and_then(|mut f| f.write_all(b"changed=1\n"))
        .expect("modify");
    fs::remove_file(mp.join("etc/issue")).expect("delete a lower file");
    fs::remove_dir_all(mp.join("var/log")).expect("rm -r a lower dir");
    fs::create_dir(mp.join("var/log")).expect("mkdir it again");
    fs::write(mp.join("var/log/fresh"), "fresh\n").expect("file in the new dir");
    fs::set_permissions(
        mp.join("etc/hostname"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    std::os::unix::fs::chown(mp.join("etc/debian_version"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::symlink("added", mp.join("etc/added-link")).expect("symlink");
    fs::hard_link(mp.join("etc/added"), mp.join("etc/added-hard")).expect("hard link");

    let diff = ok(&root, &["diff", "work"]);
    for line in [
        "A /etc/added",
        // /etc/os-release is a symlink to ../usr/lib/os-release.
        "C /usr/lib/os-release",
        "D /etc/issue",
        "C /var/log",
        "A /var/log/fresh",
        "D /var/log/dpkg.log",
        "C /etc/hostname",
        "C /etc/debian_version",
        "A /etc/added-link",
        "C /etc",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "{line:?} missing from diff:\n{diff}"
        );
    }
    assert!(
        !diff.contains("/usr/share") && !diff.contains("/opt"),
        "nothing changed there:\n{diff}"
    );
    let changes = json(&root, &["diff", "--json", "work"]);
    assert!(changes
        .as_array()
        .expect("list")
        .iter()
        .any(|c| c["path"] == "/etc/issue" && c["kind"] == "D"));

    let changed = snapshot(&mp, View::Merged);
    assert!(changed.get("etc/issue").is_none());

    // The container's layer alone, as engines want it.
    let layer_tar = s.path("work.tar.gz");
    ok(
        &root,
        &["export-layer", "work", layer_tar.to_str().expect("utf-8")],
    );
    let listing = run(Command::new("tar").arg("tzf").arg(&layer_tar));
    let names = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "etc/.wh.issue",
        "var/log/.wh..wh..opq",
        "etc/added",
        "var/log/fresh",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} missing from the layer tar:\n{names}"
        );
    }

    ok(&root, &["umount", "work"]);
    let committed = json(
        &root,
        &["commit", "--json", "work", "localhost/roundtrip:latest"],
    );
    assert!(committed["image"].is_string(), "{committed:#}");
    let images = json(&root, &["images", "--json"]);
    let rt = images
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["names"][0] == "localhost/roundtrip:latest")
        .expect("the committed image is listed");
    assert_eq!(rt["layers"].as_array().map(Vec::len), Some(6));

    let layout = s.path("exported");
    ok(
        &root,
        &[
            "image",
            "export",
            "localhost/roundtrip",
            layout.to_str().expect("utf-8"),
        ],
    );
    assert!(layout.join("oci-layout").is_file() && layout.join("index.json").is_file());
    // Every blob is named by its digest.
    for e in fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(sha256_hex(&p), name, "blob {p:?}");
    }

    let fresh = s.path("fresh");
    let report = json(
        &fresh,
        &["image", "import", "--json", layout.to_str().expect("utf-8")],
    );
    assert_eq!(
        report["images"][0]["names"][0],
        "localhost/roundtrip:latest"
    );
    let mp2 = create_and_mount(&fresh, "localhost/roundtrip", "again");
    assert_same(
        "round trip through commit and export",
        &changed,
        &snapshot(&mp2, View::Merged),
    );
    ok(&fresh, &["umount", "again"]);

    let pm = Podman::new(&s);
    pm.copy_in(
        &format!("oci:{}:latest", layout.display()),
        "localhost/roundtrip:latest",
    );
    let theirs = snapshot(&pm.image_mount("localhost/roundtrip:latest"), View::Merged);
    assert_same("the exported image as podman unpacks it", &changed, &theirs);
    pm.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/roundtrip:latest",
        "/bin/true",
    ]);
    let out = pm.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/roundtrip:latest",
        "cat",
        "/etc/added",
        "/var/log/fresh",
    ]);
    assert_eq!(out, "added\nfresh\n");
}

// ---------------------------------------------------------------------------
// Bad archives.

/// A copy of the fixture to break.
fn copy_fixture(s: &Scratch, tag: &str) -> PathBuf {
    let dst = s.path(tag);
    let out = run(Command::new("cp").arg("-r").arg(fixture()).arg(&dst));
    assert!(out.status.success(), "cp -r fixture");
    let out = run(Command::new("chmod").arg("-R").arg("u+w").arg(&dst));
    assert!(out.status.success(), "chmod copy");
    dst
}

fn blob(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex)
}

const MANIFEST: &str = "e5b5fd80a825ce522757f25f94c9d77041ce400c698a5e1488c45e5ed63a0b08";
const CONFIG: &str = "8efc0d0a19f54549e80714f69eb4d91ad162c2e8b86ea0135a104878ae23fbf7";
const BASE: &str = "1a816cd357b157c19ce966bff0aa0456867857536128bcb48e2bdc34f5c9d6c7";
const LAYER2: &str = "fc6b20b9925962225586a249470d32c821c78188b7a9714c542e608c577d5435";
const LAYER3: &str = "bc5f72a10c80c19cf0b55418a94b5b0bae5b6383b0ac8931b0f59c910ee5aa83";

/// Writes `bytes` as a blob; returns its digest hex.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let tmp = layout.join("blobs/sha256/tmp");
    fs::write(&tmp, bytes).expect("write blob");
    let hex = sha256_hex(&tmp);
    fs::rename(&tmp, blob(layout, &hex)).expect("rename blob");
    hex
}

/// Rewrites the layout's config with `edit`, then the manifest (and
/// `edit_manifest`) and index.json so that every digest matches again.
fn rewrite(
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
fn tar_member(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8], link: &[u8]) {
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
type Member<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

fn add_layer(layout: &Path, members: &[Member<'_>]) {
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
    let staged = wait_for(Duration::from_secs(20), || {
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
