//! The layer store, end to end through `unionctl`: importing the real
//! five-layer fixture (OCI layout, OCI archive, docker-archive) and
//! comparing the mounted container with the same image unpacked by podman
//! on kernel overlayfs; a round trip (change, commit, export, import into a
//! fresh store, and podman running the export); bad archives that must
//! leave the store exactly as it was; concurrent and killed imports; the
//! container lifecycle.
//!
//! podman and skopeo run against a private store in the scratch dir (never
//! the machine's), one test at a time.
//!
//! `podman.rs`: imports and a round trip compared with podman's;
//! `bad_input.rs`: broken archives and a full disk; `lifecycle.rs`:
//! concurrent and killed imports, containers, the driver trait.
//! `layout.rs` breaks OCI layouts on purpose.

mod bad_input;
mod layout;
mod lifecycle;
mod podman;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::*;

/// What the fixture's files are, to prove the tests never write into it.
fn fixture_fingerprint() -> Vec<(String, u64, i64)> {
    let mut out = Vec::new();
    let blobs = fixture().join("blobs/sha256");
    for e in fs::read_dir(&blobs).expect("fixture blobs") {
        let e = e.expect("entry");
        let m = e.metadata().expect("stat");
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            m.len(),
            m.mtime(),
        ));
    }
    out.sort();
    out
}

fn uc(root: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("unionctl"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null()))
}

/// Runs `unionctl --root ROOT ARGS`; panics with its stderr on failure.
#[track_caller]
fn ok(root: &Path, args: &[&str]) -> String {
    let out = uc(root, args);
    assert!(
        out.status.success(),
        "unionctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs it and expects a failure whose message contains `want`.
#[track_caller]
fn refused(root: &Path, args: &[&str], want: &str) -> String {
    let out = uc(root, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "unionctl {args:?} succeeded; expected a failure mentioning {want:?}"
    );
    assert!(
        err.contains(want),
        "unionctl {args:?}: expected {want:?} in the error, got: {err}"
    );
    err
}

fn json(root: &Path, args: &[&str]) -> serde_json::Value {
    let out = ok(root, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn import(root: &Path, src: &Path, name: &str) -> serde_json::Value {
    json(
        root,
        &[
            "image",
            "import",
            "--json",
            "--name",
            name,
            src.to_str().expect("utf-8 path"),
        ],
    )
}

/// Creates container `name` on `image` and mounts it at its own dir;
/// returns the mountpoint.
fn create_and_mount(root: &Path, image: &str, name: &str) -> PathBuf {
    ok(root, &["create", image, name]);
    let out = ok(root, &["mount", name]);
    let mp = PathBuf::from(out.trim());
    assert!(
        is_mountpoint(&mp),
        "{mp:?} is not mounted after `mount {name}`"
    );
    mp
}

/// Everything under a store root: type, mode, owner, size and a content
/// hash of every file (layer contents included), without times (creating
/// and removing a staging dir changes `tmp/`'s mtime and nothing else).
fn store_listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("below").display().to_string();
            let hash = if m.is_file() && m.len() < (1 << 20) {
                format!("{:x}", fnv(&fs::read(&p).expect("read")))
            } else {
                String::new()
            };
            out.insert(
                rel,
                format!(
                    "{:o} {}:{} {} {hash}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.len() }
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[track_caller]
fn assert_listing_same(
    what: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("gone:    {k} {v}")),
            Some(w) if w != v => diffs.push(format!("changed: {k} {v} -> {w}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diffs.push(format!("new:     {k} {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: the store changed:\n{}",
        diffs.join("\n")
    );
}

fn sha256_hex(p: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(p));
    assert!(out.status.success(), "sha256sum {p:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}
