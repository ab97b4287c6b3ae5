//! Bad input: each refused with a message naming the problem, non-zero
//! exit, nothing mounted and nothing written to any layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A mount request, to be refused.
struct Bad {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    mnt: PathBuf,
    extra: Option<String>,
    /// Wraps the command (e.g. in setpriv).
    prefix: Vec<String>,
    s: Set,
}

fn bad(tag: &str) -> Bad {
    let s = set(tag);
    Bad {
        lowers: vec![s.l1.clone(), s.l2.clone()],
        upper: Some(s.up.clone()),
        work: Some(s.work.clone()),
        mnt: s.mnt.clone(),
        extra: None,
        prefix: Vec::new(),
        s,
    }
}

fn mounts_at(p: &Path) -> usize {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .filter(|l| l.split(' ').nth(1) == p.to_str())
        .count()
}

impl Bad {
    fn command(&self, via: Via) -> Command {
        let mut argv: Vec<String> = Vec::new();
        match via {
            Via::Compat => {
                let mut o = format!("lowerdir={}", lowerdir(&self.lowers));
                if let Some(u) = &self.upper {
                    o += &format!(",upperdir={}", u.display());
                }
                if let Some(w) = &self.work {
                    o += &format!(",workdir={}", w.display());
                }
                if let Some(e) = &self.extra {
                    o += &format!(",{e}");
                }
                argv.extend([bin("layerfs").display().to_string(), "-o".into(), o]);
            }
            _ => {
                argv.extend([bin("unionctl").display().to_string(), "mount".into()]);
                for l in &self.lowers {
                    argv.extend(["--lower".into(), l.display().to_string()]);
                }
                if let Some(u) = &self.upper {
                    argv.extend(["--upper".into(), u.display().to_string()]);
                }
                if let Some(w) = &self.work {
                    argv.extend(["--work".into(), w.display().to_string()]);
                }
                if let Some(e) = &self.extra {
                    argv.extend(["-o".into(), e.clone()]);
                }
            }
        }
        argv.push(self.mnt.display().to_string());
        let all: Vec<String> = self.prefix.iter().cloned().chain(argv).collect();
        let mut c = Command::new(&all[0]);
        c.args(&all[1..]);
        c
    }

    /// Both command lines must fail, name the problem (every needle, case
    /// ignored), mount nothing, and write nothing anywhere in the scratch
    /// tree (lowers, upper, work: no `<work>/work`).
    #[track_caller]
    fn refused(&self, needles: &[&str]) {
        self.check_refused(needles, true)
    }

    /// As [`Self::refused`], when another mount legitimately owns the work
    /// directory (and its `work/`).
    #[track_caller]
    fn refused_keeping_work(&self, needles: &[&str]) {
        self.check_refused(needles, false)
    }

    #[track_caller]
    fn check_refused(&self, needles: &[&str], no_scratch: bool) {
        for via in [Via::Compat, Via::Unionctl] {
            let before = snapshot(&self.s.s.root, View::Merged);
            let mounted = mounts_at(&self.mnt);
            let mut cmd = self.command(via);
            let out = run_limited(&mut cmd, 60);
            let err = text(&out.stderr);
            if mounts_at(&self.mnt) != mounted {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                panic!(
                    "{via:?}: something was mounted on {:?} by {cmd:?}",
                    self.mnt
                );
            }
            assert!(!out.status.success(), "{via:?}: {cmd:?} succeeded");
            for n in needles {
                assert!(
                    err.to_lowercase().contains(&n.to_lowercase()),
                    "{via:?}: stderr does not mention {n:?}: {err:?}"
                );
            }
            assert_same(
                &format!("{via:?}: scratch tree after a refused mount"),
                &before,
                &snapshot(&self.s.s.root, View::Merged),
            );
            for w in [&self.s.work, &self.s.up].into_iter().chain(&self.work) {
                let made = no_scratch && w.join("work").exists();
                assert!(!made, "{via:?}: {w:?}/work was created");
            }
        }
    }
}

fn ps(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn refuses_a_missing_lower() {
    let mut b = bad("bad-nolower");
    b.lowers[0] = b.s.s.path("nope");
    b.refused(&[&ps(&b.lowers[0]), "does not exist"]);
}

#[test]
fn refuses_a_lower_that_is_a_file() {
    let mut b = bad("bad-filelower");
    fs::write(b.s.s.path("afile"), "x").unwrap();
    b.lowers[1] = b.s.s.path("afile");
    b.refused(&[&ps(&b.lowers[1]), "not a directory"]);
}

#[test]
fn refuses_unreachable_lowers() {
    let mut b = bad("bad-unreach");
    fs::write(b.s.s.path("afile"), "x").unwrap();
    b.lowers[0] = b.s.s.path("afile/sub");
    b.refused(&[&ps(&b.lowers[0])]);
    std::os::unix::fs::symlink("missing-target", b.s.s.path("dangling")).unwrap();
    b.lowers[0] = b.s.s.path("dangling");
    b.refused(&[&ps(&b.lowers[0])]);
}

#[test]
fn refuses_an_unreadable_lower() {
    let mut b = bad("bad-unreadable");
    let locked = b.s.s.dir("locked");
    LayerBuilder::new(&locked)
        .file("f", "x")
        .owner("", 65534, 65534)
        .mode("", 0o700);
    // Root without the DAC capabilities cannot read another user's 0700
    // dir, but may still mount.
    b.prefix = [
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ]
    .map(String::from)
    .to_vec();
    let probe = run(Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "ls"])
        .arg(&locked));
    assert!(
        !probe.status.success(),
        "the probe can read the locked dir; the test is void"
    );
    b.lowers[1] = locked;
    b.refused(&[&ps(&b.lowers[1]), "permission denied"]);
}

#[test]
fn refuses_upper_and_work_on_different_filesystems() {
    let mut b = bad("bad-xdev");
    let fsdir = b.s.s.dir("tmpfs");
    succeeded(
        &run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&fsdir)),
        "mount tmpfs",
    );
    b.work = Some(fsdir.join("w"));
    fs::create_dir(fsdir.join("w")).unwrap();
    b.refused(&["different filesystems"]);
}

#[test]
fn refuses_workdir_inside_upperdir() {
    let mut b = bad("bad-wInU");
    b.work = Some(b.s.up.join("w"));
    fs::create_dir(b.s.up.join("w")).unwrap();
    b.refused(&[&ps(b.work.as_ref().unwrap()), "inside"]);
}

#[test]
fn refuses_upperdir_inside_workdir() {
    let mut b = bad("bad-uInW");
    b.upper = Some(b.s.work.join("u"));
    fs::create_dir(b.s.work.join("u")).unwrap();
    b.refused(&[&ps(b.upper.as_ref().unwrap()), "inside"]);
}

#[test]
fn refuses_upper_equal_to_work() {
    let mut b = bad("bad-same");
    b.work = b.upper.clone();
    b.refused(&["same directory"]);
}

#[test]
fn refuses_a_mountpoint_that_is_already_mounted() {
    let mut b = bad("bad-mounted");
    succeeded(
        &run(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&b.mnt)),
        "mount tmpfs",
    );
    b.refused(&[&ps(&b.mnt), "already"]);
    let m2 = b.s.s.dir("m2");
    let _other = mount(Via::Unionctl, &[b.s.l2.clone()], None, &m2, &[]);
    b.mnt = m2;
    b.refused(&[&ps(&b.mnt), "already"]);
}

#[test]
fn refuses_a_missing_mountpoint() {
    let mut b = bad("bad-nomnt");
    b.mnt = b.s.s.path("nomnt");
    b.refused(&[&ps(&b.mnt), "does not exist"]);
}

#[test]
fn refuses_an_unknown_option() {
    let mut b = bad("bad-opt");
    b.extra = Some("bogus_opt=1".into());
    b.refused(&["bogus_opt"]);
}

#[test]
fn refuses_an_option_not_implemented_yet() {
    let mut b = bad("bad-plugins");
    b.extra = Some("plugins=/x.so".into());
    b.refused(&["plugins", "not"]);
}

#[test]
fn refuses_a_malformed_uid_mapping() {
    let mut b = bad("bad-uidmap");
    b.extra = Some("uidmapping=0:1000".into());
    b.refused(&["uidmapping", "triples"]);
}

#[test]
fn refuses_501_lower_layers() {
    let mut b = bad("bad-501");
    b.lowers = (0..501).map(|i| b.s.s.dir(&format!("L{i:03}"))).collect();
    b.refused(&["501", "500"]);
}

#[test]
fn refuses_upper_without_work_and_work_without_upper() {
    let mut b = bad("bad-nowork");
    b.work = None;
    b.refused(&["work"]);
    b.work = Some(b.s.work.clone());
    b.upper = None;
    b.refused(&["upper"]);
}

#[test]
fn refuses_a_work_dir_in_use() {
    let mut b = bad("bad-busy");
    let _first = mount(
        Via::Compat,
        &[b.s.l1.clone()],
        Some((&b.s.up, &b.s.work)),
        &b.mnt,
        &[],
    );
    b.mnt = b.s.s.dir("m2");
    b.refused_keeping_work(&["in use"]);
}

#[test]
fn refuses_a_read_only_upper() {
    let b = bad("bad-roupper");
    let up = b.s.up.display().to_string();
    succeeded(
        &run(Command::new("mount").args(["--bind", &up, &up])),
        "bind mount",
    );
    let ro = run(Command::new("mount").args(["-o", "remount,bind,ro", &up]));
    succeeded(&ro, "remount ro");
    b.refused(&[&up, "not writable"]);
}
