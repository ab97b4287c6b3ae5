//! The OCI layer rules: later entries win, dirs merge, whiteouts in each
//! form.

use super::*;
use crate::layer::{whiteout, Layer};

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
