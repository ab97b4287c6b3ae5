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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;

fn fixture() -> PathBuf {
    let p = std::env::var_os("LAYERFS_OCI_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/oci-multilayer")
        });
    assert!(
        p.join("index.json").is_file(),
        "the OCI fixture is missing at {p:?} (set LAYERFS_OCI_FIXTURE)"
    );
    p
}

/// The store holding the fixture as image `fixture`.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        require_environment();
        let base = std::env::var_os("LAYERFS_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/layerfs-tests"));
        let root = base.join("runtime-store");
        let images = Command::new(bin("unionctl"))
            .arg("--root")
            .arg(&root)
            .args(["images", "--json"])
            .output()
            .expect("run unionctl images");
        let have = images.status.success()
            && String::from_utf8_lossy(&images.stdout).contains("\"fixture\"");
        if !have {
            let _ = std::fs::remove_dir_all(&root);
            let out = run(Command::new(bin("unionctl"))
                .arg("--root")
                .arg(&root)
                .args(["image", "import", "--name", "fixture"])
                .arg(fixture()));
            assert!(
                out.status.success(),
                "importing the fixture: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
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

fn merged(name: &str) -> PathBuf {
    store().join("containers").join(name).join("merged")
}

fn lower_rootfs(name: &str) -> PathBuf {
    PathBuf::from("/run/layerfs/containers")
        .join(name)
        .join("rootfs")
}

/// Nothing of container `name` is left running or mounted.
#[track_caller]
fn assert_clean(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for rootfs in [merged(name), lower_rootfs(name)] {
        let want = rootfs.to_string_lossy().into_owned();
        assert!(
            !mounts
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some(want.as_str())),
            "{want} is still mounted"
        );
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

#[test]
fn runs_debian_as_pid_1_with_its_hostname() {
    let n = name("basic");
    let out = run_ct(
        &n,
        &[
            "--rm",
            "--hostname",
            "box1",
            "fixture",
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; echo pid=$$; hostname; cat /etc/hostname; exit 7",
            &n,
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit status: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Debian GNU/Linux 12"), "{stdout}");
    assert!(stdout.contains("pid=1\n"), "{stdout}");
    assert_eq!(stdout.matches("box1\n").count(), 2, "{stdout}");
    // The command itself is pid 1, not a child of an init of ours.
    let out = run_ct(&n, &["--rm", "fixture", "--", "readlink", "/proc/self"]);
    assert_eq!(text(&out.stdout), "1\n", "{}", text(&out.stderr));
    assert_clean(&n);
    // --rm: the store container is gone too.
    assert!(!store().join("containers").join(&n).exists());
}

#[test]
fn default_container_privileges_and_mounts() {
    let n = name("privs");
    let out = run_ct(
        &n,
        &[
            "--rm",
            "fixture",
            "--",
            "sh",
            "-c",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
             ls /dev; grep -E ' /(sys|proc|dev/pts|dev/shm|dev/mqueue) ' /proc/self/mounts; \
             echo x > /sys/kernel/x 2>/dev/null || echo sys-ro; \
             grep -q ' /proc/sys proc ro,' /proc/self/mounts && echo procsys-ro; \
             wc -c < /proc/keys; ls /proc/acpi 2>/dev/null | wc -l",
            &n,
        ],
    );
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("CapEff:\t00000000a80425fb"), "{s}");
    assert!(s.contains("CapBnd:\t00000000a80425fb"), "{s}");
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(s.lines().any(|l| l == dev), "/dev/{dev} missing: {s}");
    }
    assert!(s.contains("sysfs /sys sysfs ro"), "{s}");
    assert!(s.contains("sys-ro"), "{s}");
    assert!(s.contains("procsys-ro"), "{s}");
    // /proc/keys reads empty (masked by /dev/null), /proc/acpi is empty.
    assert!(s.ends_with("0\n0\n"), "{s}");
    // A non-root user keeps no capabilities.
    let out = run_ct(
        &n,
        &[
            "--rm",
            "--user",
            "1000:1000",
            "fixture",
            "--",
            "sh",
            "-c",
            "id -u; id -g; grep CapEff /proc/self/status",
            &n,
        ],
    );
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.starts_with("1000\n1000\n"), "{s}");
    assert!(s.contains("CapEff:\t0000000000000000"), "{s}");
    assert_clean(&n);
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    let n = name("oom");
    // tail buffers a newline-free stream without bound.
    let out = run_ct(
        &n,
        &[
            "--rm",
            "--memory",
            "64M",
            "fixture",
            "--",
            "tail",
            "/dev/zero",
            &n,
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("killed by the OOM killer"), "{err}");
    assert!(err.contains("64 MiB"), "{err}");
    assert_clean(&n);
}

#[test]
fn pids_limit_bounds_a_fork_loop() {
    let n = name("pids");
    let out = run_ct(
        &n,
        &[
            "--rm",
            "--pids",
            "50",
            "fixture",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); echo $i; done",
            &n,
        ],
    );
    let started: Vec<u32> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let max = started.iter().copied().max().unwrap_or(0);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the fork loop ran to its end");
    assert!(
        (10..50).contains(&max),
        "{max} processes started under --pids 50"
    );
    assert!(err.contains("fork"), "{err}");
    // The sleeps die with pid 1.
    assert_clean(&n);
}

#[test]
fn network_none_has_only_loopback() {
    let n = name("net");
    let out = run_ct(
        &n,
        &["--rm", "fixture", "--", "sh", "-c", "cat /proc/net/dev", &n],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ifaces: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(i, _)| i.trim().to_string()))
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
    // --network host sees the host's interfaces.
    let host = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let out = run_ct(
        &n,
        &[
            "--rm",
            "--network",
            "host",
            "fixture",
            "--",
            "sh",
            "-c",
            "cat /proc/net/dev",
            &n,
        ],
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        host.lines().count(),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&n);
}

#[test]
fn writes_land_in_the_upper_and_survive_a_restart() {
    let n = name("persist");
    let out = run_ct(
        &n,
        &[
            "fixture",
            "--",
            "sh",
            "-c",
            "echo kept > /root/note; rm /etc/motd.new 2>/dev/null; true",
            &n,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let upper = store().join("containers").join(&n).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("root/note"))
            .ok()
            .as_deref(),
        Some("kept\n")
    );
    // The init layer stays out of the container's layer.
    assert!(!upper.join("etc/hostname").exists());
    assert!(state_of(&n).contains("exited(0)"), "{}", state_of(&n));
    assert_clean(&n);
    let out = run_ct(&n, &["fixture", "--", "sh", "-c", "cat /root/note", &n]);
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    assert_clean(&n);
    let out = run(uc().args(["rm", &n]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!Path::new("/run/layerfs/containers").join(&n).exists());
    assert!(!store().join("containers").join(&n).exists());
}

/// Starts a long-running container in the background and waits until
/// `state` shows it running.
fn start_background(n: &str, extra: &[&str], script: &str) -> Child {
    let child = uc()
        .args(["run", "--rm", "--name", n])
        .args(extra)
        .args(["fixture", "--", "sh", "-c", script, n])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unionctl run");
    assert!(
        wait_for(Duration::from_secs(20), || state_of(n).contains("running")),
        "container {n} did not start: {}",
        state_of(n)
    );
    child
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

#[test]
fn exec_joins_the_namespaces_and_kill_delivers_signals() {
    let n = name("exec");
    let child = start_background(
        &n,
        &["--cpus", "0.5", "--memory", "128M", "--pids", "64"],
        "trap 'echo got TERM; exit 42' TERM; echo here > /marker; while :; do sleep 0.1; done",
    );
    assert!(wait_for(Duration::from_secs(10), || merged(&n)
        .join("marker")
        .exists()));
    let out = run(uc().args([
        "exec",
        &n,
        "--",
        "sh",
        "-c",
        "cat /marker; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $HOSTNAME; ls /proc | grep -c '^[0-9]'",
    ]));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.first(), Some(&"here"), "{s}");
    assert!(
        lines.get(1).is_some_and(|l| l.contains("trap")),
        "pid 1 is not the container's command: {s}"
    );
    assert_eq!(lines.get(2), Some(&n.as_str()), "{s}");
    // Only the container's few processes are visible.
    let nprocs: u32 = lines
        .get(4)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(999);
    assert!(nprocs < 10, "{nprocs} processes visible: {s}");
    // The limits are on the container's cgroup, and exec joined it.
    let cg = |ctl: &str, file: &str| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join("layerfs")
                .join(&n)
                .join(file),
        )
        .unwrap_or_default()
    };
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000\n");
    assert_eq!(cg("cpu", "cpu.cfs_period_us"), "100000\n");
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        format!("{}\n", 128 << 20)
    );
    assert_eq!(cg("pids", "pids.max"), "64\n");
    let out = run(uc().args(["exec", &n, "--", "cat", "/proc/self/cgroup"]));
    // In its own cgroup namespace, the container's cgroup is the root.
    assert!(
        text(&out.stdout).contains("pids:/\n"),
        "{}",
        text(&out.stdout)
    );
    // exec's exit status comes back.
    let out = run(uc().args(["exec", &n, "--", "sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3));
    let out = run(uc().args(["exec", &n, "--", "no-such-binary"]));
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    // A second run of the same name is refused and leaves the first alone.
    let out = run_ct(&n, &["fixture", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
    assert!(state_of(&n).contains("running"), "{}", state_of(&n));

    let out = run(uc().args(["kill", &n, "TERM"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got TERM"));
    assert_clean(&n);
    // Not running any more: exec and kill refuse.
    let out = run(uc().args(["kill", &n]));
    assert!(!out.status.success());
}

#[test]
fn the_supervisor_forwards_signals() {
    let n = name("fwd");
    let child = start_background(
        &n,
        &[],
        "trap 'echo got INT; exit 5' INT; touch /ready; while :; do sleep 0.1; done",
    );
    // Running is not enough: pid 1 drops a signal it has no handler for,
    // so wait until the trap is set.
    assert!(wait_for(Duration::from_secs(10), || merged(&n)
        .join("ready")
        .exists()));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the supervisor");
    let out = finish(child);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got INT"));
    assert_clean(&n);
}

#[test]
fn sigkill_reports_137_and_a_dead_supervisor_is_not_running() {
    let n = name("kill9");
    let child = start_background(&n, &[], "while :; do sleep 1; done");
    let out = run(uc().args(["kill", &n, "KILL"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_clean(&n);

    // The supervisor killed outright: the container dies with it and is
    // never shown as running.
    let n = name("orphan");
    let mut child = start_background(&n, &[], "while :; do sleep 1; done");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        wait_for(Duration::from_secs(10), || !state_of(&n)
            .contains("running")),
        "{}",
        state_of(&n)
    );
    // Leftovers of a killed supervisor are cleaned by the next start.
    let out = run_ct(&n, &["--rm", "fixture", "--", "true", &n]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_clean(&n);
}

#[test]
fn failures_leave_nothing_behind() {
    let n = name("fail");
    let cases: [(&[&str], i32, &str); 8] = [
        // Fails inside the container, after the mount and the cgroup exist.
        (
            &["--volume", "/tmp:/etc/passwd", "fixture", "--", "true"],
            125,
            "volume /tmp on /etc/passwd",
        ),
        (&["fixture", "--", "/no/such/binary"], 127, "No such file"),
        (&["fixture", "--", "no-such-command"], 127, "not found"),
        (
            &["--memory", "12Q", "fixture", "--", "true"],
            125,
            "memory size",
        ),
        (&["--cpus", "many", "fixture", "--", "true"], 125, "--cpus"),
        (&["no-such-image", "--", "true"], 125, "does not exist"),
        (
            &["--user", "nobody-here", "fixture", "--", "true"],
            125,
            "not in the container's /etc/passwd",
        ),
        (
            &["--volume", "/no/such/dir:/mnt", "fixture", "--", "true"],
            125,
            "/no/such/dir",
        ),
    ];
    for (args, code, want) in cases {
        let out = run_ct(&n, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_clean(&n);
        assert!(
            !store().join("containers").join(&n).exists(),
            "{args:?} left a store container"
        );
        assert!(
            !Path::new("/run/layerfs/containers").join(&n).exists(),
            "{args:?} left runtime state"
        );
    }
}

#[test]
fn lower_dirs_and_volumes() {
    let n = name("lower");
    // The fixture's layers from the store, top first.
    let images = run(uc().args(["images", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&images.stdout).expect("images json");
    let layers: Vec<String> = v
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
    let scratch = Scratch::new("rt-vol");
    let vol = scratch.dir("vol");
    let ro = scratch.dir("ro");
    std::fs::write(ro.join("r"), "readonly\n").expect("write");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--name".into(), n.clone()];
    for d in layers.iter().rev() {
        let hex = d.trim_start_matches("sha256:");
        args.push("--lower".into());
        args.push(
            store()
                .join("layers")
                .join(hex)
                .join("diff")
                .display()
                .to_string(),
        );
    }
    args.extend([
        "--volume".to_string(),
        format!("{}:/data", vol.display()),
        "--volume".to_string(),
        format!("{}:/in/ro:ro", ro.display()),
        "--env".to_string(),
        "GREETING=hi there".to_string(),
        "--workdir".to_string(),
        "/data".to_string(),
        "--".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        "grep -h ^ID= /etc/os-release; echo \"$GREETING\" > out; pwd; cat /in/ro/r; \
             echo no > /in/ro/w 2>/dev/null || echo ro-refused"
            .to_string(),
        n.clone(),
    ]);
    let out = run(uc().args(&args));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(s, "ID=debian\n/data\nreadonly\nro-refused\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).ok().as_deref(),
        Some("hi there\n")
    );
    assert!(!ro.join("w").exists());
    assert_clean(&n);
    assert!(!Path::new("/run/layerfs/containers").join(&n).exists());
}

/// The fixture's bottom layer (Debian minbase itself) as a bundle root.
fn bottom_layer() -> PathBuf {
    let images = run(uc().args(["images", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&images.stdout).expect("images json");
    let first = v
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["names"].to_string().contains("fixture"))
        })
        .and_then(|i| i["layers"][0].as_str().map(str::to_string))
        .expect("fixture layers");
    store()
        .join("layers")
        .join(first.trim_start_matches("sha256:"))
        .join("diff")
}

#[test]
fn an_oci_bundle_runs_with_its_config() {
    let n = name("bundle");
    let scratch = Scratch::new("rt-bundle");
    let bundle = scratch.dir("b");
    let shared = scratch.dir("shared");
    std::fs::write(shared.join("f"), "from the host\n").expect("write");
    let config = |extra_mount: serde_json::Value, extra_ns: serde_json::Value| {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": bottom_layer(), "readonly": false},
            "hostname": "bundled",
            "process": {
                "cwd": "/tmp",
                "user": {"uid": 0, "gid": 0},
                "env": ["PATH=/usr/bin:/bin", "FROM_CONFIG=yes"],
                "args": ["sh", "-c",
                    "hostname; pwd; echo $FROM_CONFIG; cat /mnt/shared/f; \
                     grep -c : /proc/net/dev; \
                     i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done", &n]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/mnt/shared", "type": "bind", "source": shared,
                 "options": ["rbind", "ro"]},
                extra_mount
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, extra_ns],
                "resources": {"pids": {"limit": 20}, "memory": {"limit": 104857600}}
            }
        })
    };
    let write = |c: serde_json::Value| {
        std::fs::write(bundle.join("config.json"), c.to_string()).expect("write config")
    };
    let b = bundle.to_string_lossy().into_owned();
    let same_bind = serde_json::json!({"destination": "/mnt/shared", "type": "bind",
        "source": shared, "options": ["rbind", "ro"]});
    write(config(
        same_bind.clone(),
        serde_json::json!({"type": "uts"}),
    ));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    let s = text(&out.stdout);
    let err = text(&out.stderr);
    // The fork loop hits the bundle's pids limit.
    assert!(!out.status.success(), "{s}");
    assert!(err.contains("fork"), "{err}");
    assert!(
        s.starts_with("bundled\n/tmp\nyes\nfrom the host\n1\n"),
        "{s}\n{err}"
    );
    assert_clean(&n);
    // What it cannot honour is refused by name, before anything is made.
    write(config(
        serde_json::json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs"}),
        serde_json::json!({"type": "uts"}),
    ));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("tmpfs"), "{}", text(&out.stderr));
    write(config(same_bind, serde_json::json!({"type": "user"})));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("user namespaces"),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&n);
    assert!(!Path::new("/run/layerfs/containers").join(&n).exists());
}

/// A fresh run's containers and their status in `ps`: created (never run),
/// exited(N), oom, running; `ps --json` carries the same as `status`.
#[test]
fn ps_shows_each_containers_status() {
    let (created, exited, oom, live) = (
        name("ps-new"),
        name("ps-exit"),
        name("ps-oom"),
        name("ps-live"),
    );
    let out = run(uc().args(["create", "fixture", &created]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_ct(&exited, &["fixture", "--", "sh", "-c", "exit 3", &exited]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = run_ct(
        &oom,
        &[
            "--memory",
            "64M",
            "fixture",
            "--",
            "tail",
            "/dev/zero",
            &oom,
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let child = start_background(&live, &[], "while :; do sleep 0.1; done");
    let ps = text(&run(uc().arg("ps")).stdout);
    let status_of = |n: &str| {
        ps.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    };
    assert!(
        ps.lines().next().is_some_and(|h| h.contains("STATUS")),
        "{ps}"
    );
    assert_eq!(status_of(&created).as_deref(), Some("created"), "{ps}");
    assert_eq!(status_of(&exited).as_deref(), Some("exited(3)"), "{ps}");
    assert_eq!(status_of(&oom).as_deref(), Some("oom"), "{ps}");
    assert_eq!(status_of(&live).as_deref(), Some("running"), "{ps}");
    let json = run(uc().args(["ps", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("ps --json");
    let json_status = |n: &str| {
        v.as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == n))
            .map(|c| c["status"].clone())
    };
    assert_eq!(json_status(&exited), Some("exited(3)".into()), "{v}");
    assert_eq!(json_status(&live), Some("running".into()), "{v}");
    let out = run(uc().args(["kill", &live, "KILL"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    for n in [&created, &exited, &oom, &live] {
        let out = run(uc().args(["rm", n]));
        assert!(
            out.status.success() || n == &live,
            "rm {n}: {}",
            text(&out.stderr)
        );
        assert_clean(n);
        assert!(!store().join("containers").join(n).exists(), "{n} left");
    }
}

// ------------------------------------------------------------------ rootless

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
        let images = run(as_user(u, Some(&root)).args(["images", "--json"]));
        let have = images.status.success() && text(&images.stdout).contains("\"fixture\"");
        if !have {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("create the rootless store dir");
            std::os::unix::fs::chown(&root, Some(u.uid), Some(u.gid)).expect("chown the store");
            let out = run(as_user(u, Some(&root))
                .args(["image", "import", "--name", "fixture"])
                .arg(fixture()));
            assert!(
                out.status.success(),
                "rootless import: {}",
                text(&out.stderr)
            );
        }
        root
    })
}

fn ruc() -> Command {
    as_user(rootless_user(), Some(rootless_store()))
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
    let merged = rootless_store()
        .join("containers")
        .join(name)
        .join("merged");
    let want = merged.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok())
    {
        let Ok(mi) = std::fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        assert!(
            !mi.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(want.as_str())),
            "{want} is still mounted in the mount namespace of pid {:?}",
            e.file_name()
        );
    }
}

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

#[test]
fn rootless_runs_debian_as_pid_1_as_the_callers_uid() {
    let u = rootless_user();
    let n = name("rl-basic");
    let out = run(ruc()
        .args([
            "run",
            "--rm",
            "--name",
            &n,
            "--hostname",
            "rl",
            "fixture",
            "--",
        ])
        .args([
            "sh",
            "-c",
            "cat /etc/os-release; echo pid=$$; id -u; id -g; hostname; cat /proc/self/uid_map; \
         echo ---; cat /proc/self/gid_map; echo ---; grep ^CapEff /proc/self/status; \
         echo x > /sys/kernel/x 2>/dev/null || echo sys-ro; \
         echo > /dev/null && head -c 4 /dev/urandom | wc -c; ls /dev; \
         grep -E ' /(proc|sys|dev/pts|dev/shm|dev/mqueue) ' /proc/self/mounts | cut -d' ' -f2,3; exit 7",
            &n,
        ]));
    let (s, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(s.contains("Debian GNU/Linux 12"), "{s}");
    assert!(s.contains("pid=1\n0\n0\nrl\n"), "{s}");
    assert!(
        !err.contains("subordinate"),
        "a full map warns nothing: {err}"
    );
    let parts: Vec<&str> = s.split("---\n").collect();
    let after_host = parts[0].split("rl\n").nth(1).unwrap_or_default();
    let (su, sg) = (u.subuid, u.subgid);
    assert_eq!(
        map_lines(after_host),
        vec![vec![0, u.uid.into(), 1], vec![1, su.0.into(), su.1.into()]],
        "{s}"
    );
    assert_eq!(
        map_lines(parts.get(1).copied().unwrap_or_default()),
        vec![vec![0, u.gid.into(), 1], vec![1, sg.0.into(), sg.1.into()]],
        "{s}"
    );
    // Root of the container has a default container's capabilities there.
    assert!(s.contains("CapEff:\t00000000a80425fb"), "{s}");
    // Read-only /sys; host device nodes bound in (mknod is not allowed in a
    // user namespace) and working; the usual kernel filesystems.
    assert!(s.contains("sys-ro\n4\n"), "{s}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(s.lines().any(|l| l == dev), "/dev/{dev} missing: {s}");
    }
    for m in [
        "/proc proc",
        "/sys sysfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/dev/mqueue mqueue",
    ] {
        assert!(s.lines().any(|l| l == m), "{m} is not mounted: {s}");
    }
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
    assert!(!rootless_store().join("containers").join(&n).exists());
}

fn xattr(p: &Path, name: &str) -> Option<String> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).ok()?);
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and buffer.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

#[test]
fn rootless_writes_are_the_callers_and_ids_map_to_the_subuid_range() {
    use std::os::unix::fs::MetadataExt;
    let u = rootless_user();
    let n = name("rl-owner");
    let scratch = Scratch::new("rt-rl-vol");
    let vol = scratch.dir("vol");
    std::os::unix::fs::chown(&vol, Some(u.uid), Some(u.gid)).expect("chown the volume");
    let out = run(ruc()
        .args(["run", "--name", &n, "--volume"])
        .arg(format!("{}:/vol", vol.display()))
        .args([
            "fixture",
            "--",
            "sh",
            "-c",
            "echo kept > /root/note; mkdir /owned; chown 1:1 /owned; stat -c %u:%g /owned; \
         touch /vol/v; chown 1:1 /vol/v",
            &n,
        ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1:1\n");
    let upper = rootless_store().join("containers").join(&n).join("upper");
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    // In the union everything on the host is the caller's; the ids the
    // container gave live in the override xattr, as the layers' do.
    let note = upper.join("root/note");
    assert_eq!(
        std::fs::read_to_string(&note).ok().as_deref(),
        Some("kept\n")
    );
    assert_eq!((meta(&note).uid(), meta(&note).gid()), (u.uid, u.gid));
    let owned = upper.join("owned");
    assert_eq!((meta(&owned).uid(), meta(&owned).gid()), (u.uid, u.gid));
    let ov = xattr(&owned, "user.containers.override_stat").unwrap_or_default();
    assert!(ov.starts_with("1:1:"), "override_stat of /owned: {ov:?}");
    // Through the real mapping (a bind-mounted host dir), container uid
    // and gid 1 are the first subordinate ids.
    let v = meta(&vol.join("v"));
    assert_eq!((v.uid(), v.gid()), (u.subuid.0, u.subgid.0));
    assert!(
        rootless_state_of(&n).contains("exited(0)"),
        "{}",
        rootless_state_of(&n)
    );
    assert_clean_rootless(&n);
    // Restarted, the container sees its layer and owners again.
    let out = run(ruc().args([
        "run",
        "--name",
        &n,
        "fixture",
        "--",
        "sh",
        "-c",
        "cat /root/note; stat -c %u:%g /owned",
        &n,
    ]));
    assert_eq!(text(&out.stdout), "kept\n1:1\n", "{}", text(&out.stderr));
    assert_clean_rootless(&n);
    let out = run(ruc().args(["rm", &n]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!rootless_state_dir(u, &n).exists());
    assert!(!rootless_store().join("containers").join(&n).exists());
}

#[test]
fn rootless_network_none_has_only_loopback_and_host_is_the_hosts() {
    let n = name("rl-net");
    let out = run(ruc().args([
        "run",
        "--rm",
        "--name",
        &n,
        "fixture",
        "--",
        "sh",
        "-c",
        "cat /proc/net/dev",
        &n,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ifaces: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(i, _)| i.trim().to_string()))
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
    let host = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let out = run(ruc().args([
        "run",
        "--rm",
        "--name",
        &n,
        "--network",
        "host",
        "fixture",
        "--",
        "sh",
        "-c",
        "cat /proc/net/dev",
        &n,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), host.lines().count());
    assert_clean_rootless(&n);
}

#[test]
fn rootless_exec_joins_the_user_and_pid_namespaces_and_kill_signals() {
    let u = rootless_user();
    let n = name("rl-exec");
    let mut child = ruc()
        .args(["run", "--rm", "--name", &n, "fixture", "--", "sh", "-c"])
        .args([
            "trap 'echo got TERM; exit 42' TERM; echo here > /marker; while :; do sleep 0.1; done",
            &n,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a rootless run");
    let started = wait_for(Duration::from_secs(20), || {
        run(ruc().args(["exec", &n, "--", "cat", "/marker"]))
            .status
            .success()
    });
    if !started {
        let _ = child.kill();
        panic!("{n} did not start: {}", rootless_state_of(&n));
    }
    let out = run(ruc().args([
        "exec",
        &n,
        "--",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u; \
         [ $(readlink /proc/self/ns/user) = $(readlink /proc/1/ns/user) ] && echo same-userns; \
         [ $(readlink /proc/self/ns/mnt) = $(readlink /proc/1/ns/mnt) ] && echo same-mntns; \
         ls /proc | grep -c '^[0-9]'",
    ]));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.contains("trap")),
        "pid 1 is not the command: {s}"
    );
    assert_eq!(
        lines.get(1..4),
        Some(&["0", "same-userns", "same-mntns"][..]),
        "{s}"
    );
    let nprocs: u32 = lines
        .get(4)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(999);
    assert!(nprocs < 10, "{nprocs} processes visible: {s}");
    let out = run(ruc().args(["exec", &n, "--", "sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Running, by state and by ps; a second run of the name is refused.
    assert!(rootless_state_of(&n).contains("running"));
    let ps = text(&run(ruc().arg("ps")).stdout);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&n) && l.split_whitespace().nth(2) == Some("running")),
        "{ps}"
    );
    let out = run(ruc().args(["run", "--name", &n, "fixture", "--", "true"]));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
    let out = run(ruc().args(["kill", &n, "TERM"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got TERM"));
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
}

/// Failing rootless runs, before and after the mount, leave nothing.
#[test]
fn rootless_failures_leave_nothing_behind() {
    let u = rootless_user();
    let n = name("rl-fail");
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--volume", "/tmp:/etc/passwd", "fixture", "--", "true"],
            125,
            "volume /tmp on /etc/passwd",
        ),
        (&["fixture", "--", "no-such-command"], 127, "not found"),
        (
            &["--user", "nobody-here", "fixture", "--", "true"],
            125,
            "not in the container's /etc/passwd",
        ),
        (&["no-such-image", "--", "true"], 125, "does not exist"),
    ];
    for (args, code, want) in cases {
        let out = run(ruc().args(["run", "--name", &n]).args(args));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_clean_rootless(&n);
        assert!(
            !rootless_store().join("containers").join(&n).exists(),
            "{args:?} left a store container"
        );
        assert!(
            !rootless_state_dir(u, &n).exists(),
            "{args:?} left runtime state"
        );
    }
}

/// Serialises the tests that change who may write the v1 cgroup dirs.
static CGROUP_DELEGATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The v1 controllers' `layerfs/` dirs handed to the test user (as an
/// administrator delegating them would), and given back to root on drop.
struct DelegatedCgroups(Vec<PathBuf>);

impl DelegatedCgroups {
    fn to(u: &RootlessUser) -> DelegatedCgroups {
        let dirs: Vec<PathBuf> = ["memory", "cpu", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join("layerfs"))
            .collect();
        let d = DelegatedCgroups(dirs);
        for dir in &d.0 {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
                .unwrap_or_else(|e| panic!("delegating {dir:?}: {e}"));
        }
        d
    }
}

impl Drop for DelegatedCgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::os::unix::fs::chown(dir, Some(0), Some(0));
        }
    }
}

/// Where the host delegates the v1 controllers to the user, a rootless
/// run applies its limits: the OOM kill under --memory is reported, and
/// the cgroup goes away afterwards.
#[test]
fn rootless_limits_apply_in_a_delegated_cgroup() {
    let _l = CGROUP_DELEGATION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let u = rootless_user();
    let n = name("rl-oom");
    let delegated = DelegatedCgroups::to(u);
    let out = run(ruc().args([
        "run",
        "--rm",
        "--name",
        &n,
        "--memory",
        "64M",
        "--pids",
        "50",
        "--cpus",
        "0.5",
        "fixture",
        "--",
        "sh",
        "-c",
        "exec tail /dev/zero",
        &n,
    ]));
    drop(delegated);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("killed by the OOM killer"), "{err}");
    assert!(err.contains("64 MiB"), "{err}");
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
}

/// This host does not delegate cgroups to users (hybrid v1, root-owned):
/// a limit asked for is refused (exit 125) with what was not applied,
/// rather than silently ignored; nothing is left behind.
#[test]
fn rootless_limits_without_a_delegated_cgroup_are_refused() {
    let _l = CGROUP_DELEGATION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let u = rootless_user();
    let n = name("rl-mem");
    let writable = run(Command::new("runuser").args([
        "-u",
        u.name,
        "--",
        "sh",
        "-c",
        "test -w /sys/fs/cgroup/memory || test -w /sys/fs/cgroup/memory/layerfs",
    ]));
    assert!(
        !writable.status.success(),
        "this test expects a host that delegates no cgroup to {}",
        u.name
    );
    let out = run(ruc().args([
        "run", "--rm", "--name", &n, "--memory", "64M", "--pids", "50", "fixture", "--", "true", &n,
    ]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot apply --memory, --pids"), "{err}");
    assert!(err.contains("does not delegate a cgroup"), "{err}");
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
    assert!(!rootless_store().join("containers").join(&n).exists());
    // Without limits it runs.
    let out = run(ruc().args(["run", "--rm", "--name", &n, "fixture", "--", "true", &n]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_clean_rootless(&n);
}

/// The supervisor killed outright: its container and the rootfs's daemon
/// (which watches it) go with it, and the name runs again.
#[test]
fn rootless_a_killed_supervisor_leaves_nothing_running() {
    let n = name("rl-orphan");
    let mut child = ruc()
        .args([
            "run",
            "--rm",
            "--name",
            &n,
            "fixture",
            "--",
            "sh",
            "-c",
            "while :; do sleep 1; done",
            &n,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a rootless run");
    let started = wait_for(Duration::from_secs(20), || {
        rootless_state_of(&n).contains("running")
    });
    // runuser's child is the supervisor: kill that one (runuser waits).
    let supervisor =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            });
    if !started || supervisor.is_none() {
        let _ = child.kill();
        panic!("{n} did not start: {}", rootless_state_of(&n));
    }
    let pid = nix::unistd::Pid::from_raw(supervisor.unwrap_or_default());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the supervisor");
    let _ = child.wait();
    assert!(
        wait_for(Duration::from_secs(10), || !rootless_state_of(&n)
            .contains("running")),
        "{}",
        rootless_state_of(&n)
    );
    assert!(
        wait_for(Duration::from_secs(10), || std::panic::catch_unwind(|| {
            assert_clean_rootless(&n)
        })
        .is_ok()),
        "the daemon or the container outlived the supervisor"
    );
    let out = run(ruc().args(["run", "--rm", "--name", &n, "fixture", "--", "true", &n]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_clean_rootless(&n);
}

/// A user without a subordinate range gets only its own ids, mapped to
/// root, with a warning; other ids are refused by name.
#[test]
fn rootless_without_a_subuid_range_maps_only_the_caller() {
    let u = rootless_user();
    let n = name("rl-single");
    // The rootless fixture's layers, top first, readable by anyone.
    let images = run(ruc().args(["images", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&images.stdout).expect("images json");
    let layers: Vec<String> = v[0]["layers"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .expect("fixture layers");
    let mut lowers: Vec<String> = Vec::new();
    for d in layers.iter().rev() {
        lowers.push("--lower".into());
        let dir = rootless_store()
            .join("layers")
            .join(d.trim_start_matches("sha256:"))
            .join("diff");
        lowers.push(dir.display().to_string());
    }
    let nobody_run = |extra: &[&str], script: &str| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/nonexistent",
        ])
        .arg(bin("unionctl"))
        .args(["run", "--rm", "--name", &n])
        .args(extra)
        .args(&lowers)
        .args(["--", "sh", "-c", script, &n])
        .stdin(Stdio::null());
        run(&mut c)
    };
    let out = nobody_run(
        &[],
        "id -u; cat /proc/self/uid_map /proc/self/setgroups; grep -h ^ID= /etc/os-release",
    );
    let (s, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no subordinate id range"), "{err}");
    assert_eq!(map_lines(&s), vec![vec![0, 65534, 1]], "{s}");
    assert!(
        s.starts_with("0\n") && s.contains("deny\nID=debian\n"),
        "{s}"
    );
    let out = nobody_run(&["--user", "1:1"], "true");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("not mapped"), "{err}");
    assert_clean(&n);
    assert!(!PathBuf::from("/tmp/layerfs-65534/containers")
        .join(&n)
        .exists());
    let _ = u;
}

/// An OCI bundle runs rootless too, its root (the rootless fixture's
/// bottom layer) as the lower layer.
#[test]
fn rootless_an_oci_bundle_runs_with_its_config() {
    let u = rootless_user();
    let n = name("rl-bundle");
    let images = run(ruc().args(["images", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&images.stdout).expect("images json");
    let bottom = v[0]["layers"][0]
        .as_str()
        .map(|d| {
            rootless_store()
                .join("layers")
                .join(d.trim_start_matches("sha256:"))
                .join("diff")
        })
        .expect("fixture layers");
    let scratch = Scratch::new("rt-rl-bundle");
    let bundle = scratch.dir("b");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": bottom},
        "hostname": "bundled",
        "process": {
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/usr/bin:/bin", "FROM_CONFIG=yes"],
            "args": ["sh", "-c", "hostname; pwd; echo $FROM_CONFIG; id -u; grep -c : /proc/net/dev", &n]
        },
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "uts"}]}
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("write config");
    std::os::unix::fs::chown(&scratch.root, Some(u.uid), Some(u.gid)).expect("chown");
    let out = run(ruc()
        .args(["run", "--rm", "--name", &n, "--bundle"])
        .arg(&bundle));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bundled\n/tmp\nyes\n0\n1\n");
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
}
