//! Unpack and pack on hand-built archives: the hostile ones (traversal,
//! symlink and hard-link escapes, devices, truncation, fuzz-like mutation)
//! and the OCI rules (duplicates, whiteouts, opaque dirs, metadata).
//!
//! Helpers here; the tests by theme: `hostile` (escapes, devices),
//! `malformed` (truncation, headers, mutation), `oci` (the layer rules),
//! `metadata`, `pack`.

mod hostile;
mod malformed;
mod metadata;
mod oci;
mod pack;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::reader::TarReader;
use super::*;

/// Builds archives byte by byte, so names may be anything (`..`, `/etc`).
pub(super) struct RawTar {
    pub buf: Vec<u8>,
}

pub(super) const MTIME: u64 = 1_600_000_000;

impl RawTar {
    pub fn new() -> Self {
        RawTar { buf: Vec::new() }
    }

    pub fn entry(
        &mut self,
        name: &[u8],
        flag: u8,
        data: &[u8],
        link: &[u8],
        tweak: impl FnOnce(&mut tar::Header),
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_mode(if flag == b'5' { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        tweak(&mut h);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while self.buf.len() % 512 != 0 {
            self.buf.push(0);
        }
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), b'0', data, b"", |_| {})
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'5', b"", b"", |_| {})
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'2', b"", target.as_bytes(), |_| {})
    }

    pub fn link(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'1', b"", target.as_bytes(), |_| {})
    }

    /// A PAX header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let recs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        let body = super::pack::pax_body(&recs);
        self.entry(b"PaxHeaders/x", b'x', &body, b"", |_| {})
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = self.buf.clone();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A scratch dir holding `dest/` (the layer) and `sentinel/` beside it.
pub(super) struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("dest")).unwrap();
        fs::create_dir(dir.path().join("sentinel")).unwrap();
        fs::write(dir.path().join("sentinel/keep"), b"untouched").unwrap();
        Scratch { dir }
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    pub fn unpack(&self, data: &[u8], opts: &UnpackOptions) -> Result<UnpackStats, TarError> {
        unpack_layer(data, &self.dest(), opts, &mut |_| {})
    }

    /// Nothing outside `dest/` changed.
    pub fn assert_contained(&self) {
        let mut names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dest", "sentinel"]);
        let s: Vec<_> = fs::read_dir(self.dir.path().join("sentinel"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(s.len(), 1);
        assert_eq!(
            fs::read(self.dir.path().join("sentinel/keep")).unwrap(),
            b"untouched"
        );
    }
}

fn root_opts() -> UnpackOptions {
    UnpackOptions::default()
}

fn no_dev_opts() -> UnpackOptions {
    UnpackOptions {
        allow_devices: false,
        ..UnpackOptions::default()
    }
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: buffers valid for their length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        buf.truncate(r as usize);
        Some(buf)
    }
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: buffers valid for their length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}", p.display());
}

fn whiteout_tar() -> Vec<u8> {
    RawTar::new()
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .dir("etc/apt")
        .file("etc/apt/.wh..wh..opq", b"")
        .file("etc/apt/sources.list", b"deb x")
        .file(".wh.top", b"")
        .file("etc/.wh..wh.plnk", b"")
        .finish()
}
