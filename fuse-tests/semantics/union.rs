//! What makes it a union: whiteouts, opaque directories, copy-up, inode
//! numbers and link counts.

use super::*;

#[test]
fn whiteout_names_never_appear_nor_can_be_made() {
    for form in WhiteoutForm::ALL {
        let u = setup("whnames", Via::Compat, |l1, l2| {
            l2.file("gone", "x")
                .file("d/gone2", "y")
                .file("o/old", "z")
                .file("keep", "k");
            l1.whiteout("gone", form)
                .whiteout("d/gone2", form)
                .opaque("o", form.opaque())
                .file("o/new", "n");
        });
        let ctx = format!("{form:?}");
        assert_eq!(ls(&u.m.mnt), ["d", "keep", "o"], "{ctx}");
        assert!(ls(&u.p("d")).is_empty(), "{ctx}");
        assert_eq!(ls(&u.p("o")), ["new"], "{ctx}: opaque dir");
        for name in [
            "gone",
            ".wh.gone",
            "o/.wh..wh..opq",
            "d/.wh.gone2",
            ".wh.keep",
        ] {
            assert_eq!(
                errno_of(fs::symlink_metadata(u.p(name))),
                libc::ENOENT,
                "{ctx}: lookup {name}"
            );
        }
        let attempts: Vec<(&str, std::io::Result<()>)> = vec![
            ("create", File::create(u.p(".wh.new")).map(drop)),
            (
                "create over whiteout",
                File::create(u.p(".wh.gone")).map(drop),
            ),
            ("mkdir", fs::create_dir(u.p("d/.wh.dir"))),
            ("opq marker", File::create(u.p("d/.wh..wh..opq")).map(drop)),
            ("symlink", symlink("keep", u.p(".wh.sl"))),
            (
                "mknod",
                sys::mknod(&u.p(".wh.nod"), libc::S_IFIFO | 0o644, 0),
            ),
            ("link", fs::hard_link(u.p("keep"), u.p(".wh.ln"))),
            ("rename", fs::rename(u.p("keep"), u.p(".wh.keep"))),
        ];
        for (what, r) in attempts {
            assert!(r.is_err(), "{ctx}: {what} of a .wh. name must fail");
        }
        let upper = snapshot(&u.up, View::Merged);
        assert!(
            upper
                .0
                .keys()
                .all(|k| !k.split('/').any(|c| c.starts_with(".wh."))),
            "{ctx}: upper has a .wh. name:\n{upper}"
        );
        assert_eq!(read(&u.p("keep")), "k");
    }
}

const INTERNAL: [&str; 3] = ["trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."];

#[test]
fn internal_xattrs_are_hidden() {
    let mut u = setup("ixattr", Via::Unionctl, |l1, l2| {
        l2.file("o/below", "b")
            .file("uo/below", "b")
            .file("fo/below", "b")
            .file("f", "F")
            .file("x/w", "w")
            .file("gone/a", "a");
        l1.opaque("o", OpaqueForm::Trusted)
            .opaque("uo", OpaqueForm::User)
            .opaque("fo", OpaqueForm::FuseOverlayfs);
        l1.whiteout("x/w", WhiteoutForm::Xattr)
            .xattr("o", "user.visible", "v");
        // As a kernel-made layer may carry them.
        l1.file("kf", "k")
            .xattr("kf", "trusted.overlay.origin", "junk")
            .xattr("kf", "user.overlay.redirect", "junk");
    });
    fs::remove_dir_all(u.p("gone")).unwrap();
    fs::create_dir(u.p("gone")).unwrap();
    fs::create_dir(u.p("mine")).unwrap();
    fs::set_permissions(u.p("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(u.p("kf"), fs::Permissions::from_mode(0o600)).unwrap();
    for a in ["trusted.overlay.origin", "user.overlay.redirect"] {
        let copied = get_xattr(&u.u("kf"), a).ok();
        assert_ne!(
            copied.as_deref(),
            Some(&b"junk"[..]),
            "copy-up carried the lower layer's {a}"
        );
    }
    assert_eq!(
        xattr_str(&u.u("gone"), "trusted.overlay.opaque").unwrap(),
        "y"
    );
    for round in 0..2 {
        for d in ["o", "uo", "fo", "x", "gone", "f", "kf", ""] {
            let p = u.p(d);
            let names = list_xattrs(&p).unwrap();
            let bad: Vec<_> = names
                .iter()
                .filter(|n| INTERNAL.iter().any(|i| n.starts_with(i)) || n.contains("layerfs"))
                .collect();
            assert!(
                bad.is_empty(),
                "round {round}: {d:?} lists internal xattrs {bad:?}"
            );
            for a in [
                "trusted.overlay.opaque",
                "user.overlay.opaque",
                "user.fuseoverlayfs.opaque",
                "trusted.layerfs.origin",
                "user.layerfs.origin",
            ] {
                assert_eq!(
                    errno_of(get_xattr(&p, a)),
                    libc::ENODATA,
                    "round {round}: getxattr {a} on {d:?}"
                );
            }
        }
        assert_eq!(list_xattrs(&u.p("o")).unwrap(), ["user.visible"]);
        u.remount();
    }
    for a in [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "trusted.overlay.redirect",
        "user.fuseoverlayfs.opaque",
    ] {
        assert!(
            try_set_xattr(&u.p("mine"), a, b"y").is_err(),
            "setxattr {a} through the mount must fail"
        );
        assert!(
            remove_xattr(&u.p("o"), a).is_err(),
            "removexattr {a} through the mount must fail"
        );
    }
    // A directory made in a merged one is opaque on its own (as the kernel
    // makes it with redirect_dir=on); one made in an upper-only directory
    // is not, and the failed setxattr above must not have made it so.
    fs::create_dir(u.p("gone/mine")).unwrap();
    assert!(try_set_xattr(&u.p("gone/mine"), "trusted.overlay.opaque", b"y").is_err());
    assert_eq!(
        errno_of(get_xattr(&u.u("gone/mine"), "trusted.overlay.opaque")),
        libc::ENODATA
    );
    assert_eq!(
        xattr_str(&u.u("mine"), "trusted.overlay.opaque").unwrap(),
        "y"
    );
    assert!(ls(&u.p("o")).is_empty(), "o is still opaque");
}

#[test]
fn rmdir_of_merged_dirs() {
    for form in WhiteoutForm::ALL {
        let u = setup("rmdir", Via::Compat, |l1, l2| {
            l2.file("e/a", "a").file("e/b", "b").file("full/a", "a");
            l1.whiteout("e/a", form)
                .whiteout("e/b", form)
                .file("full/c", "c");
        });
        let ctx = format!("{form:?}");
        assert!(ls(&u.p("e")).is_empty(), "{ctx}");
        fs::remove_dir(u.p("e"))
            .unwrap_or_else(|e| panic!("{ctx}: rmdir of a dir that only looks empty: {e}"));
        assert_eq!(
            errno_of(fs::symlink_metadata(u.p("e"))),
            libc::ENOENT,
            "{ctx}"
        );
        assert!(
            is_whiteout(&u.u("e")),
            "{ctx}: a char 0/0 whiteout replaces the lower dir"
        );
        assert_eq!(
            errno_of(fs::remove_dir(u.p("full"))),
            libc::ENOTEMPTY,
            "{ctx}"
        );
        assert_eq!(ls(&u.p("full")), ["a", "c"], "{ctx}");
        fs::remove_file(u.p("full/a")).unwrap();
        assert_eq!(
            errno_of(fs::remove_dir(u.p("full"))),
            libc::ENOTEMPTY,
            "{ctx}"
        );
        fs::remove_file(u.p("full/c")).unwrap();
        fs::remove_dir(u.p("full"))
            .unwrap_or_else(|e| panic!("{ctx}: rmdir after emptying it: {e}"));
        assert!(is_whiteout(&u.u("full")), "{ctx}");
        drop_caches();
        assert!(ls(&u.m.mnt).is_empty(), "{ctx}: {:?}", ls(&u.m.mnt));
    }
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout() {
    let mut u = setup("unlink", Via::Unionctl, |l1, l2| {
        l2.file("f", "f").file("d/g", "g").symlink("s", "f");
        l1.file("h", "h");
    });
    for n in ["f", "d/g", "h", "s"] {
        fs::remove_file(u.p(n)).unwrap();
        assert!(is_whiteout(&u.u(n)), "whiteout for {n}");
        assert_eq!(errno_of(fs::symlink_metadata(u.p(n))), libc::ENOENT);
    }
    u.remount();
    assert_eq!(ls(&u.m.mnt), ["d"]);
    assert!(ls(&u.p("d")).is_empty());
    fs::write(u.p("f"), "new").unwrap();
    assert_eq!(read(&u.p("f")), "new");
    assert!(
        lstat(&u.u("f")).is_file(),
        "the new file replaced the whiteout"
    );
    assert_eq!(
        (read(&u.l2.join("f")), read(&u.l1.join("h"))),
        ("f".into(), "h".into())
    );
}

#[test]
fn dir_made_where_a_lower_dir_was_deleted_is_opaque() {
    let mut u = setup("opaque", Via::Compat, |l1, l2| {
        l2.file("d/x", "x").file("d/sub/y", "y");
        l1.file("d/z", "z");
    });
    fs::remove_dir_all(u.p("d")).unwrap();
    fs::create_dir(u.p("d")).unwrap();
    assert_eq!(xattr_str(&u.u("d"), "trusted.overlay.opaque").unwrap(), "y");
    assert!(ls(&u.p("d")).is_empty());
    assert_eq!(errno_of(fs::symlink_metadata(u.p("d/x"))), libc::ENOENT);
    fs::write(u.p("d/new"), "n").unwrap();
    drop_caches();
    assert_eq!(ls(&u.p("d")), ["new"]);
    u.remount();
    assert_eq!(ls(&u.p("d")), ["new"], "still opaque after a remount");
    assert_eq!(errno_of(fs::symlink_metadata(u.p("d/sub"))), libc::ENOENT);
}

#[test]
fn rename_of_a_lower_file_copies_up_and_whiteouts() {
    let u = setup("renfile", Via::Unionctl, |l1, _| {
        l1.file("f", "F")
            .mode("f", 0o640)
            .owner("f", 7, 8)
            .file("d/g", "G")
            .file("k", "K");
    });
    fs::rename(u.p("f"), u.p("f2")).unwrap();
    assert_eq!(read(&u.p("f2")), "F");
    let md = lstat(&u.u("f2"));
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o640, 7, 8));
    assert!(is_whiteout(&u.u("f")));
    // Moved as the kernel moves it with metacopy: metadata only, with a
    // redirect to the data.
    assert_eq!(
        xattr_str(&u.u("f2"), "trusted.overlay.redirect").unwrap(),
        "/f"
    );
    assert!(get_xattr(&u.u("f2"), "trusted.overlay.metacopy").is_ok());
    fs::rename(u.p("d/g"), u.p("g")).unwrap();
    assert!(is_whiteout(&u.u("d/g")) && read(&u.p("g")) == "G");
    drop_caches();
    assert_eq!(
        (read(&u.p("f2")), read(&u.p("g"))),
        ("F".into(), "G".into())
    );
    OpenOptions::new()
        .append(true)
        .open(u.p("g"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(read(&u.u("g")), "G+", "the first write brings the data up");
    fs::write(u.p("n"), "N").unwrap();
    fs::rename(u.p("n"), u.p("k")).unwrap();
    assert_eq!(read(&u.p("k")), "N");
    assert!(
        !exists(&u.u("n")),
        "no whiteout where no lower had the name"
    );
    assert_eq!(ls(&u.m.mnt), ["d", "f2", "g", "k"]);
    assert!(ls(&u.p("d")).is_empty());
    assert_eq!(
        (read(&u.l1.join("f")), read(&u.l1.join("k"))),
        ("F".into(), "K".into())
    );
}

#[test]
fn renaming_lower_and_merged_dirs_records_redirects() {
    let u = setup("rendir", Via::Compat, |l1, l2| {
        l2.file("ld/x", "x").file("md/b", "b").file("ld/sub/s", "s");
        l1.file("md/a", "a").file("dst/old", "o");
    });
    fs::rename(u.p("ld"), u.p("ld2")).unwrap();
    fs::rename(u.p("md"), u.p("dst/md")).unwrap();
    assert_eq!(
        (ls(&u.p("ld2")), ls(&u.p("dst/md"))),
        (
            vec!["sub".to_string(), "x".to_string()],
            vec!["a".to_string(), "b".to_string()]
        )
    );
    assert_eq!(read(&u.p("ld2/sub/s")), "s");
    assert!(is_whiteout(&u.u("ld")) && is_whiteout(&u.u("md")));
    assert_eq!(
        xattr_str(&u.u("ld2"), "trusted.overlay.redirect").unwrap(),
        "/ld"
    );
    assert_eq!(
        xattr_str(&u.u("dst/md"), "trusted.overlay.redirect").unwrap(),
        "/md"
    );
    // Moved again, it still points at where its lower layers hold it.
    fs::rename(u.p("ld2"), u.p("dst/ld3")).unwrap();
    assert_eq!(
        xattr_str(&u.u("dst/ld3"), "trusted.overlay.redirect").unwrap(),
        "/ld"
    );
    fs::write(u.p("dst/ld3/new"), "n").unwrap();
    drop_caches();
    assert_eq!(ls(&u.p("dst/ld3")), ["new", "sub", "x"]);
    assert_eq!(ls(&u.m.mnt), ["dst"]);
    assert_eq!(ls(&u.p("dst")), ["ld3", "md", "old"]);

    // With redirect_dir=off, directory renames give EXDEV (and mv copies).
    let s = Scratch::new("rendir-off");
    LayerBuilder::new(&s.dir("l")).file("ld/x", "x");
    let (up, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mnt = mount(
        Via::Unionctl,
        &[s.path("l")],
        Some((&up, &w)),
        &m,
        &["redirect_dir=off"],
    );
    assert_eq!(errno_of(fs::rename(mnt.p("ld"), mnt.p("ld2"))), libc::EXDEV);
    let mv = run(Command::new("mv").arg(mnt.p("ld")).arg(mnt.p("ld3")));
    assert!(mv.status.success(), "mv falls back to copying");
    assert_eq!(
        (read(&mnt.p("ld3/x")), exists(&mnt.p("ld"))),
        ("x".into(), false)
    );
}

#[test]
fn inode_numbers_are_stable() {
    let u = setup("ino", Via::Unionctl, |l1, l2| {
        l2.file("low", "L")
            .file("low2", "L2")
            .file("md/a", "a")
            .file("ren", "R")
            .file("lnk", "K");
        l1.file("md/b", "b");
    });
    fs::write(u.p("upf"), "U").unwrap();
    let names = ["low", "low2", "md", "md/a", "ren", "lnk", "upf"];
    let ino = |n: &str| lstat(&u.p(n)).ino();
    let before: Vec<u64> = names.iter().map(|n| ino(n)).collect();
    drop_caches();
    let after: Vec<u64> = names.iter().map(|n| ino(n)).collect();
    assert_eq!(before, after, "same st_ino after the kernel forgot them");
    fs::set_permissions(u.p("low"), fs::Permissions::from_mode(0o600)).unwrap();
    OpenOptions::new()
        .append(true)
        .open(u.p("low2"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    fs::write(u.p("md/new"), "n").unwrap();
    fs::rename(u.p("ren"), u.p("ren2")).unwrap();
    fs::hard_link(u.p("lnk"), u.p("lnk2")).unwrap();
    for round in 0..2 {
        let now = [
            ino("low"),
            ino("low2"),
            ino("md"),
            ino("md/a"),
            ino("ren2"),
            ino("lnk"),
            ino("upf"),
        ];
        assert_eq!(
            now.to_vec(),
            before,
            "round {round}: same st_ino after copy-up, rename and link"
        );
        assert_eq!(ino("lnk2"), before[5]);
        drop_caches();
    }
    let dev = lstat(&u.m.mnt).dev();
    let mut all: Vec<(u64, String)> = Vec::new();
    for n in [
        "low", "low2", "md", "md/a", "md/b", "md/new", "ren2", "lnk", "upf",
    ] {
        assert_eq!(lstat(&u.p(n)).dev(), dev, "st_dev of {n}");
        all.push((ino(n), n.to_string()));
    }
    all.sort();
    assert!(
        all.windows(2).all(|w| w[0].0 != w[1].0),
        "distinct inode numbers: {all:?}"
    );
}

#[test]
fn d_ino_matches_st_ino() {
    // A listing longer than one FUSE reply: the kernel asks for the first
    // part with READDIRPLUS and for the rest with plain READDIR; both count.
    let u = setup("dino", Via::Compat, |l1, l2| {
        for i in 0..150 {
            l2.file(&format!("many/lower-file-{i:03}"), "l")
                .file(&format!("many/renamed-src-{i:03}"), "r");
        }
        l2.file("many/md/a", "a");
        l1.file("many/md/b", "b").file("many/linked", "k");
    });
    for i in 0..150 {
        fs::rename(
            u.p(&format!("many/renamed-src-{i:03}")),
            u.p(&format!("many/renamed-dst-{i:03}")),
        )
        .unwrap();
    }
    for i in 0..50 {
        fs::write(u.p(&format!("many/upper-{i:03}")), "u").unwrap();
    }
    fs::hard_link(u.p("many/linked"), u.p("many/linked-too")).unwrap();
    fs::set_permissions(
        u.p("many/lower-file-000"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::create_dir(u.p("many/ud")).unwrap();
    drop_caches();
    let ents = DirStream::open(&u.p("many")).rest();
    assert_eq!(ents.len(), 150 + 150 + 50 + 2 + 2);
    let bad: Vec<String> = ents
        .iter()
        .filter_map(|e| {
            let st = lstat(&u.p(&format!("many/{}", e.name))).ino();
            (st != e.ino).then(|| format!("{}: d_ino {} st_ino {st}", e.name, e.ino))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} entries have d_ino != st_ino, e.g.:\n{}",
        bad.len(),
        ents.len(),
        bad[..bad.len().min(8)].join("\n")
    );
}

#[test]
fn nlink_of_files_and_dirs() {
    let u = setup("nlink", Via::Compat, |l1, l2| {
        l2.file("h1", "h")
            .hardlink("h2", "h1")
            .file("md/x", "x")
            .file("lonely/s1/f", "")
            .dir("lonely/s2");
        l1.dir("md/y");
    });
    let nl = |n: &str| lstat(&u.p(n)).nlink();
    assert_eq!(
        (nl("h1"), nl("h2"), lstat(&u.p("h1")).ino()),
        (2, 2, lstat(&u.p("h2")).ino()),
        "lower hard links"
    );
    fs::create_dir(u.p("ud")).unwrap();
    assert_eq!(nl("ud"), 2);
    for s in ["s1", "s2", "s3"] {
        fs::create_dir(u.p(&format!("ud/{s}"))).unwrap();
    }
    assert_eq!(nl("ud"), 5, "pure upper dir: 2 + subdirs");
    fs::remove_dir(u.p("ud/s3")).unwrap();
    assert_eq!(nl("ud"), 4);
    assert_eq!(nl("md"), 1, "merged dir");
    assert_eq!(
        nl("lonely"),
        4,
        "dir in one lower layer only: its own count"
    );
    fs::write(u.p("x"), "").unwrap();
    fs::hard_link(u.p("x"), u.p("y")).unwrap();
    assert_eq!((nl("x"), nl("y")), (2, 2));
    fs::remove_file(u.p("y")).unwrap();
    assert_eq!(nl("x"), 1);
}

#[test]
fn copy_up_preserves_data_mode_owner_times_xattrs() {
    let u = setup("preserve", Via::Unionctl, |l1, _| {
        l1.file("f", "payload")
            .owner("f", 1234, 2345)
            .mode("f", 0o4755);
        l1.xattr("f", "user.a", "1").xattr("f", "trusted.t", "3");
        l1.dir("d")
            .owner("d", 11, 12)
            .mode("d", 0o750)
            .xattr("d", "user.dir", "x");
        l1.symlink("s", "f").owner("s", 21, 22);
        // Layers are immutable once mounted (the index relies on it): give
        // the file its capability and times before the mount.
        let setcap = run(Command::new("setcap")
            .arg("cap_net_raw+ep")
            .arg(l1.root.join("f")));
        assert!(
            setcap.status.success(),
            "setcap: {}",
            String::from_utf8_lossy(&setcap.stderr)
        );
        for (p, t) in [("f", 1_000_000_000), ("d", 1_100_000_000)] {
            sys::utimens(&l1.root.join(p), (900_000_000, 0), (t, 123)).unwrap();
        }
    });
    let low_perm = perm(&u.l1.join("f"));
    assert_eq!(low_perm, 0o4755, "setcap kept the setuid bit");

    OpenOptions::new().write(true).open(u.p("f")).unwrap();
    try_set_xattr(&u.p("d"), "user.more", b"m").unwrap();
    try_set_xattr(&u.p("s"), "trusted.s", b"s").unwrap();
    for root in [u.m.mnt.clone(), u.up.clone()] {
        let f = root.join("f");
        let md = lstat(&f);
        assert_eq!(
            (read(&f), md.mode() & 0o7777, md.uid(), md.gid()),
            ("payload".into(), 0o4755, 1234, 2345),
            "{f:?}"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_000_000_000, 123),
            "{f:?} mtime"
        );
        assert_eq!(
            (
                xattr_str(&f, "user.a").unwrap(),
                xattr_str(&f, "trusted.t").unwrap()
            ),
            ("1".into(), "3".into())
        );
        let caps = run(Command::new("getcap").arg(&f));
        assert!(
            String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw=ep"),
            "{f:?} file capability: {caps:?}"
        );
        let d = lstat(&root.join("d"));
        assert_eq!(
            (d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()),
            (0o750, 11, 12, 1_100_000_000),
            "{root:?}/d"
        );
        assert_eq!(xattr_str(&root.join("d"), "user.dir").unwrap(), "x");
        let s = lstat(&root.join("s"));
        assert_eq!(
            (s.uid(), s.gid(), fs::read_link(root.join("s")).unwrap()),
            (21, 22, PathBuf::from("f")),
            "{root:?}/s"
        );
    }
}
