//! The runtime end to end: `unionctl run`, `exec`, `kill`, `state` on the
//! real Debian fixture image (imported once into a store kept under the
//! test base dir, reused across runs: its layers are immutable).
//!
//! Every test ends by asserting that nothing of its container is left: no
//! mount of its rootfs, no cgroup directory, no process carrying its name
//! (the supervisor, the mount daemon forked from it, and the container's
//! processes, whose command lines all include the name).

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
fn an_unprivileged_caller_is_told_rootless_is_not_supported() {
    let n = name("nobody");
    let ubin = bin("unionctl");
    let u = ubin.to_string_lossy();
    let out = as_nobody(&[
        &u, "run", "--rm", "--name", &n, "--lower", "/", "--", "true",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("need root"), "{err}");
    assert_clean(&n);
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
