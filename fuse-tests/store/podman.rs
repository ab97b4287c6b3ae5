//! Imports and a round trip, compared with podman on kernel overlayfs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::harness::*;

use super::*;

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
