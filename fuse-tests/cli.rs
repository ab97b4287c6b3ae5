//! Command lines: `unionctl mount/umount`, the fuse-overlayfs argv of
//! `layerfs` (as containers/storage runs it), the mount(8) → mount.fuse3
//! path (as containerd runs it), and the refusal of bad input.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::*;

/// Runs a command, failing the test if it has not exited and closed its
/// stdout and stderr within `secs`: a mount command whose daemon keeps the
/// caller's pipes open hangs every engine that reads them.
pub(super) fn run_limited(cmd: &mut Command, secs: u64) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("{what} did not finish (exit and close its output) within {secs} s"),
    }
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
pub(super) fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
}

/// Two lowers, an upper, a work dir and a mountpoint.
pub(super) struct Set {
    l1: PathBuf,
    l2: PathBuf,
    up: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    s: Scratch,
}

pub(super) fn set(tag: &str) -> Set {
    let s = Scratch::new(tag);
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    LayerBuilder::new(&l1)
        .file("top", "1")
        .file("shared", "from l1");
    LayerBuilder::new(&l2)
        .file("bottom", "2")
        .file("shared", "from l2");
    Set {
        l1,
        l2,
        up: s.dir("u"),
        work: s.dir("w"),
        mnt: s.dir("m"),
        s,
    }
}

impl Set {
    fn opts(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir(&[self.l1.clone(), self.l2.clone()]),
            self.up.display(),
            self.work.display()
        )
    }

    fn unionctl_mount(&self) -> Command {
        let mut c = Command::new(bin("unionctl"));
        c.arg("mount")
            .arg("--lower")
            .arg(&self.l1)
            .arg("--lower")
            .arg(&self.l2);
        c.arg("--upper")
            .arg(&self.up)
            .arg("--work")
            .arg(&self.work)
            .arg(&self.mnt);
        c
    }

    /// Checks, right away, that the union is mounted and right.
    #[track_caller]
    fn check_live(&self, what: &str) {
        assert!(
            is_mountpoint(&self.mnt),
            "{what}: not mounted when the command returned"
        );
        let read = |n: &str| {
            fs::read_to_string(self.mnt.join(n)).unwrap_or_else(|e| panic!("{what}: read {n}: {e}"))
        };
        assert_eq!(
            (read("top"), read("bottom"), read("shared")),
            ("1".into(), "2".into(), "from l1".into()),
            "{what}"
        );
        fs::write(self.mnt.join("written"), what).unwrap();
        assert_eq!(
            fs::read_to_string(self.up.join("written")).unwrap(),
            what,
            "{what}: writes go to the upper layer"
        );
    }

    /// Unmounts with `unionctl umount`, which must return only once the
    /// daemon is gone.
    #[track_caller]
    fn umount(&self, pid: i32) {
        succeeded(
            &run_limited(
                Command::new(bin("unionctl")).arg("umount").arg(&self.mnt),
                60,
            ),
            "unionctl umount",
        );
        assert!(
            !is_mountpoint(&self.mnt),
            "still mounted after unionctl umount"
        );
        assert!(
            process_gone(pid),
            "daemon {pid} still running when unionctl umount returned"
        );
    }
}

pub(super) fn pid_of(mnt: &Path) -> i32 {
    daemon_pid_for(mnt).unwrap_or_else(|| panic!("no daemon record for {mnt:?}"))
}

#[track_caller]
pub(super) fn wait_exit(child: &mut Child, what: &str) {
    let ok = wait_for(Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(
        ok,
        "{what}: the foreground process did not exit after the unmount"
    );
    let st = child.wait().unwrap();
    assert!(st.success(), "{what}: foreground process exited with {st}");
}

#[test]
fn unionctl_mount_daemonizes_and_returns_once_live() {
    let s = set("ctl-daemon");
    for round in 0..3 {
        succeeded(&run_limited(&mut s.unionctl_mount(), 60), "unionctl mount");
        s.check_live(&format!("unionctl mount, round {round}"));
        let pid = pid_of(&s.mnt);
        assert!(!process_gone(pid));
        for fd in 0..3 {
            let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(
                !target.starts_with("pipe:"),
                "the daemon kept the caller's fd {fd} ({target})"
            );
        }
        s.umount(pid);
    }
}

#[test]
fn unionctl_mount_foreground_stays_attached() {
    let s = set("ctl-fg");
    for stop in ["unionctl umount", "SIGTERM"] {
        let log = s.s.path(&format!("fg-{}.log", stop.len()));
        let mut child = s
            .unionctl_mount()
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mounted = wait_for(Duration::from_secs(60), || {
            is_mountpoint(&s.mnt) || child.try_wait().unwrap().is_some()
        });
        assert!(
            mounted && is_mountpoint(&s.mnt),
            "-f never mounted (before stopping with {stop}; exit: {:?}): {}",
            child.try_wait().unwrap(),
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "-f returned while mounted"
        );
        let pid = child.id() as i32;
        assert_eq!(
            pid_of(&s.mnt),
            pid,
            "with -f the command itself serves the mount"
        );
        s.check_live("unionctl mount -f");
        if stop == "SIGTERM" {
            // SAFETY: kill(2) of our child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            wait_exit(&mut child, "unionctl mount -f, SIGTERM");
            assert!(!is_mountpoint(&s.mnt), "SIGTERM left the mount behind");
        } else {
            s.umount(pid);
            wait_exit(&mut child, "unionctl mount -f");
        }
    }
}

#[test]
fn unionctl_mount_without_upper_is_read_only() {
    let s = set("ctl-ro");
    let out = run_limited(
        Command::new(bin("unionctl"))
            .args(["mount", "--lower"])
            .arg(&s.l1)
            .arg("--lower")
            .arg(&s.l2)
            .arg(&s.mnt),
        60,
    );
    succeeded(&out, "unionctl mount (no upper)");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == s.mnt.to_str())
        .expect("mount line");
    assert!(
        line.split(' ')
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "not mounted ro: {line}"
    );
    assert_eq!(fs::read_to_string(s.mnt.join("shared")).unwrap(), "from l1");
    assert_eq!(errno_of(fs::write(s.mnt.join("new"), "x")), libc::EROFS);
    s.umount(pid_of(&s.mnt));
}

#[test]
fn layerfs_mount_program_form() {
    let s = set("compat-engine");
    let out = run_limited(
        Command::new(bin("layerfs"))
            .arg("-o")
            .arg(s.opts())
            .arg(&s.mnt),
        60,
    );
    succeeded(&out, "layerfs -o ... MNT");
    s.check_live("layerfs -o lowerdir=...");
    let pid = pid_of(&s.mnt);
    // containers/storage unmounts with fusermount3 -u.
    let out = run_limited(Command::new("fusermount3").arg("-u").arg(&s.mnt), 30);
    succeeded(&out, "fusermount3 -u");
    assert!(!is_mountpoint(&s.mnt));
    let gone = wait_for(Duration::from_secs(60), || process_gone(pid));
    assert!(gone, "daemon outlived fusermount3 -u");

    // Paths relative to the working directory (the store's home, where
    // containers/storage keeps `l/SHORTID` symlinks to layer dirs); the
    // daemon must resolve them before it leaves that directory.
    let home = &s.s.root;
    fs::create_dir(home.join("l")).unwrap();
    std::os::unix::fs::symlink("../l1", home.join("l/AAAA")).unwrap();
    std::os::unix::fs::symlink("../l2", home.join("l/BBBB")).unwrap();
    let out = run_limited(
        Command::new(bin("layerfs"))
            .args(["-o", "lowerdir=l/AAAA:l/BBBB,upperdir=u,workdir=w", "m"])
            .current_dir(home),
        60,
    );
    succeeded(&out, "layerfs with relative paths");
    s.check_live("relative paths");
    s.umount(pid_of(&s.mnt));
}

#[test]
fn layerfs_accepts_a_quoted_selinux_context_with_commas() {
    // containers/storage appends `context="LABEL"` (Go's %q) on SELinux
    // hosts; MCS labels hold a comma, which the quotes protect.
    let s = set("compat-context");
    let o = format!(
        "{},context=\"system_u:object_r:container_file_t:s0:c123,c456\"",
        s.opts()
    );
    let out = run_limited(
        Command::new(bin("layerfs")).arg("-o").arg(&o).arg(&s.mnt),
        60,
    );
    succeeded(&out, &format!("layerfs -o {o}"));
    s.check_live("context=\"…:c123,c456\"");
    s.umount(pid_of(&s.mnt));
}

#[test]
fn layerfs_option_spellings() {
    let s = set("compat-argv");
    let lower = format!("lowerdir={}", lowerdir(&[s.l1.clone(), s.l2.clone()]));
    let rest = format!("upperdir={},workdir={}", s.up.display(), s.work.display());
    let m = s.mnt.display().to_string();
    let variants: Vec<Vec<String>> = vec![
        vec![
            "layerfs".into(),
            m.clone(),
            "-o".into(),
            format!("{lower},{rest}"),
        ],
        vec![
            "-o".into(),
            lower.clone(),
            "-o".into(),
            rest.clone(),
            m.clone(),
        ],
        vec![format!("-o{lower},{rest}"), m.clone()],
        vec!["-o".into(), format!(",,{lower},,{rest},,"), m.clone()],
        vec![m.clone(), "-o".into(), format!("{lower},{rest}")],
        vec![
            "-o".into(),
            format!("{lower},{rest},fsync=0,noatime,default_permissions"),
            m.clone(),
        ],
    ];
    for argv in variants {
        let what = format!("layerfs {argv:?}");
        succeeded(
            &run_limited(Command::new(bin("layerfs")).args(&argv), 60),
            &what,
        );
        s.check_live(&what);
        s.umount(pid_of(&s.mnt));
    }
}

#[test]
fn layerfs_lowerdir_with_escaped_colons() {
    let s = Scratch::new("colon");
    let (l1, l2) = (s.dir("lay:er:1"), s.dir("lay:er:2"));
    LayerBuilder::new(&l1).file("a", "top");
    LayerBuilder::new(&l2).file("a", "bottom").file("b", "b");
    let m = mount(
        Via::Compat,
        &[l1, l2],
        Some((&s.dir("u"), &s.dir("w"))),
        &s.dir("m"),
        &[],
    );
    assert!(
        lowerdir(&[s.path("lay:er:1")]).contains("\\:"),
        "the harness escapes colons"
    );
    assert_eq!(
        (fs::read_to_string(m.p("a")).unwrap(), ls(&m.mnt)),
        ("top".into(), vec!["a".to_string(), "b".to_string()])
    );
}

#[test]
fn five_hundred_lower_layers_work() {
    let s = Scratch::new("l500");
    let lowers: Vec<PathBuf> = (0..500).map(|i| s.dir(&format!("L{i:03}"))).collect();
    for (i, l) in lowers.iter().enumerate() {
        LayerBuilder::new(l)
            .file(&format!("f{i:03}"), "")
            .file("x", &i.to_string());
    }
    let mut m = mount(
        Via::Compat,
        &lowers,
        Some((&s.dir("u"), &s.dir("w"))),
        &s.dir("m"),
        &[],
    );
    assert_eq!(
        fs::read_to_string(m.p("x")).unwrap(),
        "0",
        "the first lowerdir is the top"
    );
    assert_eq!(ls(&m.mnt).len(), 501);
    assert!(
        fs::symlink_metadata(m.p("f499")).is_ok(),
        "the 500th layer is there"
    );
    m.unmount();
}

#[test]
fn layerfs_foreground_and_debug_flags() {
    let s = set("compat-fg");
    for flag in ["-f", "-d"] {
        let mut child = Command::new(bin("layerfs"))
            .arg(flag)
            .arg("-o")
            .arg(s.opts())
            .arg(&s.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(60), || is_mountpoint(&s.mnt)),
            "{flag}: never mounted"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{flag}: returned while mounted"
        );
        s.check_live(flag);
        s.umount(child.id() as i32);
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        wait_exit(&mut child, flag);
        if flag == "-d" {
            assert!(
                err.contains("DEBUG"),
                "-d prints debug output, got: {err:?}"
            );
        }
    }
}

#[test]
fn version_flags() {
    for (prog, flag) in [
        ("layerfs", "-V"),
        ("layerfs", "--version"),
        ("unionctl", "--version"),
    ] {
        let out = run_limited(Command::new(bin(prog)).arg(flag), 10);
        succeeded(&out, &format!("{prog} {flag}"));
        let o = text(&out.stdout);
        assert!(
            o.contains(env!("CARGO_PKG_VERSION")) && o.contains(prog),
            "{prog} {flag}: {o:?}"
        );
    }
}

/// PATH with the built binaries first, for helpers that exec `layerfs`.
fn path_with_bins() -> String {
    let dir = bin("layerfs").parent().unwrap().to_path_buf();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn mount8_and_mount_fuse3_helper() {
    assert!(
        Path::new("/sbin/mount.fuse3").exists(),
        "install Debian's fuse3 package (mount.fuse3)"
    );
    let s = set("helper");
    // mount(8) runs /sbin/mount.fuse3, which runs `PROG SOURCE MNT -o OPTS`.
    // mount(8) drops PATH from the helper's environment, so `-t fuse.layerfs`
    // only finds an installed layerfs; `-t fuse PROG#SOURCE` takes the
    // program by path and runs it with the same arguments.
    let source = format!("{}#layerfs", bin("layerfs").display());
    let out = run_limited(
        Command::new("mount")
            .args(["-t", "fuse", &source])
            .arg(&s.mnt)
            .arg("-o")
            .arg(s.opts()),
        60,
    );
    succeeded(&out, "mount -t fuse layerfs#layerfs");
    s.check_live("mount(8) -> mount.fuse3 -> layerfs");
    let pid = pid_of(&s.mnt);
    succeeded(
        &run_limited(Command::new("umount").arg(&s.mnt), 30),
        "umount",
    );
    assert!(
        wait_for(Duration::from_secs(60), || process_gone(pid)),
        "daemon outlived umount"
    );

    // containerd's fuse3. mount type: `mount.fuse3 SOURCE MNT -o O1 -o O2 … -t TYPE`,
    // with containerd's environment (PATH included).
    let mut c = Command::new("/sbin/mount.fuse3");
    c.arg("overlay").arg(&s.mnt);
    for o in s.opts().split(',') {
        c.arg("-o").arg(o);
    }
    let out = run_limited(c.args(["-t", "layerfs"]).env("PATH", path_with_bins()), 60);
    succeeded(&out, "mount.fuse3 as containerd runs it");
    s.check_live("mount.fuse3 -t layerfs");
    s.umount(pid_of(&s.mnt));
}

mod bad_input;
