//! Packing a layerfs upper into a layer tar.

use super::*;

/// The members of an archive: name → (type flag, mode, uid, link, size, xattrs).
fn list(archive: &[u8]) -> Vec<(String, u8, u32, u32, String, u64)> {
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
