//! Rootless runs, as the test user ([`rootless_user`]) on the fixture it
//! imported ([`rootless_store`]): the id maps (with a subordinate range
//! and without one), who owns what the container writes, networking,
//! `exec` into the user and pid namespaces, cgroup limits where the
//! controllers are delegated and refused where not, failing runs, and a
//! killed supervisor.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;
use crate::harness::*;

#[test]
fn rootless_runs_debian_as_pid_1_as_the_callers_uid() {
    let u = rootless_user();
    let n = name("rl-basic");
    let out = run_rl(
        &n,
        &[
            "--rm",
            "--hostname",
            "rl",
            "fixture",
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; echo pid=$$; id -u; id -g; hostname; cat /proc/self/uid_map; \
         echo ---; cat /proc/self/gid_map; echo ---; grep ^CapEff /proc/self/status; \
         echo x > /sys/kernel/x 2>/dev/null || echo sys-ro; \
         echo > /dev/null && head -c 4 /dev/urandom | wc -c; ls /dev; \
         grep -E ' /(proc|sys|dev/pts|dev/shm|dev/mqueue) ' /proc/self/mounts | cut -d' ' -f2,3; exit 7",
            &n,
        ],
    );
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
    assert_default_devices(&s);
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
    assert!(!store_container(rootless_store(), &n).exists());
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
    let upper = store_container(rootless_store(), &n).join("upper");
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
    let out = run_rl(
        &n,
        &[
            "fixture",
            "--",
            "sh",
            "-c",
            "cat /root/note; stat -c %u:%g /owned",
            &n,
        ],
    );
    assert_eq!(text(&out.stdout), "kept\n1:1\n", "{}", text(&out.stderr));
    assert_clean_rootless(&n);
    let out = run(ruc().args(["rm", &n]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!rootless_state_dir(u, &n).exists());
    assert!(!store_container(rootless_store(), &n).exists());
}

#[test]
fn rootless_network_none_has_only_loopback_and_host_is_the_hosts() {
    let n = name("rl-net");
    let out = net_dev(run_rl, &n, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(interfaces(&out.stdout), vec!["lo"]);
    let host = host_net_dev();
    let out = net_dev(run_rl, &n, &["--network", "host"]);
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
    let started = wait_for(Duration::from_secs(60), || {
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
    assert_few_processes(&lines, 4, &s);
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
    assert_already_running(&run_rl(&n, &["fixture", "--", "true"]));
    kill_term_exits_42(ruc, &n, child);
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
    assert_failures_leave_nothing(
        &n,
        &cases,
        |args| run_rl(&n, args),
        assert_clean_rootless,
        rootless_store(),
        &rootless_state_dir(u, &n),
    );
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
    let out = run_rl(
        &n,
        &[
            "--rm",
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
        ],
    );
    drop(delegated);
    assert_oom_killed_at_64m(&out);
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
}

/// This host does not delegate cgroups to users (hybrid v1, root-owned):
/// a limit asked for gets a warning naming what is not applied, and the
/// container runs without it; nothing is left behind.
#[test]
fn rootless_limits_without_a_delegated_cgroup_warn_and_run() {
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
    let out = run_rl(
        &n,
        &[
            "--rm", "--memory", "64M", "--pids", "50", "fixture", "--", "sh", "-c", "echo ran",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(text(&out.stdout), "ran\n", "{err}");
    assert!(err.contains("--memory, --pids NOT applied"), "{err}");
    assert!(err.contains("does not delegate a cgroup"), "{err}");
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
    assert!(!store_container(rootless_store(), &n).exists());
    // Without limits there is nothing to warn about.
    let out = run_rl(&n, &["--rm", "fixture", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("NOT applied"));
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
    let started = wait_for(Duration::from_secs(60), || {
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
        wait_for(Duration::from_secs(60), || !rootless_state_of(&n)
            .contains("running")),
        "{}",
        rootless_state_of(&n)
    );
    assert!(
        wait_for(Duration::from_secs(60), || std::panic::catch_unwind(|| {
            assert_clean_rootless(&n)
        })
        .is_ok()),
        "the daemon or the container outlived the supervisor"
    );
    let out = run_rl(&n, &["--rm", "fixture", "--", "true", &n]);
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
    let lowers = lower_args(rootless_store(), &run(ruc().args(["images", "--json"])));
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
