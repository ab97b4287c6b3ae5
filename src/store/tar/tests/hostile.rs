//! Hostile names: traversal, symlink and hard-link escapes, devices.

use super::*;

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
