//! Rootful runs, as root on the fixture image in [`store`]: pid 1 and the
//! hostname, default privileges and mounts, the cgroup limits (memory,
//! pids, cpu), networking, the container's writable layer across a
//! restart, `exec`, `kill` and signal forwarding, a killed supervisor,
//! failing runs, and `ps`.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;
use crate::harness::*;

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
    assert!(!store_container(store(), &n).exists());
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
    assert_default_devices(&s);
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
    assert_oom_killed_at_64m(&out);
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
    let out = net_dev(run_ct, &n, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(interfaces(&out.stdout), vec!["lo"]);
    // --network host sees the host's interfaces.
    let host = host_net_dev();
    let out = net_dev(run_ct, &n, &["--network", "host"]);
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
    let upper = store_container(store(), &n).join("upper");
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
    assert!(!state_dir(&n).exists());
    assert!(!store_container(store(), &n).exists());
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
        wait_for(Duration::from_secs(60), || state_of(n).contains("running")),
        "container {n} did not start: {}",
        state_of(n)
    );
    child
}

#[test]
fn exec_joins_the_namespaces_and_kill_delivers_signals() {
    let n = name("exec");
    let child = start_background(
        &n,
        &["--cpus", "0.5", "--memory", "128M", "--pids", "64"],
        "trap 'echo got TERM; exit 42' TERM; echo here > /marker; while :; do sleep 0.1; done",
    );
    assert!(wait_for(Duration::from_secs(60), || merged(&n)
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
    assert_few_processes(&lines, 4, &s);
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
    assert_already_running(&run_ct(&n, &["fixture", "--", "true"]));
    assert!(state_of(&n).contains("running"), "{}", state_of(&n));

    kill_term_exits_42(uc, &n, child);
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
    assert!(wait_for(Duration::from_secs(60), || merged(&n)
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
        wait_for(Duration::from_secs(60), || !state_of(&n)
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
    assert_failures_leave_nothing(
        &n,
        &cases,
        |args| run_ct(&n, args),
        assert_clean,
        store(),
        &state_dir(&n),
    );
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
    // `unionctl state` words it the same.
    for (n, want) in [(&exited, "exited(3)"), (&oom, "oom"), (&live, "running")] {
        let row = state_of(n);
        let status = row
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n.as_str()))
            .and_then(|l| l.split_whitespace().nth(1));
        assert_eq!(status, Some(want), "{row}");
    }
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
        assert!(!store_container(store(), n).exists(), "{n} left");
    }
}
