//! The containerd proxy snapshotter, with the real containerd (Debian's
//! 1.6) run from a private config: root, state and sockets in the scratch
//! dir, CRI off, `proxy_plugins.layerfs` pointing at a `unionctl
//! snapshotter` started here. containerd performs the returned mounts
//! itself, through `mount.fuse3` and the `layerfs` binary on its PATH.
//!
//! What it proves: the plugin loads; an OCI archive unpacks through
//! layerfs and gives the tree containerd's own overlayfs snapshotter gives;
//! `ctr run` works on it; a container's writes commit into a snapshot other
//! snapshots see; restarts of either side lose nothing; errors come back as
//! containerd's own kinds; nothing stays mounted.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{
    bin, daemon_pid_for, fixture, is_mountpoint, process_gone, run, snapshot, wait_for, Scratch,
    View,
};

const IMAGE: &str = "docker.io/library/fixture:latest";
const NS: &str = "layerfs-test";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// PATH with this build's binaries first, so containerd (and the shims and
/// `mount.fuse3` it runs) find `layerfs`.
fn path_env() -> String {
    let dir = bin("layerfs");
    let dir = dir.parent().expect("bin dir").display().to_string();
    format!(
        "{dir}:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    )
}

struct Containerd {
    scratch: Scratch,
    containerd: Option<Child>,
    snapshotter: Option<Child>,
}

impl Containerd {
    fn start() -> Containerd {
        for tool in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "runc",
            "mount.fuse3",
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(found, "{tool} is not installed (apt-get install containerd runc fuse3); this test must run");
        }
        let scratch = Scratch::new("ctrd");
        let r = &scratch.root;
        let config = format!(
            r#"version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"
[proxy_plugins]
  [proxy_plugins.layerfs]
    type = "snapshot"
    address = "{r}/snapshotter.sock"
"#,
            r = r.display()
        );
        std::fs::write(scratch.path("config.toml"), config).expect("config");
        let mut c = Containerd {
            scratch,
            containerd: None,
            snapshotter: None,
        };
        c.start_snapshotter();
        c.start_containerd();
        c
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.scratch.path(rel)
    }

    fn store(&self) -> PathBuf {
        self.p("store")
    }

    fn start_snapshotter(&mut self) {
        let sock = self.p("snapshotter.sock");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.p("snapshotter.log"))
            .expect("log");
        let child = Command::new(bin("unionctl"))
            .arg("--root")
            .arg(self.store())
            .arg("snapshotter")
            .arg("--address")
            .arg(&sock)
            .env("PATH", path_env())
            .env("LAYERFS_LOG", "info,layerfs=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start unionctl snapshotter");
        self.snapshotter = Some(child);
        assert!(
            wait_for(Duration::from_secs(60), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "the snapshotter never listened: {}",
            self.log("snapshotter.log")
        );
    }

    fn start_containerd(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.p("containerd.log"))
            .expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.p("config.toml"))
            .env("PATH", path_env())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.containerd = Some(child);
        assert!(
            wait_for(Duration::from_secs(60), || self
                .ctr_try(&["version"])
                .status
                .success()),
            "containerd never answered: {}",
            self.log("containerd.log")
        );
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.p(name)).unwrap_or_default()
    }

    fn stop(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let gone = wait_for(Duration::from_secs(60), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !gone {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn ctr_try(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.p("containerd.sock"))
            .args(["--namespace", NS])
            .args(args)
            .env("PATH", path_env())
            .output()
            .expect("run ctr")
    }

    #[track_caller]
    fn ctr(&self, args: &[&str]) -> String {
        let o = self.ctr_try(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}{}\n--- snapshotter log:\n{}",
            text(&o.stdout),
            text(&o.stderr),
            self.log("snapshotter.log")
        );
        text(&o.stdout)
    }

    /// `ctr` that must fail; returns its error text.
    #[track_caller]
    fn ctr_fails(&self, args: &[&str]) -> String {
        let o = self.ctr_try(args);
        assert!(
            !o.status.success(),
            "ctr {args:?} should fail: {}",
            text(&o.stdout)
        );
        text(&o.stderr)
    }

    /// Waits until containerd reaches the snapshotter again (Usage is one
    /// of the calls its metadata layer passes on).
    fn wait_reconnected(&self, committed: &str) {
        let args = ["snapshots", "--snapshotter", "layerfs", "usage", committed];
        assert!(
            wait_for(Duration::from_secs(30), || self
                .ctr_try(&args)
                .status
                .success()),
            "containerd never reached the restarted snapshotter: {}",
            self.log("containerd.log")
        );
    }

    /// Runs containerd's garbage collection now (it removes the snapshots
    /// nothing references from the snapshotter).
    fn collect_garbage(&self) {
        let id = self.ctr(&["leases", "create"]);
        let id = id.split_whitespace().next().expect("lease id").to_string();
        self.ctr(&["leases", "rm", "--sync", &id]);
    }

    fn ls(&self) -> String {
        self.ctr(&["snapshots", "--snapshotter", "layerfs", "ls"])
    }

    /// Mounts of layerfs unions of this store, and anything mounted in the
    /// scratch dir.
    fn mounts(&self) -> Vec<String> {
        let store = self.store().join("snapshots").display().to_string();
        let root = self.scratch.root.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&store) || l.contains(&root))
            .map(str::to_string)
            .collect()
    }

    #[track_caller]
    fn assert_nothing_mounted(&self, after: &str) {
        let m = self.mounts();
        assert!(
            m.is_empty(),
            "after {after}, still mounted:\n{}",
            m.join("\n")
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in ["t-run", "t-write"] {
            let _ = self.ctr_try(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr_try(&["tasks", "rm", "-f", id]);
            let _ = self.ctr_try(&["containers", "rm", id]);
        }
        Self::stop(&mut self.containerd);
        Self::stop(&mut self.snapshotter);
    }
}

/// The chain ID of the fixture's top layer: the name of its committed
/// snapshot.
fn top_chain_id(c: &Containerd) -> String {
    let out = c.ctr(&["snapshots", "--snapshotter", "layerfs", "ls"]);
    // KEY PARENT KIND: the committed snapshot nobody names as parent.
    let rows: Vec<(String, String)> = out
        .lines()
        .skip(1)
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(1).unwrap_or(&"").to_string()))
        })
        .collect();
    let tops: Vec<&String> = rows
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !rows.iter().any(|(_, p)| p == *k))
        .collect();
    assert_eq!(tops.len(), 1, "expected one top snapshot in:\n{out}");
    tops[0].clone()
}

#[test]
fn containerd_runs_images_on_layerfs_snapshots() {
    let mut c = Containerd::start();

    // The plugin loaded.
    let plugins = c.ctr(&["plugins", "ls"]);
    let row = plugins
        .lines()
        .find(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("layerfs"))
        .unwrap_or_else(|| panic!("no layerfs snapshotter in:\n{plugins}"));
    assert!(row.trim_end().ends_with("ok"), "{row}");

    // Import the fixture as an OCI archive, unpacked by both snapshotters.
    let archive = c.p("fixture.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(fixture())
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let a = archive.display().to_string();
    for sn in ["layerfs", "overlayfs"] {
        c.ctr(&[
            "images",
            "import",
            "--base-name",
            "docker.io/library/fixture",
            "--snapshotter",
            sn,
            &a,
        ]);
    }
    let snaps = c.ls();
    assert_eq!(snaps.matches("Committed").count(), 5, "{snaps}");
    c.assert_nothing_mounted("the import");

    // The merged rootfs is containerd's overlayfs one, exactly.
    let (ml, mo) = (c.p("mnt-layerfs"), c.p("mnt-overlayfs"));
    for (sn, m) in [("layerfs", &ml), ("overlayfs", &mo)] {
        std::fs::create_dir_all(m).expect("mkdir");
        c.ctr(&[
            "images",
            "mount",
            "--snapshotter",
            sn,
            IMAGE,
            &m.display().to_string(),
        ]);
    }
    let ours = snapshot(&ml, View::Merged);
    let theirs = snapshot(&mo, View::Merged);
    assert!(ours.0.len() > 4000, "{} entries", ours.0.len());
    crate::harness::assert_same("layerfs vs overlayfs snapshotter", &ours, &theirs);
    for m in [&ml, &mo] {
        c.ctr(&["images", "unmount", "--rm", &m.display().to_string()]);
    }
    c.assert_nothing_mounted("images unmount");

    // ctr run on it.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "layerfs",
        IMAGE,
        "t-run",
        "cat",
        "/etc/os-release",
    ]);
    assert!(
        out.contains("bookworm") && out.contains("appended"),
        "{out}"
    );
    c.assert_nothing_mounted("run --rm");

    // Restarts of both sides lose nothing.
    let before = c.ls();
    Containerd::stop(&mut c.snapshotter);
    c.start_snapshotter();
    Containerd::stop(&mut c.containerd);
    c.start_containerd();
    assert_eq!(c.ls(), before);

    // A container's writes, committed, show in a view of the new snapshot.
    c.ctr(&[
        "run",
        "--snapshotter",
        "layerfs",
        IMAGE,
        "t-write",
        "sh",
        "-c",
        "echo written > /new-file && rm /etc/debian_version && mkdir -p /opt/x/y",
    ]);
    let top = top_chain_id(&c);
    c.ctr(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "commit",
        "t-write-committed",
        "t-write",
    ]);
    // Some ctr versions commit without marking the result a root.
    c.ctr(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "label",
        "t-write-committed",
        "containerd.io/gc.root=test",
    ]);
    let info = c.ctr(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "info",
        "t-write-committed",
    ]);
    assert!(info.contains("Committed") && info.contains(&top), "{info}");
    let view = c.p("view");
    std::fs::create_dir_all(&view).expect("mkdir");
    // `ctr snapshots view`, unlike `prepare`, leaves the view unreferenced:
    // containerd's garbage collector removes it whenever it next runs,
    // which it schedules on its own. Mark it a root, as a real client holds
    // it with a lease (again if it was collected before the label landed),
    // and collect now to prove it stays.
    let view_args = [
        "snapshots",
        "--snapshotter",
        "layerfs",
        "view",
        "--mounts",
        "t-view",
        "t-write-committed",
    ];
    let label_args = [
        "snapshots",
        "--snapshotter",
        "layerfs",
        "label",
        "t-view",
        "containerd.io/gc.root=test",
    ];
    let mut mounts = c.ctr(&view_args);
    for _ in 0..5 {
        if c.ctr_try(&label_args).status.success() {
            break;
        }
        mounts = c.ctr(&view_args);
    }
    c.collect_garbage();
    assert!(c.ls().contains("t-view"), "{}", c.ls());
    // Mounted as containerd mounts it: `mount.fuse3 SOURCE TARGET -t layerfs -o …`.
    let m: serde_json::Value = serde_json::from_str(mounts.trim()).expect("mounts JSON");
    let m = &m[0];
    assert_eq!(m["Type"], "fuse3.layerfs", "{mounts}");
    let opts: Vec<&str> = m["Options"]
        .as_array()
        .expect("options")
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    let mount_view = || {
        run(Command::new("mount.fuse3")
            .arg(m["Source"].as_str().expect("source"))
            .arg(&view)
            .args(["-t", "layerfs", "-o", &opts.join(",")])
            .env("PATH", path_env()));
    };
    mount_view();
    assert_eq!(
        std::fs::read_to_string(view.join("new-file")).expect("new file"),
        "written\n"
    );
    assert!(!view.join("etc/debian_version").exists());
    assert!(view.join("opt/x/y").is_dir() && view.join("opt/x/g").exists());
    let usage = c.ctr(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "usage",
        "t-write-committed",
    ]);
    assert!(usage.contains("t-write-committed"), "{usage}");

    // A union whose daemon died is unmounted when the snapshotter starts.
    let pid = daemon_pid_for(&view).expect("the view's daemon");
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Its threads outlive the group leader's zombie for a moment: wait for
    // the connection itself to be gone.
    assert!(wait_for(Duration::from_secs(60), || process_gone(pid)
        && matches!(
            nix::sys::statfs::statfs(&view),
            Err(nix::errno::Errno::ENOTCONN)
        )));
    Containerd::stop(&mut c.snapshotter);
    c.start_snapshotter();
    // containerd redials a proxy plugin after a backoff; calls fail fast
    // until then (its garbage collection too, which retries next time).
    c.wait_reconnected(&top);
    assert!(
        !is_mountpoint(&view),
        "the dead union is still mounted: {:?}\n{}",
        c.mounts(),
        c.log("snapshotter.log")
    );
    mount_view();
    assert!(is_mountpoint(&view));

    // Errors reach the user as containerd's kinds. containerd's metadata
    // layer answers these before asking the snapshotter; the snapshotter's
    // own codes are tested in src/snapshotter.
    let e = c.ctr_fails(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "rm",
        "t-write-committed",
    ]);
    assert!(
        e.contains("failed precondition") || e.contains("child"),
        "{e}"
    );
    let e = c.ctr_fails(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "prepare",
        "x",
        "no-such-parent",
    ]);
    assert!(e.contains("not found"), "{e}");
    let e = c.ctr_fails(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "prepare",
        "t-view",
        &top,
    ]);
    assert!(e.contains("already exists"), "{e}");

    // Removing a snapshot whose union is still mounted unmounts it.
    // containerd removes the key at once and the snapshotter's snapshot in
    // its next garbage collection, which deleting a lease with --sync runs.
    c.ctr(&["snapshots", "--snapshotter", "layerfs", "rm", "t-view"]);
    c.ctr(&[
        "snapshots",
        "--snapshotter",
        "layerfs",
        "rm",
        "t-write-committed",
    ]);
    let _ = c.ctr_try(&["containers", "rm", "t-write"]);
    c.collect_garbage();
    assert!(
        wait_for(Duration::from_secs(60), || c.mounts().is_empty()),
        "after snapshots rm, still mounted: {:?}\n{}\n--- containerd:\n{}",
        c.mounts(),
        c.log("snapshotter.log"),
        c.log("containerd.log")
    );

    // Concurrent requests: prepares and removes on one parent at once.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let addr = c.p("containerd.sock");
            let top = top.clone();
            std::thread::spawn(move || {
                let ctr = |args: &[&str]| {
                    Command::new("ctr")
                        .arg("--address")
                        .arg(&addr)
                        .args(["--namespace", NS, "snapshots", "--snapshotter", "layerfs"])
                        .args(args)
                        .output()
                        .expect("ctr")
                };
                let key = format!("par-{i}");
                let p = ctr(&["prepare", &key, &top]);
                let r = ctr(&["rm", &key]);
                (
                    p.status.success() && r.status.success(),
                    text(&p.stderr) + &text(&r.stderr),
                )
            })
        })
        .collect();
    for h in handles {
        let (ok, err) = h.join().expect("thread");
        assert!(ok, "{err}");
    }
    assert_eq!(c.ls(), before, "concurrent prepare/remove left something");

    // The image goes, and with it every layer and directory.
    c.ctr(&["images", "rm", "--sync", IMAGE]);
    assert!(
        wait_for(Duration::from_secs(60), || c.ls().lines().count() <= 1),
        "snapshots left after images rm: {}",
        c.ls()
    );
    let left: Vec<_> = std::fs::read_dir(c.store().join("snapshots"))
        .expect("snapshots dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "table.json")
        .collect();
    assert!(left.is_empty(), "snapshot dirs left: {left:?}");
    c.assert_nothing_mounted("images rm");
}
