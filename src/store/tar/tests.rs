//! Unpack and pack on hand-built archives: the hostile ones (traversal,
//! symlink and hard-link escapes, devices, truncation, fuzz-like mutation)
//! and the OCI rules (duplicates, whiteouts, opaque dirs, metadata).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::reader::TarReader;
use super::*;
use crate::layer::{whiteout, Layer};

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

// ---- hostile names ----

#[test]
fn dotdot_is_refused() {
    for name in ["../x", "a/../../x", "./../x", "a/.."] {
        let s = Scratch::new();
        let tar = RawTar::new().file(name, b"evil").finish();
        let err = s.unpack(&tar, &root_opts()).unwrap_err();
        assert!(matches!(err, TarError::PathEscape { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
        s.assert_contained();
    }
}

#[test]
fn absolute_names_land_inside() {
    let s = Scratch::new();
    let tar = RawTar::new()
        .file("/etc/layerfs-tar-test-abs", b"inside")
        .file("///x", b"y")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(
        fs::read(s.dest().join("etc/layerfs-tar-test-abs")).unwrap(),
        b"inside"
    );
    assert_eq!(fs::read(s.dest().join("x")).unwrap(), b"y");
    assert!(!Path::new("/etc/layerfs-tar-test-abs").exists());
    s.assert_contained();
}

#[test]
fn symlink_to_absolute_dir_is_not_followed() {
    let s = Scratch::new();
    let sentinel = s.dir.path().join("sentinel");
    for (link, write) in [("/etc", "a/passwd"), (sentinel.to_str().unwrap(), "a/keep")] {
        let tar = RawTar::new()
            .symlink("a", link)
            .file(write, b"pwned")
            .finish();
        let s2 = Scratch::new();
        let err = s2.unpack(&tar, &root_opts()).unwrap_err();
        assert!(matches!(err, TarError::SymlinkEscape { .. }), "{err}");
        assert!(err.to_string().contains(write), "{err}");
        s2.assert_contained();
    }
    // Writing to a symlink's own name replaces the link, not its target.
    let tar = RawTar::new()
        .symlink("k", sentinel.join("keep").to_str().unwrap())
        .file("k", b"replaced")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("k")).unwrap(), b"replaced");
    s.assert_contained();
}

#[test]
fn symlink_to_parent_is_not_followed() {
    for target in ["..", "../sentinel", ".", "../../.."] {
        let s = Scratch::new();
        let tar = RawTar::new()
            .symlink("a", target)
            .file("a/x", b"pwned")
            .finish();
        let err = s.unpack(&tar, &root_opts()).unwrap_err();
        assert!(
            matches!(err, TarError::SymlinkEscape { .. }),
            "{target}: {err}"
        );
        s.assert_contained();
        // Nested: the symlink deeper in the tree.
        let s = Scratch::new();
        let tar = RawTar::new()
            .dir("d")
            .symlink("d/l", target)
            .dir("d/l/sub")
            .finish();
        let err = s.unpack(&tar, &root_opts()).unwrap_err();
        assert!(matches!(err, TarError::SymlinkEscape { .. }), "{err}");
        s.assert_contained();
    }
}

#[test]
fn hardlinks_outside_or_missing_are_refused() {
    let s = Scratch::new();
    let tar = RawTar::new().link("x", "../../etc/passwd").finish();
    let err = s.unpack(&tar, &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::HardlinkOutside { .. }), "{err}");
    s.assert_contained();

    let s = Scratch::new();
    let tar = RawTar::new().link("x", "nope").finish();
    let err = s.unpack(&tar, &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::HardlinkMissing { .. }), "{err}");

    // Through a symlink planted earlier.
    let s = Scratch::new();
    let tar = RawTar::new()
        .symlink("l", "/etc")
        .link("x", "l/passwd")
        .finish();
    let err = s.unpack(&tar, &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::SymlinkEscape { .. }), "{err}");
    assert!(!s.dest().join("x").exists());

    // To a symlink itself: links the symlink, not its target.
    let s = Scratch::new();
    let tar = RawTar::new()
        .symlink("l", "/etc/passwd")
        .link("x", "l")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    let m = fs::symlink_metadata(s.dest().join("x")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(m.nlink(), 2);

    // Absolute link names are relative to the layer, like member names.
    let s = Scratch::new();
    let tar = RawTar::new().file("f", b"1").link("g", "/f").finish();
    let st = s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(st.hardlinks, 1);
    assert_eq!(fs::metadata(s.dest().join("g")).unwrap().nlink(), 2);
}

#[test]
fn devices_only_when_allowed() {
    let dev = |t: &mut RawTar| {
        t.entry(b"null", b'3', b"", b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .finish()
    };
    let s = Scratch::new();
    let err = s
        .unpack(&dev(&mut RawTar::new()), &no_dev_opts())
        .unwrap_err();
    assert!(
        matches!(
            err,
            TarError::DeviceNotAllowed {
                major: 1,
                minor: 3,
                ..
            }
        ),
        "{err}"
    );
    let s = Scratch::new();
    s.unpack(&dev(&mut RawTar::new()), &root_opts()).unwrap();
    let m = fs::symlink_metadata(s.dest().join("null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    // Fifos are always fine.
    let s = Scratch::new();
    let tar = RawTar::new().entry(b"p", b'6', b"", b"", |_| {}).finish();
    s.unpack(&tar, &no_dev_opts()).unwrap();
    assert!(fs::symlink_metadata(s.dest().join("p"))
        .unwrap()
        .file_type()
        .is_fifo());
}

/// Rootless unpacking records owners in user.containers.override_stat, which
/// the kernel refuses on fifos: the fifo is still made, with its mode.
#[test]
fn rootless_fifos_keep_their_mode_without_override_stat() {
    let s = Scratch::new();
    let opts = UnpackOptions {
        whiteouts: WhiteoutForm::UserXattr,
        allow_devices: false,
        preserve_owners: false,
        override_stat: true,
    };
    let tar = RawTar::new()
        .entry(b"p", b'6', b"", b"", |h| {
            h.set_mode(0o640);
            h.set_uid(1000);
        })
        .file("f", b"x")
        .finish();
    s.unpack(&tar, &opts).unwrap();
    let p = s.dest().join("p");
    let m = fs::symlink_metadata(&p).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(xattr(&p, "user.containers.override_stat"), None);
    assert!(xattr(&s.dest().join("f"), "user.containers.override_stat").is_some());
}

// ---- truncation and garbage ----

fn sample() -> Vec<u8> {
    RawTar::new()
        .dir("d")
        .file("d/a", &vec![7u8; 3000])
        .file("d/b", b"bee")
        .symlink("d/l", "a")
        .finish()
}

#[test]
fn truncated_input_is_an_error() {
    let tar = sample();
    // Mid-file, mid-header, at a header boundary without the end blocks.
    for cut in [700, 512 * 2 + 100, 512 * 8, 512 * 9 + 3, tar.len() - 1024] {
        let s = Scratch::new();
        let err = s.unpack(&tar[..cut], &root_opts()).unwrap_err();
        assert!(
            matches!(err, TarError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
    let gz = gzip(&tar);
    for cut in [10, gz.len() / 2, gz.len() - 4] {
        let s = Scratch::new();
        let err = s.unpack(&gz[..cut], &root_opts()).unwrap_err();
        assert!(
            matches!(err, TarError::Truncated { .. }),
            "gzip cut {cut}: {err:?}"
        );
    }
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let s = Scratch::new();
    let err = s.unpack(&zst[..zst.len() / 2], &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err:?}");
}

#[test]
fn trailing_padding_is_tolerated_and_read() {
    let mut tar = sample();
    tar.extend_from_slice(&[0u8; 10_000]);
    tar.extend_from_slice(b"garbage after the end");
    let s = Scratch::new();
    let mut seen = 0;
    let st = unpack_layer(&tar[..], &s.dest(), &root_opts(), &mut |n| seen = n).unwrap();
    assert_eq!(st.compressed_bytes, tar.len() as u64);
    assert_eq!(seen, tar.len() as u64);
    let mut gz = gzip(&sample());
    gz.extend_from_slice(&[0u8; 4096]);
    let s = Scratch::new();
    let st = s.unpack(&gz, &root_opts()).unwrap();
    assert_eq!(st.compressed_bytes, gz.len() as u64);
    // Two gzip members, as pigz or eStargz write.
    let tar = sample();
    let mut two = gzip(&tar[..1024]);
    two.extend(gzip(&tar[1024..]));
    let s = Scratch::new();
    s.unpack(&two, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("d/b")).unwrap(), b"bee");
    // zstd.
    let s = Scratch::new();
    s.unpack(&zstd::encode_all(&tar[..], 3).unwrap(), &root_opts())
        .unwrap();
    assert_eq!(fs::read(s.dest().join("d/a")).unwrap(), vec![7u8; 3000]);
}

// ---- OCI rules ----

#[test]
fn later_entries_replace_earlier_ones() {
    let s = Scratch::new();
    let tar = RawTar::new()
        .file("f", b"first")
        .file("f", b"second")
        .file("g", b"x")
        .symlink("g", "f")
        .symlink("h", "f")
        .file("h", b"file now")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("f")).unwrap(), b"second");
    assert_eq!(fs::read_link(s.dest().join("g")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(s.dest().join("h")).unwrap(), b"file now");
}

#[test]
fn dir_over_dir_merges_and_takes_new_metadata() {
    let s = Scratch::new();
    let tar = RawTar::new()
        .dir("a")
        .file("a/f", b"kept")
        .entry(b"a", b'5', b"", b"", |h| {
            h.set_mode(0o700);
            h.set_uid(7);
            h.set_mtime(1_234_567);
        })
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("a/f")).unwrap(), b"kept");
    let m = fs::metadata(s.dest().join("a")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!(m.uid(), 7);
    assert_eq!(m.mtime(), 1_234_567);
}

#[test]
fn file_over_dir_and_dir_over_file() {
    let s = Scratch::new();
    let tar = RawTar::new()
        .dir("a")
        .dir("a/deep")
        .file("a/deep/f", b"gone")
        .file("a", b"now a file")
        .file("b", b"was a file")
        .dir("b")
        .file("b/child", b"c")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("a")).unwrap(), b"now a file");
    assert!(s.dest().join("b").is_dir());
    assert_eq!(fs::read(s.dest().join("b/child")).unwrap(), b"c");
    // A file under a name that is a file: not a directory.
    let s = Scratch::new();
    let tar = RawTar::new().file("a", b"f").file("a/b", b"x").finish();
    let err = s.unpack(&tar, &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::NotADirectory { .. }), "{err}");
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

#[test]
fn whiteouts_as_char_devices() {
    let s = Scratch::new();
    let st = s.unpack(&whiteout_tar(), &root_opts()).unwrap();
    assert_eq!((st.whiteouts, st.opaque_dirs), (2, 1));
    let m = fs::symlink_metadata(s.dest().join("etc/motd")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(fs::symlink_metadata(s.dest().join("top"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr(&s.dest().join("etc/apt"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // No marker is written; siblings in the same layer stay.
    for gone in [
        "etc/.wh.motd",
        "etc/apt/.wh..wh..opq",
        ".wh.top",
        "etc/.wh..wh.plnk",
    ] {
        assert!(fs::symlink_metadata(s.dest().join(gone)).is_err(), "{gone}");
    }
    assert!(s.dest().join("etc/apt/sources.list").exists());
    // And layerfs's own reader agrees.
    let layer = Layer::open(&s.dest()).unwrap();
    let etc = layer.open_dir(c"etc").unwrap();
    let marks = whiteout::dir_marks(&etc, c"apt").unwrap();
    assert!(marks.opaque);
    let st = etc.stat(c"motd").unwrap().unwrap();
    assert!(whiteout::is_whiteout(&etc, c"motd", &st, false).unwrap());
}

#[test]
fn whiteouts_as_user_xattrs() {
    let s = Scratch::new();
    let opts = UnpackOptions {
        whiteouts: WhiteoutForm::UserXattr,
        allow_devices: false,
        preserve_owners: false,
        override_stat: true,
    };
    let st = s.unpack(&whiteout_tar(), &opts).unwrap();
    assert_eq!((st.whiteouts, st.opaque_dirs), (2, 1));
    let motd = s.dest().join("etc/motd");
    let m = fs::symlink_metadata(&motd).unwrap();
    assert!(m.file_type().is_file() && m.len() == 0);
    assert!(xattr(&motd, "user.overlay.whiteout").is_some());
    assert!(xattr(&s.dest().join("etc"), "user.overlay.xwhiteouts").is_some());
    assert!(xattr(&s.dest(), "user.overlay.xwhiteouts").is_some());
    assert_eq!(
        xattr(&s.dest().join("etc/apt"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(xattr(&s.dest().join("etc/apt"), "trusted.overlay.opaque").is_none());
    assert_eq!(
        xattr(
            &s.dest().join("etc/apt/sources.list"),
            "user.containers.override_stat"
        )
        .as_deref(),
        Some(&b"0:0:0644"[..])
    );
    let layer = Layer::open(&s.dest()).unwrap();
    let etc = layer.open_dir(c"etc").unwrap();
    let marks = whiteout::dir_marks(&etc, c"").unwrap();
    let st = etc.stat(c"motd").unwrap().unwrap();
    assert!(whiteout::is_whiteout(&etc, c"motd", &st, marks.xwhiteouts).unwrap());
    assert!(whiteout::dir_marks(&etc, c"apt").unwrap().opaque);
}

#[test]
fn hostile_whiteouts() {
    let s = Scratch::new();
    let tar = RawTar::new().file("a/.wh...", b"").finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::PathEscape { .. }
    ));
    let s = Scratch::new();
    let tar = RawTar::new()
        .symlink("l", "/etc")
        .file("l/.wh.passwd", b"")
        .finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::SymlinkEscape { .. }
    ));
    let s = Scratch::new();
    let tar = RawTar::new()
        .symlink("l", "/etc")
        .file("l/.wh..wh..opq", b"")
        .finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::SymlinkEscape { .. }
    ));
    s.assert_contained();
}

// ---- metadata ----

#[test]
fn xattrs_setuid_owners_and_times() {
    let s = Scratch::new();
    // v2 file capability: cap_net_bind_service, permitted+effective.
    let cap: &[u8] = &[
        0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let tar = RawTar::new()
        .dir("d")
        .pax(&[
            ("SCHILY.xattr.user.mime", b"text/x"),
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.containers.override_stat", b"0:0:04777"),
            ("mtime", b"1500000000.25"),
        ])
        .entry(b"d/ping", b'0', b"bin", b"", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1001);
        })
        .entry(b"d/sgid", b'5', b"", b"", |h| {
            h.set_mode(0o2775);
            h.set_gid(50);
        })
        .file("d/sgid/child", b"c")
        .entry(b"tmp", b'5', b"", b"", |h| h.set_mode(0o1777))
        .symlink("d/link", "ping")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    let ping = s.dest().join("d/ping");
    let m = fs::metadata(&ping).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!(xattr(&ping, "user.mime").as_deref(), Some(&b"text/x"[..]));
    assert_eq!(xattr(&ping, "security.capability").as_deref(), Some(cap));
    assert!(xattr(&ping, "trusted.overlay.opaque").is_none());
    assert!(xattr(&ping, "user.containers.override_stat").is_none());
    let sg = fs::metadata(s.dest().join("d/sgid")).unwrap();
    assert_eq!(sg.permissions().mode() & 0o7777, 0o2775);
    assert_eq!(sg.gid(), 50);
    assert_eq!(
        sg.mtime(),
        MTIME as i64,
        "directory mtime set after its children"
    );
    assert_eq!(
        fs::metadata(s.dest().join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(s.dest().join("d")).unwrap().mtime(),
        MTIME as i64
    );
    let l = fs::symlink_metadata(s.dest().join("d/link")).unwrap();
    assert_eq!(l.mtime(), MTIME as i64);
}

#[test]
fn long_names_and_pax_sizes() {
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(200));
    let s = Scratch::new();
    let tar = RawTar::new()
        .pax(&[("path", long.as_bytes()), ("uid", b"4000000000")])
        .file("short", b"data")
        .entry(
            b"././@LongLink",
            b'L',
            format!("{long}2\0").as_bytes(),
            b"",
            |_| {},
        )
        .file("ignored", b"two")
        .finish();
    s.unpack(&tar, &root_opts()).unwrap();
    let m = fs::metadata(s.dest().join(&long)).unwrap();
    assert_eq!(m.uid(), 4_000_000_000);
    assert_eq!(fs::read(s.dest().join(format!("{long}2"))).unwrap(), b"two");
}

#[test]
fn unsupported_and_malformed_headers() {
    let s = Scratch::new();
    let tar = RawTar::new().entry(b"v", b'V', b"", b"", |_| {}).finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Unsupported { .. }
    ));
    let mut tar = sample();
    tar[100] ^= 0x10; // mode field of the first header: checksum breaks
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Malformed { .. }
    ));
    // A PAX header announcing far more than we hold in memory.
    let s = Scratch::new();
    let tar = RawTar::new()
        .entry(b"PaxHeaders/x", b'x', b"", b"", |h| h.set_size(1 << 40))
        .finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Malformed { .. }
    ));
}

// ---- robustness ----

/// xorshift: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_archives_never_panic_nor_escape() {
    let sentinel_abs = "/tmp/layerfs-tar-mutation-sentinel-never-created";
    let bases = [
        sample(),
        whiteout_tar(),
        RawTar::new()
            .symlink("a", "..")
            .symlink("b", sentinel_abs)
            .dir("c")
            .file("c/f", b"0123456789")
            .link("c/g", "c/f")
            .pax(&[("path", b"c/p"), ("SCHILY.xattr.user.x", b"1")])
            .file("c/q", b"pax")
            .entry(b"c/n", b'6', b"", b"", |_| {})
            .finish(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = BTreeMap::new();
    for i in 0..400 {
        let base = &bases[i % bases.len()];
        let mut data = base.clone();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(data.len());
                    data[at] = rng.next() as u8;
                }
            }
            1 => data.truncate(rng.below(data.len())),
            2 => {
                // Replace a name byte with '/' or '.' to make odd paths.
                let block = rng.below(data.len() / 512) * 512;
                let at = block + rng.below(100);
                data[at] = if rng.next() % 2 == 0 { b'/' } else { b'.' };
                fix_checksum(&mut data[block..block + 512]);
            }
            _ => {
                let at = rng.below(data.len());
                let junk: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, junk);
            }
        }
        let data = if i % 3 == 0 { gzip(&data) } else { data };
        let s = Scratch::new();
        let opts = if i % 2 == 0 {
            root_opts()
        } else {
            no_dev_opts()
        };
        let r = s.unpack(&data, &opts);
        let key = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string(),
        };
        *outcomes.entry(key).or_insert(0) += 1;
        s.assert_contained();
        assert!(!Path::new(sentinel_abs).exists());
    }
    // Both outcomes happen; the exact mix is not the point.
    assert!(outcomes.len() > 2, "{outcomes:?}");
}

fn fix_checksum(block: &mut [u8]) {
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(block);
    h.set_cksum();
    block.copy_from_slice(h.as_bytes());
}

// ---- pack ----

/// The members of an archive: name → (type flag, mode, uid, link, size, xattrs).
pub(super) fn list(archive: &[u8]) -> Vec<(String, u8, u32, u32, String, u64)> {
    let (_, d) = super::compress::Decoder::detect(archive).unwrap();
    let mut r = TarReader::new(d);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let flag = match e.kind {
            super::reader::EntryKind::File => b'0',
            super::reader::EntryKind::HardLink => b'1',
            super::reader::EntryKind::Symlink => b'2',
            super::reader::EntryKind::CharDev => b'3',
            super::reader::EntryKind::BlockDev => b'4',
            super::reader::EntryKind::Dir => b'5',
            super::reader::EntryKind::Fifo => b'6',
        };
        out.push((
            e.display(),
            flag,
            e.perm,
            e.uid,
            String::from_utf8_lossy(&e.link).into_owned(),
            e.size,
        ));
    }
    out
}

#[test]
fn pack_converts_a_layerfs_upper() {
    let up = tempfile::tempdir().unwrap();
    let u = up.path();
    fs::create_dir_all(u.join("etc/apt")).unwrap();
    fs::write(u.join("etc/apt/sources.list"), b"deb y").unwrap();
    set_xattr(&u.join("etc/apt"), "trusted.overlay.opaque", b"y");
    set_xattr(&u.join("etc"), "trusted.overlay.impure", b"y");
    let c = CString::new(u.join("etc/motd").as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscall on a valid path.
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
    fs::write(u.join("etc/.wh.issue"), b"").unwrap();
    // xattr whiteout in a dir marked for them.
    fs::create_dir(u.join("x")).unwrap();
    set_xattr(&u.join("x"), "user.overlay.xwhiteouts", b"");
    fs::write(u.join("x/gone"), b"").unwrap();
    set_xattr(&u.join("x/gone"), "user.overlay.whiteout", b"y");
    // Owners from override_stat, internal xattrs dropped, client ones kept.
    fs::write(u.join("x/owned"), b"data").unwrap();
    set_xattr(
        &u.join("x/owned"),
        "user.containers.override_stat",
        b"1000:1000:04750",
    );
    set_xattr(&u.join("x/owned"), "trusted.overlay.origin", b"zzz");
    set_xattr(&u.join("x/owned"), "user.keep", b"kept");
    fs::hard_link(u.join("x/owned"), u.join("x/owned2")).unwrap();
    std::os::unix::fs::symlink("owned", u.join("x/sym")).unwrap();
    fs::create_dir(u.join("opq")).unwrap();
    fs::write(u.join("opq/.wh..wh..opq"), b"").unwrap();

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut out = Vec::new();
        let st = pack_layer(u, &mut out, compression).unwrap();
        assert_eq!(detect_compression(&out), compression);
        let mut again = Vec::new();
        pack_layer(u, &mut again, compression).unwrap();
        assert_eq!(out, again, "deterministic");
        let members = list(&out);
        assert_eq!(st.entries as usize, members.len());
        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/.wh.issue",
                "etc/.wh.motd",
                "etc/apt",
                "etc/apt/.wh..wh..opq",
                "etc/apt/sources.list",
                "opq",
                "opq/.wh..wh..opq",
                "x",
                "x/.wh.gone",
                "x/owned",
                "x/owned2",
                "x/sym",
            ]
        );
        let owned = &members[10];
        assert_eq!((owned.1, owned.2, owned.3), (b'0', 0o4750, 1000));
        let owned2 = &members[11];
        assert_eq!((owned2.1, owned2.4.as_str()), (b'1', "x/owned"));
        assert_eq!(members[12].4, "owned");
        assert_eq!(members[2].1, b'0');

        // Unpacked again: the whiteouts and opaque marks come back.
        let s = Scratch::new();
        s.unpack(&out, &root_opts()).unwrap();
        let d = s.dest();
        assert!(fs::symlink_metadata(d.join("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(fs::symlink_metadata(d.join("x/gone"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            xattr(&d.join("opq"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            xattr(&d.join("x/owned"), "user.keep").as_deref(),
            Some(&b"kept"[..])
        );
        assert!(xattr(&d.join("x/owned"), "trusted.overlay.origin").is_none());
        assert!(xattr(&d.join("etc"), "trusted.overlay.impure").is_none());
        let m = fs::metadata(d.join("x/owned")).unwrap();
        assert_eq!(
            (m.uid(), m.permissions().mode() & 0o7777, m.nlink()),
            (1000, 0o4750, 2)
        );
    }
}

#[test]
fn pack_takes_metacopy_data_from_lowers() {
    let lower = tempfile::tempdir().unwrap();
    let up = tempfile::tempdir().unwrap();
    fs::create_dir(lower.path().join("bin")).unwrap();
    fs::write(lower.path().join("bin/sh"), b"#!real data!").unwrap();
    fs::create_dir(up.path().join("bin")).unwrap();
    // A metadata-only copy: right size, no data, the mark.
    let f = fs::File::create(up.path().join("bin/sh")).unwrap();
    f.set_len(12).unwrap();
    drop(f);
    fs::set_permissions(up.path().join("bin/sh"), fs::Permissions::from_mode(0o700)).unwrap();
    set_xattr(&up.path().join("bin/sh"), "trusted.overlay.metacopy", b"");
    let err = pack_layer(up.path(), Vec::new(), Compression::None).unwrap_err();
    assert!(matches!(err, TarError::Unsupported { .. }), "{err}");
    let mut out = Vec::new();
    let opts = PackOptions {
        lowers: vec![lower.path().to_path_buf()],
    };
    pack_layer_with(up.path(), &mut out, Compression::None, &opts).unwrap();
    let s = Scratch::new();
    s.unpack(&out, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("bin/sh")).unwrap(), b"#!real data!");
    let m = fs::metadata(s.dest().join("bin/sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    assert!(xattr(&s.dest().join("bin/sh"), "trusted.overlay.metacopy").is_none());
}
