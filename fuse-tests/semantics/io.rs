//! Open files and directories: data, attributes, xattrs, permissions.

use super::*;

#[test]
fn open_create_read_write_flush_fsync() {
    let u = setup("open", Via::Unionctl, |l1, _| {
        l1.file("low", "lower data")
            .file("mid", "kept")
            .file("ro", "read only")
            .file("app", "app");
    });
    let excl = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
    };
    assert_eq!(
        errno_of(excl(&u.p("low"))),
        libc::EEXIST,
        "O_EXCL on a lower file"
    );
    let mut f = excl(&u.p("new")).unwrap();
    f.write_all(b"hello").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: we own fd. close() is FLUSH then RELEASE; its result must be 0.
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close (flush): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        (read(&u.p("new")), read(&u.u("new")), perm(&u.u("new"))),
        ("hello".into(), "hello".into(), 0o600)
    );

    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(u.p("low"))
        .unwrap();
    assert_eq!(
        (lstat(&u.p("low")).len(), lstat(&u.u("low")).len()),
        (0, 0),
        "O_TRUNC on a lower file"
    );
    assert_eq!(read(&u.l1.join("low")), "lower data");

    open_rw(&u.p("mid")).write_all_at(b"XX", 1).unwrap();
    assert_eq!(
        (read(&u.p("mid")), read(&u.u("mid"))),
        ("kXXt".into(), "kXXt".into())
    );
    OpenOptions::new()
        .append(true)
        .open(u.p("app"))
        .unwrap()
        .write_all(b"end")
        .unwrap();
    assert_eq!(read(&u.p("app")), "append");

    let mut s = String::new();
    File::open(u.p("ro"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "read only");
    assert!(!exists(&u.u("ro")), "a read-only open copies nothing up");
    assert_eq!(read(&u.l1.join("mid")), "kept");
}

/// A merged directory of 2,000 names across three layers.
fn big_dir(u: &U) -> Vec<String> {
    let mut want: Vec<String> = (0..1500)
        .map(|i| format!("f{i:04}"))
        .filter(|n| !n.ends_with('0'))
        .collect();
    want.extend((0..500).map(|i| format!("g{i:04}")));
    for i in 0..300 {
        fs::write(u.p(&format!("big/h{i:04}")), "h").unwrap();
        want.push(format!("h{i:04}"));
    }
    for i in (5..1500).step_by(50) {
        fs::remove_file(u.p(&format!("big/f{i:04}"))).unwrap();
        want.retain(|n| *n != format!("f{i:04}"));
    }
    want.sort();
    want
}

#[test]
fn readdir_is_complete_and_seekdir_consistent() {
    let u = setup("readdir", Via::Compat, |l1, l2| {
        for i in 0..1500 {
            l2.file(&format!("big/f{i:04}"), "f");
        }
        for i in 0..500 {
            l1.file(&format!("big/g{i:04}"), "g");
        }
        for i in (0..1500).step_by(10) {
            l1.whiteout(&format!("big/f{i:04}"), WhiteoutForm::CharDev);
        }
    });
    let want = big_dir(&u);
    let mut d = DirStream::open(&u.p("big"));
    let all = d.rest();
    let mut names: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names.len(), want.len(), "every name exactly once");
    assert_eq!(names, want);
    for k in [0, 1, 17, 999, all.len() / 2, all.len() - 2] {
        d.seek(all[k].pos);
        let (a, b) = (d.next().unwrap(), d.next().unwrap());
        assert_eq!(
            (&a.name, &b.name),
            (&all[k].name, &all[k + 1].name),
            "seekdir to telldir position {k}"
        );
    }
    d.rewind();
    let again: Vec<String> = d.rest().into_iter().map(|e| e.name).collect();
    assert_eq!(
        again,
        all.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        "rewinddir gives the same listing"
    );
}

/// Mode bits from `ls -l`'s permission string.
fn parse_ls_mode(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut m = 0;
    for (i, bit) in [0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1]
        .into_iter()
        .enumerate()
    {
        if !matches!(b[1 + i], b'-' | b'S' | b'T') {
            m |= bit;
        }
    }
    for (i, extra) in [(3, 0o4000), (6, 0o2000), (9, 0o1000)] {
        if matches!(b[i], b's' | b'S' | b't' | b'T') {
            m |= extra;
        }
    }
    m
}

#[test]
fn readdirplus_attributes_match_stat() {
    let u = setup("rdplus", Via::Unionctl, |l1, l2| {
        l2.file("mix/a", "aaaa")
            .owner("mix/a", 10, 20)
            .mode("mix/a", 0o4755)
            .file("mix/b", "b")
            .mode("mix/b", 0o600);
        l2.dir("mix/sub")
            .mode("mix/sub", 0o1777)
            .symlink("mix/ln", "a")
            .hardlink("mix/a2", "mix/a");
        l1.file("mix/c", "cccccc")
            .owner("mix/c", 30, 40)
            .mode("mix/c", 0o2750)
            .file("mix/b", "bb");
    });
    fs::write(u.p("mix/new"), "123").unwrap();
    fs::set_permissions(u.p("mix/c"), fs::Permissions::from_mode(0o640)).unwrap();
    sys::utimens(&u.p("mix/new"), (0, libc::UTIME_OMIT), (1_300_000_000, 0)).unwrap();
    drop_caches();
    let out = run(Command::new("ls")
        .args(["-lni", "--time-style=+%s"])
        .arg(u.p("mix")));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with("total")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name = f[7];
        let truth = [u.u("mix"), u.l1.join("mix"), u.l2.join("mix")]
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| exists(p))
            .unwrap();
        let t = lstat(&truth);
        let got: (u32, u32, u32, u64, i64) = (
            parse_ls_mode(f[1]),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
        );
        let size = if t.is_dir() { got.3 } else { t.size() };
        assert_eq!(
            got,
            (t.mode() & 0o7777, t.uid(), t.gid(), size, t.mtime()),
            "ls -l of {name}:\n{line}"
        );
        let st = lstat(&u.p(&format!("mix/{name}")));
        assert_eq!(
            f[0].parse::<u64>().unwrap(),
            st.ino(),
            "readdirplus inode of {name} = stat's"
        );
        if !t.is_dir() {
            assert_eq!(f[2].parse::<u64>().unwrap(), st.nlink(), "nlink of {name}");
        }
        seen += 1;
    }
    assert_eq!(seen, 7, "ls -l lists a a2 b c ln new sub:\n{text}");
}

#[test]
fn fsyncdir_and_statfs() {
    let u = setup("statfs", Via::Compat, |l1, l2| {
        l1.dir("merged").dir("lonly");
        l2.dir("merged");
    });
    fs::write(u.p("merged/f"), "x").unwrap();
    for d in ["merged", "lonly", ""] {
        let dir = File::open(u.p(d)).unwrap();
        sys::fsync(&dir).unwrap_or_else(|e| panic!("fsync dir {d:?}: {e}"));
        dir.sync_data().unwrap();
    }
    let (m, up) = (sys::statvfs(&u.m.mnt), sys::statvfs(&u.up));
    assert_eq!(
        (m.f_bsize, m.f_blocks, m.f_files, m.f_namemax),
        (up.f_bsize, up.f_blocks, up.f_files, up.f_namemax)
    );
    assert!(
        m.f_bfree.abs_diff(up.f_bfree) < up.f_blocks / 100,
        "free blocks are the upper's"
    );
}

#[test]
fn xattrs_get_set_list_remove() {
    let u = setup("xattr", Via::Unionctl, |l1, _| {
        l1.file("f", "F")
            .xattr("f", "user.color", "blue")
            .xattr("f", "user.size", "big");
        l1.file("g", "G").dir("d").xattr("d", "user.d", "1");
    });
    let f = u.p("f");
    assert_eq!(xattr_str(&f, "user.color").unwrap(), "blue");
    assert_eq!(errno_of(get_xattr(&f, "user.nope")), libc::ENODATA);
    let mut names = list_xattrs(&f).unwrap();
    names.sort();
    assert_eq!(names, ["user.color", "user.size"]);
    assert!(!exists(&u.u("f")), "reading xattrs copies nothing up");

    try_set_xattr(&f, "user.new", b"1").unwrap();
    try_set_xattr(&f, "trusted.t", b"tt").unwrap();
    assert_eq!(
        xattr_str(&u.u("f"), "user.color").unwrap(),
        "blue",
        "copied up with its xattrs"
    );
    assert_eq!(
        (
            xattr_str(&f, "user.new").unwrap(),
            xattr_str(&f, "trusted.t").unwrap()
        ),
        ("1".into(), "tt".into())
    );
    remove_xattr(&f, "user.color").unwrap();
    assert_eq!(errno_of(get_xattr(&f, "user.color")), libc::ENODATA);
    assert_eq!(
        xattr_str(&u.l1.join("f"), "user.color").unwrap(),
        "blue",
        "lower untouched"
    );
    assert_eq!(
        errno_of(remove_xattr(&u.p("g"), "user.nope")),
        libc::ENODATA
    );
    assert!(
        !exists(&u.u("g")),
        "removing a missing xattr copies nothing up"
    );

    let n = cpath(&f);
    let set = |name: &str, flags| {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and buffer.
        let r =
            unsafe { libc::lsetxattr(n.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, flags) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    assert_eq!(errno_of(set("user.new", libc::XATTR_CREATE)), libc::EEXIST);
    assert_eq!(
        errno_of(set("user.absent", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    // SAFETY: a size query with an empty buffer.
    let len =
        unsafe { libc::lgetxattr(n.as_ptr(), c"user.size".as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(len, 3, "size query");

    try_set_xattr(&u.p("d"), "user.e", b"2").unwrap();
    assert_eq!(
        (
            xattr_str(&u.u("d"), "user.d").unwrap(),
            xattr_str(&u.p("d"), "user.e").unwrap()
        ),
        ("1".into(), "2".into())
    );
}

fn ok_as_nobody(argv: &[&str]) -> bool {
    as_nobody(argv).status.success()
}

#[test]
fn posix_acls_are_enforced_and_copied_up() {
    let u = setup("acl", Via::Compat, |l1, _| {
        l1.file("secret", "s3cret")
            .dir("priv")
            .mode("priv", 0o700)
            .file("priv/in", "inside");
    });
    let secret = u.p("secret").display().to_string();
    let sh = |args: &[&str]| {
        let o = run(Command::new(args[0]).args(&args[1..]));
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(ok_as_nobody(&["cat", &secret]), "0644: nobody may read");
    sh(&["setfacl", "-m", "u:nobody:---", &secret]);
    assert!(sh(&["getfacl", "-n", &secret]).contains("user:65534:---"));
    assert!(
        get_xattr(&u.u("secret"), "system.posix_acl_access").is_ok(),
        "ACL stored on the upper copy"
    );
    let o = as_nobody(&["cat", &secret]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "the ACL denies nobody"
    );
    assert_eq!(read(&u.p("secret")), "s3cret");
    sh(&["setfacl", "-b", &secret]);
    assert!(ok_as_nobody(&["cat", &secret]), "ACL removed");

    let private = u.p("priv").display().to_string();
    assert!(!ok_as_nobody(&["ls", &private]));
    sh(&["setfacl", "-m", "u:nobody:rx", &private]);
    assert!(
        ok_as_nobody(&["cat", &format!("{private}/in")]),
        "the ACL grants nobody"
    );

    fs::create_dir(u.p("shared")).unwrap();
    let shared = u.p("shared").display().to_string();
    sh(&[
        "setfacl",
        "-d",
        "-m",
        "u:nobody:rwx",
        "-m",
        "u:nobody:rwx",
        &shared,
    ]);
    fs::write(u.p("shared/file"), "root's").unwrap();
    assert!(
        sh(&["getfacl", "-n", &format!("{shared}/file")]).contains("user:65534:rwx"),
        "default ACL inherited"
    );
    assert!(
        ok_as_nobody(&["sh", "-c", &format!("echo more >> {shared}/file")]),
        "inherited ACL grants writing"
    );
    assert_eq!(read(&u.p("shared/file")), "root'smore\n");
}

#[test]
fn access_checks_permissions() {
    let u = setup("access", Via::Unionctl, |l1, _| {
        l1.file("rf", "r")
            .file("exe", "#!/bin/sh\n")
            .mode("exe", 0o755)
            .file("own", "o")
            .mode("own", 0o600);
    });
    sys::access(&u.p("rf"), libc::R_OK | libc::W_OK).unwrap();
    assert_eq!(
        errno_of(sys::access(&u.p("rf"), libc::X_OK)),
        libc::EACCES,
        "root needs an x bit to execute"
    );
    sys::access(&u.p("exe"), libc::X_OK).unwrap();
    let p = |n: &str| u.p(n).display().to_string();
    assert!(ok_as_nobody(&["test", "-r", &p("rf")]));
    assert!(!ok_as_nobody(&["test", "-w", &p("rf")]));
    assert!(ok_as_nobody(&["test", "-x", &p("exe")]));
    assert!(!ok_as_nobody(&["test", "-r", &p("own")]));
    assert!(ls(&u.up).is_empty(), "access() copies nothing up");
}

#[test]
fn fallocate_and_punch_hole() {
    let u = setup("falloc", Via::Compat, |l1, _| {
        l1.bytes("f", &[0xab; 65536]);
    });
    let f = open_rw(&u.p("f"));
    sys::fallocate(&f, 0, 65536, 65536).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 131072);
    let before = lstat(&u.u("f")).blocks();
    sys::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 131072, 65536).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 131072, "KEEP_SIZE");
    assert!(
        lstat(&u.u("f")).blocks() > before,
        "space allocated beyond the size"
    );
    sys::fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        4096,
        8192,
    )
    .unwrap();
    drop(f);
    let data = fs::read(u.p("f")).unwrap();
    assert_eq!(data.len(), 131072);
    assert!(
        data[..4096].iter().all(|&b| b == 0xab) && data[12288..65536].iter().all(|&b| b == 0xab)
    );
    assert!(data[4096..12288].iter().all(|&b| b == 0) && data[65536..].iter().all(|&b| b == 0));
    assert_eq!(
        sys::lseek(&File::open(u.u("f")).unwrap(), 0, libc::SEEK_HOLE).unwrap(),
        4096,
        "a real hole"
    );
    assert_eq!(
        fs::read(u.l1.join("f")).unwrap(),
        vec![0xab; 65536],
        "lower untouched"
    );
}

#[test]
fn seek_data_and_hole_on_a_lower_sparse_file() {
    const M: i64 = 1 << 20;
    let u = setup("seek", Via::Unionctl, |l1, _| {
        let f = File::create(l1.root.join("sparse")).unwrap();
        f.write_all_at(&[1; 4096], 0).unwrap();
        f.write_all_at(&[2; 4096], M as u64).unwrap();
        f.set_len(4 * M as u64).unwrap();
    });
    let check = |f: &File, what: &str| {
        assert_eq!(sys::lseek(f, 0, libc::SEEK_DATA).unwrap(), 0, "{what}");
        assert_eq!(sys::lseek(f, 0, libc::SEEK_HOLE).unwrap(), 4096, "{what}");
        assert_eq!(sys::lseek(f, 4096, libc::SEEK_DATA).unwrap(), M, "{what}");
        assert_eq!(
            sys::lseek(f, M + 10, libc::SEEK_HOLE).unwrap(),
            M + 4096,
            "{what}"
        );
        assert_eq!(
            errno_of(sys::lseek(f, M + 4096, libc::SEEK_DATA)),
            libc::ENXIO,
            "{what}"
        );
        assert_eq!(
            errno_of(sys::lseek(f, 4 * M, libc::SEEK_DATA)),
            libc::ENXIO,
            "{what}"
        );
    };
    check(
        &File::open(u.p("sparse")).unwrap(),
        "lower file through the mount",
    );
    let w = open_rw(&u.p("sparse"));
    check(&w, "copied-up file through the mount");
    check(&File::open(u.u("sparse")).unwrap(), "upper copy");
    assert!(
        lstat(&u.u("sparse")).blocks() * 512 < M as u64,
        "copy-up keeps holes"
    );
    let mut buf = [0u8; 4];
    w.read_exact_at(&mut buf, M as u64).unwrap();
    assert_eq!(buf, [2; 4]);
}

#[test]
fn copy_file_range_between_lower_and_upper() {
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let u = setup("cfr", Via::Compat, |l1, _| {
        l1.bytes("src", &data).file("target", &"t".repeat(10000));
    });
    let src = File::open(u.p("src")).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(u.p("dst"))
        .unwrap();
    let mut done = 0;
    while done < data.len() {
        let n =
            sys::copy_file_range(&src, done as i64, &dst, done as i64, data.len() - done).unwrap();
        assert!(n > 0, "copy_file_range made no progress at {done}");
        done += n;
    }
    assert!(fs::read(u.p("dst")).unwrap() == data, "lower -> upper copy");
    assert!(!exists(&u.u("src")), "reading the source copies nothing up");
    let target = open_rw(&u.p("target"));
    assert_eq!(
        sys::copy_file_range(&dst, 5000, &target, 100, 1000).unwrap(),
        1000
    );
    let got = fs::read(u.p("target")).unwrap();
    assert_eq!(
        &got[100..1100],
        &data[5000..6000],
        "upper -> copied-up lower file"
    );
    assert_eq!(
        (&got[..100], got.len()),
        ("t".repeat(100).as_bytes(), 10000)
    );
    assert_eq!(fs::read(u.u("target")).unwrap(), got);
    assert_eq!(read(&u.l1.join("target")), "t".repeat(10000));
}
