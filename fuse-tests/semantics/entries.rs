//! Operations on names, and a read-only union.

use super::*;

#[test]
fn lookup_getattr_readlink_symlink() {
    let u = setup("lookup", Via::Unionctl, |l1, l2| {
        l1.file("top", "one")
            .mode("top", 0o640)
            .owner("top", 1001, 1002)
            .symlink("link", "top");
        l2.file("d/deep", "deep")
            .file("top", "hidden")
            .symlink("d/abs", "/etc/hostname");
    });
    assert_eq!(read(&u.p("top")), "one", "the top layer wins");
    assert_eq!(read(&u.p("d/deep")), "deep");
    assert_eq!(errno_of(fs::symlink_metadata(u.p("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::symlink_metadata(u.p("top/x"))), libc::ENOTDIR);
    let attrs = |p: &Path| {
        let m = lstat(p);
        (
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.nlink(),
        )
    };
    assert_eq!(
        attrs(&u.p("top")),
        attrs(&u.l1.join("top")),
        "getattr reports the lower object's attributes"
    );
    assert_eq!(fs::read_link(u.p("link")).unwrap(), Path::new("top"));
    assert_eq!(
        fs::read_link(u.p("d/abs")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert!(lstat(&u.p("d/abs")).file_type().is_symlink());
    symlink("d/deep", u.p("new")).unwrap();
    assert_eq!(fs::read_link(u.p("new")).unwrap(), Path::new("d/deep"));
    assert_eq!(
        read(&u.p("new")),
        "deep",
        "a new symlink resolves through the mount"
    );
    assert_eq!(
        fs::read_link(u.u("new")).unwrap(),
        Path::new("d/deep"),
        "symlink lands in the upper layer"
    );
    assert_eq!(ls(&u.up), ["new"], "lookups and reads copy nothing up");
}

#[test]
fn setattr_chmod_chown_truncate_utimens() {
    let u = setup("setattr", Via::Compat, |l1, _| {
        l1.file("m", "mode")
            .file("o", "owner")
            .file("t", "0123456789")
            .file("times", "x");
    });
    fs::set_permissions(u.p("m"), fs::Permissions::from_mode(0o4711)).unwrap();
    assert_eq!(
        (perm(&u.p("m")), perm(&u.u("m")), perm(&u.l1.join("m"))),
        (0o4711, 0o4711, 0o644)
    );
    assert_eq!(read(&u.p("m")), "mode");

    std::os::unix::fs::lchown(u.p("o"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::lchown(u.p("o"), Some(99), None).unwrap();
    for p in [u.p("o"), u.u("o")] {
        assert_eq!((lstat(&p).uid(), lstat(&p).gid()), (99, 4321), "{p:?}");
    }
    assert_eq!(lstat(&u.l1.join("o")).uid(), 0, "lower untouched");

    sys::truncate(&u.p("t"), 4).unwrap();
    assert_eq!(read(&u.p("t")), "0123");
    open_rw(&u.p("t")).set_len(6).unwrap();
    assert_eq!(fs::read(u.p("t")).unwrap(), b"0123\0\0");
    assert_eq!(fs::read(u.u("t")).unwrap(), b"0123\0\0");
    assert_eq!(read(&u.l1.join("t")), "0123456789");

    let p = u.p("times");
    sys::utimens(&p, (1_000_000_000, 500), (1_200_000_000, 250_000_000)).unwrap();
    let md = lstat(&p);
    assert_eq!(
        (md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()),
        (1_000_000_000, 500, 1_200_000_000, 250_000_000)
    );
    assert_eq!(
        lstat(&u.u("times")).mtime(),
        1_200_000_000,
        "times set on the upper copy"
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now();
    sys::utimens(&p, (0, libc::UTIME_NOW), (0, libc::UTIME_OMIT)).unwrap();
    let md = lstat(&p);
    assert!(
        (before - 1..=now() + 1).contains(&md.atime()),
        "UTIME_NOW sets atime to now, got {}",
        md.atime()
    );
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (1_200_000_000, 250_000_000),
        "UTIME_OMIT keeps mtime"
    );
    let before = now();
    sys::utimens(&p, (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW)).unwrap();
    let md2 = lstat(&p);
    assert!(
        (before - 1..=now() + 1).contains(&md2.mtime()),
        "UTIME_NOW sets mtime to now"
    );
    assert_eq!(
        (md2.atime(), md2.atime_nsec()),
        (md.atime(), md.atime_nsec()),
        "UTIME_OMIT keeps atime"
    );
}

#[test]
fn mknod_fifo_socket_and_devices() {
    let u = setup("mknod", Via::Unionctl, |_, l2| {
        l2.fifo("lowfifo");
    });
    let cases: [(&str, u32, libc::dev_t); 5] = [
        ("fifo", libc::S_IFIFO | 0o640, 0),
        ("sock", libc::S_IFSOCK | 0o600, 0),
        ("zero", libc::S_IFCHR | 0o644, libc::makedev(1, 5)),
        ("blk", libc::S_IFBLK | 0o640, libc::makedev(7, 200)),
        ("reg", libc::S_IFREG | 0o600, 0),
    ];
    for (name, mode, dev) in cases {
        sys::mknod(&u.p(name), mode, dev).unwrap_or_else(|e| panic!("mknod {name}: {e}"));
        for p in [u.p(name), u.u(name)] {
            let md = lstat(&p);
            assert_eq!((md.mode(), md.rdev()), (mode, dev), "{p:?}");
        }
    }
    assert_eq!(
        errno_of(sys::mknod(&u.p("fifo"), libc::S_IFIFO | 0o600, 0)),
        libc::EEXIST
    );
    assert!(lstat(&u.p("lowfifo")).file_type().is_fifo());

    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(u.p("fifo"))
        .unwrap();
    (&fifo).write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    (&fifo).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping", "a fifo made through the mount carries data");
    let mut zeros = [1u8; 16];
    File::open(u.p("zero"))
        .unwrap()
        .read_exact(&mut zeros)
        .unwrap();
    assert_eq!(
        zeros, [0u8; 16],
        "a char device made through the mount opens the device"
    );
}

#[test]
fn mkdir_rmdir_unlink() {
    let u = setup("mkdir", Via::Compat, |l1, _| {
        l1.dir("ld")
            .mode("ld", 0o751)
            .owner("ld", 5, 6)
            .file("lf", "x");
    });
    fs::DirBuilder::new().mode(0o750).create(u.p("d")).unwrap();
    assert_eq!((perm(&u.p("d")), perm(&u.u("d"))), (0o750, 0o750));
    assert_eq!(errno_of(fs::create_dir(u.p("ld"))), libc::EEXIST);
    fs::create_dir(u.p("ld/sub")).unwrap();
    assert!(lstat(&u.u("ld/sub")).is_dir());
    let md = lstat(&u.u("ld"));
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o751, 5, 6),
        "the parent was copied up with its attributes"
    );
    fs::remove_dir(u.p("ld/sub")).unwrap();
    assert!(
        !exists(&u.p("ld/sub")) && !exists(&u.u("ld/sub")),
        "an upper-only dir leaves no whiteout"
    );
    assert_eq!(errno_of(fs::remove_dir(u.p("lf"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(u.p("d"))), libc::EISDIR);
    File::create(u.p("d/f")).unwrap();
    assert_eq!(errno_of(fs::remove_dir(u.p("d"))), libc::ENOTEMPTY);
    fs::remove_file(u.p("d/f")).unwrap();
    assert!(
        !exists(&u.u("d/f")),
        "an upper-only file leaves no whiteout"
    );
    fs::remove_dir(u.p("d")).unwrap();
    assert!(!exists(&u.p("d")) && !exists(&u.u("d")));
}

#[test]
fn rename_noreplace() {
    let u = setup("noreplace", Via::Compat, |l1, l2| {
        l1.file("a", "A");
        l2.file("low", "L");
    });
    fs::write(u.p("up"), "U").unwrap();
    const NR: u32 = libc::RENAME_NOREPLACE;
    assert_eq!(
        errno_of(sys::renameat2(&u.p("up"), &u.p("a"), NR)),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(sys::renameat2(&u.p("up"), &u.p("low"), NR)),
        libc::EEXIST,
        "target only in a lower layer"
    );
    assert_eq!(
        errno_of(sys::renameat2(&u.p("a"), &u.p("up"), NR)),
        libc::EEXIST
    );
    assert_eq!(
        (read(&u.p("a")), read(&u.p("low")), read(&u.p("up"))),
        ("A".into(), "L".into(), "U".into())
    );
    assert_eq!(ls(&u.up), ["up"], "a refused rename copies nothing up");
    sys::renameat2(&u.p("up"), &u.p("fresh"), NR).unwrap();
    sys::renameat2(&u.p("a"), &u.p("fresh2"), NR).unwrap();
    assert_eq!(
        (read(&u.p("fresh")), read(&u.p("fresh2"))),
        ("U".into(), "A".into())
    );
    assert!(!exists(&u.p("up")) && !exists(&u.p("a")));
    assert!(is_whiteout(&u.u("a")));
}

#[test]
fn rename_exchange() {
    let u = setup("exchange", Via::Unionctl, |l1, l2| {
        l1.file("a", "A").file("f", "F");
        l2.file("b", "B").file("ldir/x", "x").file("g", "G");
    });
    const X: u32 = libc::RENAME_EXCHANGE;
    let ino_a = lstat(&u.p("a")).ino();
    sys::renameat2(&u.p("a"), &u.p("b"), X).unwrap();
    assert_eq!(
        (read(&u.p("a")), read(&u.p("b"))),
        ("B".into(), "A".into()),
        "file <-> file, both lower"
    );
    assert_eq!(
        lstat(&u.p("b")).ino(),
        ino_a,
        "the inode number travels with the file"
    );
    drop_caches();
    assert_eq!((read(&u.p("a")), read(&u.p("b"))), ("B".into(), "A".into()));
    // Upper: the data that came up in full, and the metadata-only copy of
    // the other file pointing at its lower data.
    assert_eq!(read(&u.u("a")), "B");
    assert_eq!(
        xattr_str(&u.u("b"), "trusted.overlay.redirect").unwrap(),
        "/a"
    );
    assert_eq!(
        (read(&u.l1.join("a")), read(&u.l2.join("b"))),
        ("A".into(), "B".into()),
        "lowers untouched"
    );

    fs::create_dir(u.p("ud")).unwrap();
    fs::write(u.p("ud/x"), "in dir").unwrap();
    sys::renameat2(&u.p("f"), &u.p("ud"), X).unwrap();
    assert_eq!(read(&u.p("ud")), "F", "file <-> dir");
    assert_eq!(read(&u.p("f/x")), "in dir");
    assert_eq!(ls(&u.p("f")), ["x"]);
    drop_caches();
    assert_eq!(
        (read(&u.p("ud")), ls(&u.p("f"))),
        ("F".into(), vec!["x".to_string()])
    );

    assert_eq!(
        errno_of(sys::renameat2(&u.p("g"), &u.p("ldir"), X)),
        libc::EXDEV,
        "a lower dir cannot move yet"
    );
    assert_eq!(
        errno_of(sys::renameat2(&u.p("g"), &u.p("missing"), X)),
        libc::ENOENT
    );
    assert_eq!(read(&u.p("g")), "G");
}

#[test]
fn link_copies_up_and_shares_the_inode() {
    let u = setup("link", Via::Compat, |l1, _| {
        l1.file("f", "F").dir("dir");
    });
    fs::hard_link(u.p("f"), u.p("g")).unwrap();
    let (f, g) = (lstat(&u.p("f")), lstat(&u.p("g")));
    assert_eq!((f.ino(), f.nlink(), g.nlink()), (g.ino(), 2, 2));
    let (uf, ug) = (lstat(&u.u("f")), lstat(&u.u("g")));
    assert_eq!(
        (uf.ino(), uf.nlink()),
        (ug.ino(), 2),
        "both names are one upper inode"
    );
    assert_eq!(lstat(&u.l1.join("f")).nlink(), 1, "lower untouched");
    OpenOptions::new()
        .append(true)
        .open(u.p("g"))
        .unwrap()
        .write_all(b"G")
        .unwrap();
    assert_eq!(read(&u.p("f")), "FG");
    drop_caches();
    let (f2, g2) = (lstat(&u.p("f")), lstat(&u.p("g")));
    assert_eq!(
        (f2.ino(), g2.ino(), f2.nlink()),
        (f.ino(), f.ino(), 2),
        "stable across cache drops"
    );
    fs::remove_file(u.p("f")).unwrap();
    assert_eq!(
        (lstat(&u.p("g")).nlink(), read(&u.p("g"))),
        (1, "FG".into())
    );
    assert!(is_whiteout(&u.u("f")));
    assert_eq!(
        errno_of(fs::hard_link(u.p("dir"), u.p("dir2"))),
        libc::EPERM
    );
    fs::write(u.p("h"), "").unwrap();
    assert_eq!(errno_of(fs::hard_link(u.p("g"), u.p("h"))), libc::EEXIST);
}

#[test]
fn read_only_mount_refuses_every_write() {
    for via in [Via::Unionctl, Via::Compat] {
        let s = Scratch::new("ro");
        let l = s.dir("l");
        LayerBuilder::new(&l)
            .file("f", "F")
            .file("d/x", "x")
            .dir("e")
            .symlink("s", "f")
            .xattr("f", "user.a", "1");
        let before = snapshot(&l, View::Merged);
        let m = mount(via, std::slice::from_ref(&l), None, &s.dir("m"), &[]);
        let p = |n: &str| m.p(n);
        assert_eq!(read(&p("f")), "F");
        let ops: Vec<(&str, std::io::Result<()>)> = vec![
            ("create", File::create(p("new")).map(drop)),
            (
                "open write",
                OpenOptions::new().write(true).open(p("f")).map(drop),
            ),
            (
                "open rdwr",
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p("f"))
                    .map(drop),
            ),
            (
                "open trunc",
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(p("f"))
                    .map(drop),
            ),
            ("mkdir", fs::create_dir(p("nd"))),
            ("mknod", sys::mknod(&p("fifo"), libc::S_IFIFO | 0o644, 0)),
            ("symlink", symlink("x", p("ns"))),
            ("link", fs::hard_link(p("f"), p("nl"))),
            ("unlink", fs::remove_file(p("f"))),
            ("rmdir", fs::remove_dir(p("e"))),
            ("rename", fs::rename(p("f"), p("g"))),
            (
                "chmod",
                fs::set_permissions(p("f"), fs::Permissions::from_mode(0o600)),
            ),
            ("chown", std::os::unix::fs::lchown(p("f"), Some(1), Some(1))),
            ("truncate", sys::truncate(&p("f"), 0)),
            ("utimens", sys::utimens(&p("f"), (1, 0), (1, 0))),
            ("setxattr", try_set_xattr(&p("f"), "user.b", b"2")),
            ("removexattr", remove_xattr(&p("f"), "user.a")),
            ("access W_OK", sys::access(&p("f"), libc::W_OK)),
        ];
        for (what, r) in ops {
            assert_eq!(
                errno_of(r),
                libc::EROFS,
                "{via:?}: {what} on a read-only union"
            );
        }
        drop(m);
        assert_same(
            "lower after the read-only mount",
            &before,
            &snapshot(&l, View::Merged),
        );
    }
}

/// The kernel keeps directory listings across opens; every change made
/// through the mount must still show in the next listing, also when the
/// change races with a listing being taken.
#[test]
fn kept_listings_follow_every_change() {
    let u = setup("kept-listings", Via::Unionctl, |l1, l2| {
        l1.file("d/low1", "1").dir("d/lowdir");
        l2.file("d/low2", "2");
    });
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let d = u.p("d");
    assert_eq!(names(&d), ["low1", "low2", "lowdir"]);
    assert_eq!(names(&d), ["low1", "low2", "lowdir"], "the kept listing");
    File::create(d.join("new")).unwrap();
    assert_eq!(names(&d), ["low1", "low2", "lowdir", "new"], "after create");
    fs::remove_file(d.join("low1")).unwrap();
    assert_eq!(
        names(&d),
        ["low2", "lowdir", "new"],
        "after unlink of a lower file"
    );
    fs::rename(d.join("low2"), u.p("moved")).unwrap();
    assert_eq!(names(&d), ["lowdir", "new"], "after rename out");
    assert!(names(&u.p("")).contains(&"moved".to_string()), "rename in");
    fs::remove_dir(d.join("lowdir")).unwrap();
    fs::create_dir(d.join("lowdir")).unwrap();
    assert_eq!(
        names(&d.join("lowdir")),
        Vec::<String>::new(),
        "opaque after rmdir+mkdir"
    );
    std::os::unix::fs::symlink("x", d.join("sym")).unwrap();
    fs::hard_link(d.join("new"), d.join("link")).unwrap();
    assert_eq!(
        names(&d),
        ["link", "lowdir", "new", "sym"],
        "after symlink and link"
    );

    // Listings taken while another thread creates and removes names: once
    // the writer has stopped, a listing shows exactly what is there.
    let dir = d.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..300 {
            let p = dir.join(format!("race{i}"));
            File::create(&p).unwrap();
            if i % 3 == 0 {
                fs::remove_file(&p).unwrap();
            }
        }
    });
    while !writer.is_finished() {
        names(&d);
    }
    writer.join().unwrap();
    let mut want: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("race{i}"))
        .chain(["link", "lowdir", "new", "sym"].map(String::from))
        .collect();
    want.sort();
    assert_eq!(names(&d), want, "after concurrent changes");
}
