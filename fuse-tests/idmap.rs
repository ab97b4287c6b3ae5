//! uid/gid mapping and squashing: what the layers store against what the
//! mount shows, both ways (as containers/storage uses them for containers
//! with their own id ranges).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::harness::*;

#[test]
fn mapped_ids_show_shifted_and_store_back() {
    let s = Scratch::new("idmap");
    LayerBuilder::new(&s.dir("l"))
        .file("root-owned", "r")
        .file("user-owned", "u")
        .owner("user-owned", 1000, 1000)
        .file("outside", "o")
        .owner("outside", 70000, 70000)
        .dir("pub")
        .mode("pub", 0o777);
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    // podman's form, with the leading empty field.
    let mnt = mount(
        Via::Compat,
        &[s.path("l")],
        Some((&u, &w)),
        &m,
        &["uidmapping=:0:100000:65536", "gidmapping=:0:200000:65536"],
    );
    let ids = |p: &str| {
        let md = fs::symlink_metadata(m.join(p)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(ids("root-owned"), (100000, 200000));
    assert_eq!(ids("user-owned"), (101000, 201000));
    assert_eq!(
        ids("outside"),
        (65534, 65534),
        "unmapped ids show as the overflow id"
    );

    // A file made by (shown) uid 100000+5 is stored as 5.
    let out = run(Command::new("setpriv")
        .args(["--reuid=100005", "--regid=200005", "--clear-groups", "--"])
        .args(["sh", "-c"])
        .arg(format!("touch {}/pub/mine", m.display())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids("pub/mine"), (100005, 200005));
    let up = fs::symlink_metadata(u.join("pub/mine")).unwrap();
    assert_eq!((up.uid(), up.gid()), (5, 5), "stored unshifted");

    // chown stores through the mapping; an id no range covers is refused.
    std::os::unix::fs::chown(m.join("root-owned"), Some(100007), Some(200007)).unwrap();
    let up = fs::symlink_metadata(u.join("root-owned")).unwrap();
    assert_eq!((up.uid(), up.gid()), (7, 7));
    assert_eq!(
        errno_of(std::os::unix::fs::chown(
            m.join("user-owned"),
            Some(3),
            None
        )),
        libc::EINVAL
    );
    drop(mnt);

    let m2 = s.dir("m2");
    let _squashed = mount(
        Via::Unionctl,
        &[s.path("l")],
        None,
        &m2,
        &["squash_to_uid=42", "squash_to_gid=43"],
    );
    let md = fs::symlink_metadata(m2.join("user-owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (42, 43));
    let m3 = s.dir("m3");
    let _root = mount(
        Via::Unionctl,
        &[s.path("l")],
        None,
        &m3,
        &["squash_to_root"],
    );
    let md = fs::symlink_metadata(m3.join("outside")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

/// `xattr_permissions=2`: owner and mode live in user.containers.override_stat
/// (what rootless containers/storage writes where it cannot chown).
#[test]
fn override_stat_xattr_holds_owner_and_mode() {
    let s = Scratch::new("override");
    let l = LayerBuilder::new(&s.dir("l"));
    l.file("recorded", "r").file("plain", "p");
    layers::set_xattr(
        &s.path("l/recorded"),
        "user.containers.override_stat",
        b"1000:1001:04750:file",
    );
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mnt = mount(
        Via::Compat,
        &[s.path("l")],
        Some((&u, &w)),
        &m,
        &["xattr_permissions=2"],
    );
    let md = fs::symlink_metadata(m.join("recorded")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1001, 0o4750)
    );
    assert!(
        !list_xattrs(&m.join("recorded"))
            .unwrap()
            .iter()
            .any(|a| a.contains("override_stat")),
        "the override xattr is the union's, not the client's"
    );
    // chown and chmod write the xattr; the real file keeps its owner.
    std::os::unix::fs::chown(m.join("plain"), Some(1234), Some(1235)).unwrap();
    fs::set_permissions(
        m.join("plain"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let md = fs::symlink_metadata(m.join("plain")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 1235, 0o600)
    );
    let up = fs::symlink_metadata(u.join("plain")).unwrap();
    assert_eq!((up.uid(), up.gid()), (0, 0));
    assert_eq!(
        get_xattr(&u.join("plain"), "user.containers.override_stat").unwrap(),
        b"1234:1235:0600"
    );
    // New entries record their owner there too.
    fs::create_dir(m.join("newdir")).unwrap();
    assert!(get_xattr(&u.join("newdir"), "user.containers.override_stat").is_ok());
    drop(mnt);
}
