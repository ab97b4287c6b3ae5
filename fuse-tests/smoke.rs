//! A first end-to-end check: mount, read through the stack, unmount.

use crate::harness::*;

#[test]
fn mount_read_unmount_both_command_lines() {
    for via in [Via::Unionctl, Via::Compat] {
        let s = Scratch::new("smoke");
        LayerBuilder::new(&s.dir("l1"))
            .file("top", "1")
            .file("d/a", "a1");
        LayerBuilder::new(&s.dir("l2"))
            .file("bottom", "2")
            .file("d/b", "b2")
            .file("d/a", "a2");
        let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
        let mut mnt = mount(via, &[s.path("l1"), s.path("l2")], Some((&u, &w)), &m, &[]);
        assert_eq!(std::fs::read_to_string(mnt.p("top")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(mnt.p("bottom")).unwrap(), "2");
        assert_eq!(
            std::fs::read_to_string(mnt.p("d/a")).unwrap(),
            "a1",
            "top layer wins"
        );
        let mut names: Vec<_> = std::fs::read_dir(mnt.p("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let pid = mnt.daemon_pid().expect("daemon record");
        mnt.unmount();
        assert!(
            wait_for(std::time::Duration::from_secs(60), || process_gone(pid)),
            "daemon {pid} still alive after unmount"
        );
    }
}

/// An engine may unmount with a bare umount(2), which returns before the
/// daemon has exited, and mount the same upper layer again at once
/// (containerd does, around reading a rootfs's /etc/group): the new mount
/// waits for the old daemon instead of finding the work dir still locked.
#[test]
fn a_mount_waits_for_the_last_daemon_of_its_upper_to_exit() {
    use std::os::fd::AsRawFd;
    let s = Scratch::new("remount");
    LayerBuilder::new(&s.dir("l1")).file("f", "1");
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    // A daemon still exiting holds the work dir's lock; so does this.
    let lock = std::fs::File::open(&w).expect("open work dir");
    // SAFETY: flock on a valid fd.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let start = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        drop(lock);
    });
    // No index: building one would take about as long as the lock is held.
    let mnt = mount(
        Via::Compat,
        &[s.path("l1")],
        Some((&u, &w)),
        &m,
        &["index=off"],
    );
    assert!(start.elapsed() >= std::time::Duration::from_millis(400));
    assert_eq!(std::fs::read_to_string(mnt.p("f")).expect("read"), "1");
    release.join().expect("thread");

    // And the real thing: bare umount, mount again at once.
    drop(mnt);
    for round in 0..10 {
        let mut mnt = mount(Via::Compat, &[s.path("l1")], Some((&u, &w)), &m, &[]);
        std::fs::write(mnt.p(&format!("r{round}")), "x").expect("write");
        let c = cpath(&m);
        // SAFETY: a valid path; unmounting our own mount.
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "round {round}");
        mnt.unmounted_elsewhere();
    }
    assert_eq!(std::fs::read_dir(&u).expect("upper").count(), 10);
}

/// Two live mounts of one upper layer are still refused, with a message
/// that says why.
#[test]
fn a_second_live_mount_of_one_upper_is_refused() {
    let s = Scratch::new("twice");
    LayerBuilder::new(&s.dir("l1")).file("f", "1");
    let (u, w) = (s.dir("u"), s.dir("w"));
    let _first = mount(
        Via::Compat,
        &[s.path("l1")],
        Some((&u, &w)),
        &s.dir("m1"),
        &[],
    );
    let out = try_mount(
        Via::Compat,
        &[s.path("l1")],
        Some((&u, &w)),
        &s.dir("m2"),
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another mount"), "{err}");
    assert!(!is_mountpoint(&s.path("m2")));
}
