//! The metadata index: the same merged view with and without it (and as
//! kernel overlayfs shows it) on random stacks, tooling, stale and
//! interrupted indexes, and sharing one database between mounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// A small deterministic generator (no external crates in tests).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random stack of `n` layers over a shared set of names: files, dirs,
/// symlinks, hard links, whiteouts of files and dirs, opaque dirs, a file
/// replacing a dir and a dir replacing a file, xattrs on some.
fn random_stack(s: &Scratch, tag: &str, seed: u64, n: usize, form: WhiteoutForm) -> Vec<PathBuf> {
    let mut rng = Rng(seed | 1);
    let names = ["a", "b", "c", "d", "e"];
    let mut layers = Vec::new();
    // Bottom first, then reversed: lowerdir order is top first.
    for i in 0..n {
        let root = s.dir(&format!("{tag}-l{i}"));
        let l = LayerBuilder::new(&root);
        for d in ["", "x", "x/y", "z"] {
            for name in names {
                let rel = if d.is_empty() {
                    name.to_string()
                } else {
                    format!("{d}/{name}")
                };
                let parent_ok = d.is_empty() || root.join(d).is_dir() || !root.join(d).exists();
                if !parent_ok || root.join(&rel).exists() {
                    continue;
                }
                match rng.below(11) {
                    0 | 1 => {
                        l.file(&rel, &format!("{tag} {i} {rel}"));
                    }
                    2 => {
                        l.dir(&rel);
                    }
                    // Objects with and without xattrs: the index answers
                    // xattr requests of the ones without on its own.
                    9 => {
                        l.file(&rel, "with xattr").xattr(&rel, "user.k", &rel);
                    }
                    10 => {
                        l.dir(&rel).xattr(&rel, "trusted.k", "v");
                    }
                    3 => {
                        l.symlink(&rel, "target");
                    }
                    4 if i > 0 => {
                        l.whiteout(&rel, form);
                    }
                    5 if i > 0 => {
                        l.opaque(&rel, form.opaque());
                    }
                    _ => {}
                }
            }
        }
        if rng.below(3) == 0 && root.join("x").is_dir() && !root.join("x/hl").exists() {
            l.file("x/hl", "linked").hardlink("x/hl2", "x/hl");
        }
        layers.push(root);
    }
    layers.reverse();
    layers
}

fn merged(via: Via, lowers: &[PathBuf], m: &Path, extra: &[&str]) -> Snapshot {
    let mut mnt = mount(via, lowers, None, m, extra);
    let snap = snapshot(m, View::Merged);
    drop_caches();
    let again = snapshot(m, View::Merged);
    mnt.unmount();
    assert_same(
        &format!("{via:?} before and after dropping caches"),
        &snap,
        &again,
    );
    snap
}

#[test]
fn indexed_view_equals_the_walked_view_and_the_kernels() {
    let s = Scratch::new("index-prop");
    let ixdir = s.dir("ix");
    let ix = format!("index_dir={}", ixdir.display());
    for seed in 1..=12u64 {
        for form in [WhiteoutForm::CharDev, WhiteoutForm::WhFile] {
            let tag = format!("s{seed}{form:?}");
            let layers = random_stack(&s, &tag, seed * 7919, 2 + (seed as usize % 4), form);
            let m = s.dir(&format!("{tag}-m"));
            let with = merged(Via::Unionctl, &layers, &m, &["index=on", &ix]);
            let without = merged(Via::Unionctl, &layers, &m, &["index=off"]);
            assert_same(&format!("{tag}: index vs no index"), &without, &with);
            if form.kernel_reads() {
                let kernel = merged(Via::Kernel, &layers, &m, &[]);
                assert_same(&format!("{tag}: kernel vs index"), &kernel, &with);
            }
        }
    }
}

fn unionctl(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("unionctl")).args(args))
}

#[test]
fn tooling_builds_verifies_and_reports_drift() {
    let s = Scratch::new("index-tool");
    let ixdir = s.dir("ix");
    let l = LayerBuilder::new(&s.dir("l"));
    l.file("a", "a")
        .file("d/b", "b")
        .whiteout("gone", WhiteoutForm::WhFile);
    let dir = ixdir.to_str().unwrap();
    let layer = s.path("l");
    let layer = layer.to_str().unwrap();
    let out = unionctl(&["index", "build", "--index-dir", dir, "--json", layer]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("\"built\": true") && text.contains("\"entries\": 4"),
        "{text}"
    );
    let out = unionctl(&["index", "verify", "--index-dir", dir, layer]);
    assert!(out.status.success(), "no drift right after building");
    // A layer changed below its root (not allowed while in use): verify says so.
    fs::write(s.path("l/d/b"), "changed").unwrap();
    fs::write(s.path("l/d/new"), "n").unwrap();
    let out = unionctl(&["index", "verify", "--index-dir", dir, "--json", layer]);
    assert_eq!(out.status.code(), Some(1), "drift must fail verify");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("d/new") && text.contains("not in the index"),
        "{text}"
    );
    assert!(text.contains("d/b") && text.contains("changed"), "{text}");
    let out = unionctl(&["index", "rebuild", "--index-dir", dir, layer]);
    assert!(out.status.success());
    let out = unionctl(&["index", "verify", "--index-dir", dir, layer]);
    assert!(out.status.success(), "clean after rebuild");
    let out = unionctl(&["index", "stats", "--index-dir", dir, "--json", layer]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"indexed\": true"));
}

#[test]
fn interrupted_build_is_rebuilt_and_mounts_share_the_database() {
    let s = Scratch::new("index-crash");
    let ixdir = s.dir("ix");
    let ix = format!("index_dir={}", ixdir.display());
    let root = s.dir("l");
    for d in 0..40 {
        for f in 0..500 {
            let p = root.join(format!("d{d}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join(format!("f{f}")), "").unwrap();
        }
    }
    // kill -9 the indexer half way.
    let mut child = Command::new(bin("unionctl"))
        .args(["index", "build", "--index-dir"])
        .arg(&ixdir)
        .arg(&root)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let _ = child.kill();
    let _ = child.wait();
    // The next mount notices (the index is not complete) and rebuilds.
    let m1 = s.dir("m1");
    let m2 = s.dir("m2");
    let a = mount(
        Via::Unionctl,
        std::slice::from_ref(&root),
        None,
        &m1,
        &["index=on", &ix],
    );
    // A second mount of the same layer shares the database, at the same time.
    let b = mount(
        Via::Compat,
        std::slice::from_ref(&root),
        None,
        &m2,
        &["index=on", &ix],
    );
    assert_eq!(fs::read_dir(m1.join("d39")).unwrap().count(), 500);
    assert_eq!(fs::read_dir(m2.join("d0")).unwrap().count(), 500);
    let out = unionctl(&[
        "index",
        "verify",
        "--index-dir",
        ixdir.to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(a);
    drop(b);
}

#[test]
fn inode_numbers_are_stable_across_remounts_and_copy_up() {
    let s = Scratch::new("index-ino");
    let ixdir = s.dir("ix");
    let ix = format!("index_dir={}", ixdir.display());
    LayerBuilder::new(&s.dir("l"))
        .file("f", "f")
        .file("d/g", "g");
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let lowers = vec![s.path("l")];
    let ino = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(m.join(p)).unwrap().ino()
    };
    let mut mnt = mount(
        Via::Unionctl,
        &lowers,
        Some((&u, &w)),
        &m,
        &["index=on", &ix],
    );
    let before = (ino("f"), ino("d"), ino("d/g"));
    fs::write(m.join("d/g"), "changed").unwrap();
    mnt.unmount();
    let mut mnt = mount(
        Via::Unionctl,
        &lowers,
        Some((&u, &w)),
        &m,
        &["index=on", &ix],
    );
    assert_eq!((ino("f"), ino("d"), ino("d/g")), before);
    mnt.unmount();
}

/// `unionctl index gc` drops the records of a layer that was removed and of
/// the stacks on it, keeps the rest, and a union mounted on the kept layers
/// goes on serving through it.
#[test]
fn gc_drops_removed_layers_and_live_mounts_keep_working() {
    let s = Scratch::new("index-gc");
    let ixdir = s.dir("ix");
    let ix = format!("index_dir={}", ixdir.display());
    let (l1, l2, l3) = (s.dir("l1"), s.dir("l2"), s.dir("l3"));
    for (l, n) in [(&l1, 300), (&l2, 10), (&l3, 2000)] {
        for f in 0..n {
            fs::create_dir_all(l.join("d")).unwrap();
            fs::write(l.join("d").join(format!("f{f}")), "x").unwrap();
        }
    }
    fs::write(l1.join("top"), "1").unwrap();
    let live = s.dir("live");
    let kept = mount(
        Via::Unionctl,
        &[l1.clone(), l2.clone()],
        None,
        &live,
        &["index=on", &ix],
    );
    {
        let m = s.dir("gone");
        let _gone = mount(
            Via::Unionctl,
            &[l3.clone(), l2.clone()],
            None,
            &m,
            &["index=on", &ix],
        );
        assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 2000);
    }
    fs::remove_dir_all(&l3).unwrap();

    let dir = ixdir.to_str().unwrap();
    let out = unionctl(&["index", "gc", "--index-dir", dir, "--dry-run", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["layers_dropped"].as_array().unwrap().len(), 1, "{dry}");

    let out = unionctl(&["index", "gc", "--index-dir", dir, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dropped = r["layers_dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{r}");
    assert_eq!(
        dropped[0]["path"].as_str().unwrap(),
        fs::canonicalize(&l1)
            .unwrap()
            .with_file_name("l3")
            .to_str()
            .unwrap(),
        "{r}"
    );
    assert_eq!(
        (r["layers_kept"].as_u64(), r["stacks_kept"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(r["stacks_dropped"].as_u64(), Some(1), "{r}");
    assert!(
        r["bytes_after"].as_u64() < r["bytes_before"].as_u64(),
        "{r}"
    );

    // The live union still answers from its index.
    assert_eq!(fs::read_dir(live.join("d")).unwrap().count(), 300);
    assert_eq!(fs::read_to_string(live.join("top")).unwrap(), "1");
    assert!(fs::metadata(live.join("d/f299")).is_ok());
    drop(kept);
    // The kept indexes serve a new mount without being built again.
    let out = unionctl(&[
        "index",
        "stats",
        "--index-dir",
        dir,
        "--json",
        l1.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"indexed\": true"));
    let again = unionctl(&["index", "gc", "--index-dir", dir, "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["layers_dropped"].as_array().unwrap().len(),
        0,
        "{again}"
    );
}
