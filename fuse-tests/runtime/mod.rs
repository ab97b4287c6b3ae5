//! The runtime end to end: `unionctl run`, `exec`, `kill`, `state` on the
//! real Debian fixture image (imported once into a store kept under the
//! test base dir, reused across runs: its layers are immutable).
//!
//! Every test ends by asserting that nothing of its container is left: no
//! mount of its rootfs, no cgroup directory, no process carrying its name
//! (the supervisor, the mount daemon forked from it, and the container's
//! processes, whose command lines all include the name).
//!
//! The rootless tests run the same commands as an unprivileged user with a
//! subordinate id range (created here if missing, as CI's podman script
//! does, with /dev/fuse opened to everyone), on a store that user imported.
//!
//! This file holds what both kinds share: the stores, container names,
//! the `assert_clean*` checks, the test user, and the checks several tests
//! make alike. The tests are in [`rootful`], [`rootless`] and [`bundle`]
//! (roots that are not a store image: `--lower` dirs and OCI bundles).

mod bundle;
mod rootful;
mod rootless;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;

/// Imports the fixture as image `fixture` into the store at `root` with
/// `unionctl` (as `uc` makes it, given the store), unless it is there
/// already; `prepare` runs on the emptied store dir before the import.
fn ensure_fixture(
    root: &Path,
    uc: impl Fn(&Path) -> Command,
    prepare: impl FnOnce(&Path),
    what: &str,
) {
    let images = run(uc(root).args(["images", "--json"]));
    let have = images.status.success() && text(&images.stdout).contains("\"fixture\"");
    if !have {
        let _ = std::fs::remove_dir_all(root);
        prepare(root);
        let out = run(uc(root)
            .args(["image", "import", "--name", "fixture"])
            .arg(fixture()));
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    }
}

/// The store holding the fixture as image `fixture`.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        require_environment();
        let root = test_base().join("runtime-store");
        ensure_fixture(
            &root,
            |r| {
                let mut c = Command::new(bin("unionctl"));
                c.arg("--root").arg(r);
                c
            },
            |_| {},
            "importing the fixture",
        );
        root
    })
}

fn name(tag: &str) -> String {
    format!("rt-{tag}-{}", std::process::id())
}

fn uc() -> Command {
    let mut c = Command::new(bin("unionctl"));
    c.arg("--root").arg(store()).stdin(Stdio::null());
    c
}

/// `unionctl run --name NAME ARGS…`.
fn run_ct(name: &str, args: &[&str]) -> Output {
    run(uc().args(["run", "--name", name]).args(args))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Container `name`'s dir in the store at `store`.
fn store_container(store: &Path, name: &str) -> PathBuf {
    store.join("containers").join(name)
}

/// Container `name`'s runtime state dir, rootful.
fn state_dir(name: &str) -> PathBuf {
    Path::new("/run/layerfs/containers").join(name)
}

fn merged(name: &str) -> PathBuf {
    store_container(store(), name).join("merged")
}

fn lower_rootfs(name: &str) -> PathBuf {
    state_dir(name).join("rootfs")
}

/// Whether `mountinfo` (a /proc/PID/mountinfo) has a mount at `path`.
fn mounted_at(mountinfo: &str, path: &str) -> bool {
    mountinfo
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

/// Nothing of container `name` is left running or mounted.
#[track_caller]
fn assert_clean(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for rootfs in [merged(name), lower_rootfs(name)] {
        let want = rootfs.to_string_lossy().into_owned();
        assert!(!mounted_at(&mounts, &want), "{want} is still mounted");
    }
    for base in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let d = Path::new(base).join("layerfs").join(name);
        assert!(!d.exists(), "cgroup {d:?} is left behind");
    }
    let stray: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<i32>().is_ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = text(&cmd).replace('\0', " ");
            (cmd.contains(name) && !process_gone(pid)).then(|| format!("{pid}: {cmd}"))
        })
        .collect();
    assert!(stray.is_empty(), "processes left behind: {stray:?}");
}

/// The container's state as `unionctl state NAME` prints it.
fn state_of(name: &str) -> String {
    let out = run(uc().args(["state", name]));
    text(&out.stdout)
}

/// Waits for a background run, killing it (and failing) rather than
/// hanging the suite if it does not end.
#[track_caller]
fn finish(mut child: Child) -> Output {
    let ended = wait_for(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the container's supervisor did not exit within 30 s");
    }
    child.wait_with_output().expect("collect run's output")
}

/// The layer dirs of image `fixture` in the store at `store`, bottom
/// first, from `unionctl images --json` as `images` printed it.
fn fixture_layers(store: &Path, images: &Output) -> Vec<PathBuf> {
    let v: serde_json::Value = serde_json::from_slice(&images.stdout).expect("images json");
    let digests: Vec<String> = v
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["names"].to_string().contains("fixture"))
        })
        .and_then(|i| i["layers"].as_array())
        .map(|l| {
            l.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .expect("fixture layers");
    digests
        .iter()
        .map(|d| {
            store
                .join("layers")
                .join(d.trim_start_matches("sha256:"))
                .join("diff")
        })
        .collect()
}

/// `--lower DIR` for each of the fixture's layers, top first.
fn lower_args(store: &Path, images: &Output) -> Vec<String> {
    fixture_layers(store, images)
        .iter()
        .rev()
        .flat_map(|d| ["--lower".to_string(), d.display().to_string()])
        .collect()
}

/// Runs each of `cases` (run's arguments after `--name`, the exit code
/// and a piece of the message it must fail with) through `run_it`, and
/// after each asserts `clean(name)`, and that neither a store container
/// in `store` nor the runtime state dir `state` is left.
#[track_caller]
fn assert_failures_leave_nothing(
    name: &str,
    cases: &[(&[&str], i32, &str)],
    run_it: impl Fn(&[&str]) -> Output,
    clean: impl Fn(&str),
    store: &Path,
    state: &Path,
) {
    for &(args, code, want) in cases {
        let out = run_it(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        clean(name);
        assert!(
            !store_container(store, name).exists(),
            "{args:?} left a store container"
        );
        assert!(!state.exists(), "{args:?} left runtime state");
    }
}

/// The device nodes every container's /dev has, one a line in `s`.
#[track_caller]
fn assert_default_devices(s: &str) {
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(s.lines().any(|l| l == dev), "/dev/{dev} missing: {s}");
    }
}

/// The interfaces named in a /proc/net/dev.
fn interfaces(net_dev: &[u8]) -> Vec<String> {
    text(net_dev)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(i, _)| i.trim().to_string()))
        .collect()
}

/// `cat /proc/net/dev` in a `--rm` container `n`, run by `run_it` (as
/// [`run_ct`] and [`run_rl`] do) with the options `extra`.
fn net_dev(run_it: impl Fn(&str, &[&str]) -> Output, n: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--rm"];
    args.extend(extra);
    args.extend(["fixture", "--", "sh", "-c", "cat /proc/net/dev", n]);
    run_it(n, &args)
}

/// The host's /proc/net/dev.
fn host_net_dev() -> String {
    std::fs::read_to_string("/proc/net/dev").unwrap_or_default()
}

/// Line `at` of an exec's output `s`, the count of /proc's pid dirs, is
/// under 10: only the container's few processes are visible.
#[track_caller]
fn assert_few_processes(lines: &[&str], at: usize, s: &str) {
    let nprocs: u32 = lines
        .get(at)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(999);
    assert!(nprocs < 10, "{nprocs} processes visible: {s}");
}

/// A second run of a running container's name is refused.
#[track_caller]
fn assert_already_running(out: &Output) {
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
}

/// Sends TERM to container `n` by `kill` (run as `cmd` makes it) and
/// waits for its run, whose trap prints `got TERM` and exits 42.
#[track_caller]
fn kill_term_exits_42(cmd: impl Fn() -> Command, n: &str, child: Child) {
    let out = run(cmd().args(["kill", n, "TERM"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got TERM"));
}

/// A run killed for using more than its `--memory 64M`.
#[track_caller]
fn assert_oom_killed_at_64m(out: &Output) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("killed by the OOM killer"), "{err}");
    assert!(err.contains("64 MiB"), "{err}");
}

// ------------------------------------------------------------ the test user

/// The unprivileged test user, its ids and its subordinate ranges.
struct RootlessUser {
    name: &'static str,
    uid: u32,
    gid: u32,
    subuid: (u32, u32),
    subgid: (u32, u32),
}

const ROOTLESS_USER: &str = "layerfs-rootless";

fn id_of(flag: &str) -> Option<u32> {
    let out = Command::new("id")
        .args([flag, ROOTLESS_USER])
        .output()
        .ok()?;
    text(&out.stdout).trim().parse().ok()
}

fn sub_range(file: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == ROOTLESS_USER).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Creates (once, idempotently) the test user with a subuid and subgid
/// range, and lets everyone open /dev/fuse (0600 on these hosts), as
/// fuse-tests/podman/run.sh does. Fails the test if any of it cannot be
/// done: rootless is tested, never skipped.
fn rootless_user() -> &'static RootlessUser {
    static USER: OnceLock<RootlessUser> = OnceLock::new();
    USER.get_or_init(|| {
        require_environment();
        if id_of("-u").is_none() {
            let out = run(Command::new("useradd").args([
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                ROOTLESS_USER,
            ]));
            assert!(out.status.success(), "useradd: {}", text(&out.stderr));
        }
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            if sub_range(file).is_none() {
                let out = run(Command::new("usermod").args([flag, "300000-365535", ROOTLESS_USER]));
                assert!(
                    out.status.success(),
                    "usermod {flag}: {}",
                    text(&out.stderr)
                );
            }
        }
        let (subuid, subgid) = (
            sub_range("/etc/subuid").expect("the test user's subuid range"),
            sub_range("/etc/subgid").expect("the test user's subgid range"),
        );
        assert!(
            subuid.1 >= 65536 && subgid.1 >= 65536,
            "ranges too small: {subuid:?} {subgid:?}"
        );
        std::fs::set_permissions(
            "/dev/fuse",
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .expect("chmod 0666 /dev/fuse");
        let out = run(Command::new("runuser").args([
            "-u",
            ROOTLESS_USER,
            "--",
            "sh",
            "-c",
            ": <>/dev/fuse",
        ]));
        assert!(
            out.status.success(),
            "{ROOTLESS_USER} cannot open /dev/fuse: {}",
            text(&out.stderr)
        );
        RootlessUser {
            name: ROOTLESS_USER,
            uid: id_of("-u").expect("uid of the test user"),
            gid: id_of("-g").expect("gid of the test user"),
            subuid,
            subgid,
        }
    })
}

/// `unionctl` run as the test user, with a clean environment (no
/// XDG_RUNTIME_DIR: records go to /tmp/layerfs-UID).
fn as_user(u: &RootlessUser, store: Option<&Path>) -> Command {
    let mut c = Command::new("runuser");
    c.args([
        "-u",
        u.name,
        "--",
        "env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/nonexistent",
    ])
    .arg(bin("unionctl"));
    if let Some(s) = store {
        c.arg("--root").arg(s);
    }
    c.stdin(Stdio::null());
    c
}

/// The fixture imported by the test user (rootless layers: user.* xattr
/// whiteouts, owners in user.containers.override_stat).
fn rootless_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let u = rootless_user();
        let root = store()
            .parent()
            .expect("the test base dir")
            .join("runtime-store-rootless");
        ensure_fixture(
            &root,
            |r| as_user(u, Some(r)),
            |r| {
                std::fs::create_dir_all(r).expect("create the rootless store dir");
                std::os::unix::fs::chown(r, Some(u.uid), Some(u.gid)).expect("chown the store");
            },
            "rootless import",
        );
        root
    })
}

fn ruc() -> Command {
    as_user(rootless_user(), Some(rootless_store()))
}

/// `unionctl run --name NAME ARGS…` as the test user.
fn run_rl(name: &str, args: &[&str]) -> Output {
    run(ruc().args(["run", "--name", name]).args(args))
}

fn rootless_state_dir(u: &RootlessUser, name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/layerfs-{}/containers", u.uid)).join(name)
}

fn rootless_state_of(name: &str) -> String {
    text(&run(ruc().args(["state", name])).stdout)
}

/// [`assert_clean`], and the rootfs mounted in no mount namespace at all
/// (rootless, it lived only in the supervisor's).
#[track_caller]
fn assert_clean_rootless(name: &str) {
    assert_clean(name);
    let merged = store_container(rootless_store(), name).join("merged");
    let want = merged.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok())
    {
        let Ok(mi) = std::fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        assert!(
            !mounted_at(&mi, &want),
            "{want} is still mounted in the mount namespace of pid {:?}",
            e.file_name()
        );
    }
}

/// The `inside outside count` lines of a /proc/PID/uid_map or gid_map.
fn map_lines(s: &str) -> Vec<Vec<u64>> {
    s.lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .filter(|v: &Vec<u64>| v.len() == 3)
        .collect()
}
