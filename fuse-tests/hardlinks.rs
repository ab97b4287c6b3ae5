//! Lower hard links stay one inode after one of their names is copied up
//! (the kernel's `index=on` behaviour), across remounts, whichever name is
//! written through.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use crate::harness::*;

fn append(p: &std::path::Path, data: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap()
        .write_all(data)
        .unwrap();
}

#[test]
fn all_names_of_a_lower_hard_link_stay_one_file() {
    let s = Scratch::new("hardlinks");
    LayerBuilder::new(&s.dir("l"))
        .file("d/g", "G")
        .hardlink("d/hard", "d/g")
        .hardlink("e/third", "d/g")
        .file("d/single", "S");
    let lowers = vec![s.path("l")];
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mut mnt = mount(Via::Unionctl, &lowers, Some((&u, &w)), &m, &[]);
    let ino = fs::metadata(m.join("d/g")).unwrap().ino();
    // Look up g first, then write through another name: the write must land
    // on the file all three names share.
    append(&m.join("d/hard"), b"+");
    for name in ["d/g", "d/hard", "e/third"] {
        let md = fs::metadata(m.join(name)).unwrap();
        assert_eq!(fs::read_to_string(m.join(name)).unwrap(), "G+", "{name}");
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "{name}: (st_ino, nlink)");
    }
    mnt.unmount();
    let mut mnt = mount(Via::Unionctl, &lowers, Some((&u, &w)), &m, &[]);
    drop_caches();
    for name in ["e/third", "d/hard", "d/g"] {
        let md = fs::metadata(m.join(name)).unwrap();
        assert_eq!(
            fs::read_to_string(m.join(name)).unwrap(),
            "G+",
            "after remount: {name}"
        );
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "after remount: {name}");
    }
    // A metadata change through one name is seen through all.
    std::os::unix::fs::chown(m.join("e/third"), Some(7), Some(7)).unwrap();
    assert_eq!(fs::metadata(m.join("d/g")).unwrap().uid(), 7);
    // Removing a name leaves the others.
    fs::remove_file(m.join("d/g")).unwrap();
    assert_eq!(fs::read_to_string(m.join("d/hard")).unwrap(), "G+");
    assert_eq!(fs::read_to_string(m.join("d/single")).unwrap(), "S");
    mnt.unmount();
    assert_eq!(
        (
            fs::metadata(u.join("d/hard")).unwrap().ino(),
            fs::metadata(u.join("e/third")).unwrap().ino()
        ),
        {
            let i = fs::metadata(u.join("d/hard")).unwrap().ino();
            (i, i)
        },
        "one upper inode"
    );
}
