//! Metadata: xattrs, setuid, owners, times, long names and pax sizes.

use super::*;

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
