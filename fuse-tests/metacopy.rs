//! Metadata-only copy-up: chmod, chown, utimes and xattr changes of a lower
//! file copy no data (the kernel's `metacopy` form), the data follows on
//! the first write, and the kernel and layerfs read each other's uppers.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::harness::*;

const BIG: usize = 8 << 20;

fn big_data() -> Vec<u8> {
    (0..BIG).map(|i| (i * 7 % 253) as u8).collect()
}

fn lowers(s: &Scratch) -> Vec<PathBuf> {
    let l = LayerBuilder::new(&s.dir("l"));
    l.bytes("big", &big_data())
        .file("small", "small")
        .file("x", "x")
        .file("moved", "moved")
        .file("linked", "linked");
    vec![s.path("l")]
}

/// Metadata changes only; nothing here writes data.
fn change_metadata(m: &Path) {
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.join("small"), Some(1000), Some(1000)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::open(m.join("x"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    layers::set_xattr(&m.join("x"), "user.note", b"1");
}

fn metacopy_mark(p: &Path) -> bool {
    get_xattr(p, "trusted.overlay.metacopy").is_ok()
}

#[test]
fn metadata_changes_copy_no_data_until_the_first_write() {
    let s = Scratch::new("meta");
    let lowers = lowers(&s);
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mut mnt = mount(Via::Unionctl, &lowers, Some((&u, &w)), &m, &[]);
    let lower_blocks = fs::metadata(s.path("l/big")).unwrap().blocks();
    change_metadata(&m);

    let up = fs::metadata(u.join("big")).unwrap();
    assert_eq!(up.len(), BIG as u64, "upper copy has the size");
    assert_eq!(up.blocks(), 0, "and no data");
    assert!(metacopy_mark(&u.join("big")) && metacopy_mark(&u.join("small")));
    let seen = fs::metadata(m.join("big")).unwrap();
    assert_eq!(seen.mode() & 0o777, 0o600);
    assert_eq!(seen.blocks(), lower_blocks, "blocks are the lower file's");
    assert_eq!(
        fs::read(m.join("big")).unwrap(),
        big_data(),
        "data read from below"
    );
    assert_eq!(fs::metadata(m.join("small")).unwrap().uid(), 1000);

    // The first write brings the data up, then drops the mark.
    let mut f = OpenOptions::new().append(true).open(m.join("big")).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let mut want = big_data();
    want.extend_from_slice(b"end");
    assert_eq!(fs::read(m.join("big")).unwrap(), want);
    assert!(!metacopy_mark(&u.join("big")));
    assert_eq!(
        fs::read(u.join("big")).unwrap(),
        want,
        "upper holds the data now"
    );

    // Renaming or linking a metadata-only file keeps it metadata-only, with
    // a redirect to its data (the kernel's form); the data reads through
    // every name, before and after a remount.
    layers::set_xattr(&m.join("moved"), "user.a", b"1");
    layers::set_xattr(&m.join("linked"), "user.a", b"1");
    fs::rename(m.join("moved"), m.join("moved2")).unwrap();
    fs::hard_link(m.join("linked"), m.join("linked2")).unwrap();
    for (name, redirect) in [("moved2", "/moved"), ("linked2", "/linked")] {
        assert!(
            metacopy_mark(&u.join(name)),
            "{name} lost its metacopy mark"
        );
        assert_eq!(
            get_xattr(&u.join(name), "trusted.overlay.redirect").unwrap(),
            redirect.as_bytes()
        );
    }
    mnt.unmount();
    let mut mnt = mount(Via::Unionctl, &lowers, Some((&u, &w)), &m, &[]);
    for (name, content) in [
        ("moved2", "moved"),
        ("linked", "linked"),
        ("linked2", "linked"),
    ] {
        assert_eq!(fs::read_to_string(m.join(name)).unwrap(), content, "{name}");
    }
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.join("moved2"))
        .unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    mnt.unmount();
    assert!(!metacopy_mark(&u.join("moved2")));
    assert!(get_xattr(&u.join("moved2"), "trusted.overlay.redirect").is_err());
    assert_eq!(fs::read_to_string(u.join("moved2")).unwrap(), "moved!");
}

#[test]
fn same_upper_as_kernel_metacopy() {
    let s = Scratch::new("meta-ref");
    let lowers = lowers(&s);
    let mut trees = Vec::new();
    for (via, extra) in [
        (Via::Kernel, &["metacopy=on", "redirect_dir=on"][..]),
        (Via::Unionctl, &[][..]),
    ] {
        let tag = format!("{via:?}");
        let (u, w, m) = (
            s.dir(&format!("{tag}-u")),
            s.dir(&format!("{tag}-w")),
            s.dir(&format!("{tag}-m")),
        );
        let mut mnt = mount(via, &lowers, Some((&u, &w)), &m, extra);
        change_metadata(&m);
        let merged = snapshot(&m, View::Merged);
        mnt.unmount();
        trees.push((merged, snapshot(&u, View::Upper)));
    }
    assert_same("merged view (left: kernel)", &trees[0].0, &trees[1].0);
    assert_same("upper layer (left: kernel)", &trees[0].1, &trees[1].1);
}

#[test]
fn each_reads_the_others_metadata_only_copies() {
    for (writer, reader) in [(Via::Unionctl, Via::Kernel), (Via::Kernel, Via::Unionctl)] {
        let s = Scratch::new("meta-x");
        let lowers = lowers(&s);
        let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
        let kopts: &[&str] = &["metacopy=on", "redirect_dir=on"];
        let opts = |v| if v == Via::Kernel { kopts } else { &[][..] };
        let mut mnt = mount(writer, &lowers, Some((&u, &w)), &m, opts(writer));
        change_metadata(&m);
        mnt.unmount();
        assert!(
            metacopy_mark(&u.join("big")),
            "{writer:?} wrote no metacopy file"
        );
        let mut mnt = mount(reader, &lowers, Some((&u, &w)), &m, opts(reader));
        assert_eq!(
            fs::read(m.join("big")).unwrap(),
            big_data(),
            "{reader:?} reading {writer:?}'s copy"
        );
        assert_eq!(fs::metadata(m.join("big")).unwrap().mode() & 0o777, 0o600);
        let mut f = OpenOptions::new().append(true).open(m.join("big")).unwrap();
        f.write_all(b"+").unwrap();
        drop(f);
        assert_eq!(fs::metadata(m.join("big")).unwrap().len(), BIG as u64 + 1);
        mnt.unmount();
    }
}

#[test]
fn metacopy_off_copies_data() {
    let s = Scratch::new("meta-off");
    let lowers = lowers(&s);
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mut mnt = mount(Via::Compat, &lowers, Some((&u, &w)), &m, &["metacopy=off"]);
    change_metadata(&m);
    mnt.unmount();
    assert!(!metacopy_mark(&u.join("big")));
    assert_eq!(fs::read(u.join("big")).unwrap(), big_data());
}

/// A lower file linked into another directory becomes a metadata-only copy
/// there; after a remount both names must still read its data (the new
/// directory must be marked for it), and the copy-up must not change the
/// directories' times.
#[test]
fn linked_and_moved_files_keep_their_data_across_remounts() {
    let s = Scratch::new("meta-link");
    let l = LayerBuilder::new(&s.dir("l"));
    l.file("x/solo", "solo")
        .file("x/moved", "moved")
        .dir("b")
        .dir("c");
    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::open(s.path("l/x"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    let lowers = vec![s.path("l")];
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mut mnt = mount(Via::Unionctl, &lowers, Some((&u, &w)), &m, &[]);
    fs::hard_link(m.join("x/solo"), m.join("b/solo2")).unwrap();
    assert_eq!(
        fs::metadata(u.join("x")).unwrap().modified().unwrap(),
        past,
        "copying x up for the link must keep its times"
    );
    fs::rename(m.join("x/moved"), m.join("c/moved")).unwrap();
    mnt.unmount();
    for via in [Via::Unionctl, Via::Kernel] {
        let mut mnt = mount(via, &lowers, Some((&u, &w)), &m, &[]);
        drop_caches();
        assert_eq!(
            fs::read_to_string(m.join("b/solo2")).unwrap(),
            "solo",
            "{via:?}"
        );
        assert_eq!(
            fs::read_to_string(m.join("x/solo")).unwrap(),
            "solo",
            "{via:?}"
        );
        assert_eq!(
            fs::read_to_string(m.join("c/moved")).unwrap(),
            "moved",
            "{via:?}"
        );
        mnt.unmount();
    }
}
