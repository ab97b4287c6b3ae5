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
            wait_for(std::time::Duration::from_secs(5), || process_gone(pid)),
            "daemon {pid} still alive after unmount"
        );
    }
}
