//! FUSE passthrough: on for a root daemon, data right both ways, the one
//! case it cannot serve (a writer meeting read-only handles on the lower
//! copy) refused with ETXTBSY, and `passthrough=0` restoring the kernel's
//! exact behaviour.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;

use crate::harness::*;

fn status_passthrough(m: &Mounted) -> bool {
    let out = run(Command::new(bin("unionctl"))
        .args(["status", "--json"])
        .arg(&m.mnt));
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    match (
        text.contains("\"passthrough\": true"),
        text.contains("\"passthrough\": false"),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!("no passthrough field in status: {text}"),
    }
}

fn stack(tag: &str, extra: &[&str]) -> (Scratch, Mounted) {
    let s = Scratch::new(tag);
    let data: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    LayerBuilder::new(&s.dir("l"))
        .bytes("big", &data)
        .file("small", "before ");
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let mnt = mount(Via::Unionctl, &[s.path("l")], Some((&u, &w)), &m, extra);
    (s, mnt)
}

#[test]
fn passthrough_serves_lower_and_upper_data() {
    let (_s, m) = stack("pt-data", &[]);
    assert!(
        status_passthrough(&m),
        "a root daemon on this kernel must negotiate passthrough"
    );
    let want: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        fs::read(m.p("big")).unwrap(),
        want,
        "lower file read through passthrough"
    );
    let f = fs::File::open(m.p("big")).unwrap();
    let mut buf = [0u8; 4096];
    f.read_exact_at(&mut buf, 3 << 20).unwrap();
    assert_eq!(
        &buf[..],
        &want[3 << 20..(3 << 20) + 4096],
        "positioned read"
    );
    drop(f);

    let mut w = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.p("new"))
        .unwrap();
    w.write_all(&want[..1 << 20]).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(
        fs::metadata(m.p("new")).unwrap().len(),
        1 << 20,
        "size after passthrough write"
    );
    assert_eq!(fs::read(m.p("new")).unwrap(), &want[..1 << 20]);
    assert_eq!(
        fs::read(m.upper.as_ref().unwrap().join("new")).unwrap(),
        &want[..1 << 20]
    );

    // Two handles of one upper file share one backing file.
    let mut a = OpenOptions::new().append(true).open(m.p("new")).unwrap();
    let mut b = fs::File::open(m.p("new")).unwrap();
    a.write_all(b"tail").unwrap();
    let mut all = Vec::new();
    b.read_to_end(&mut all).unwrap();
    assert!(all.ends_with(b"tail"));
}

#[test]
fn writer_meeting_read_only_lower_handles_gets_etxtbsy() {
    let (_s, m) = stack("pt-busy", &[]);
    let reader = fs::File::open(m.p("small")).unwrap();
    let busy = OpenOptions::new().append(true).open(m.p("small"));
    assert_eq!(
        errno_of(busy),
        libc::ETXTBSY,
        "writer while a lower read handle passes through"
    );
    drop(reader);
    let mut w = OpenOptions::new().append(true).open(m.p("small")).unwrap();
    w.write_all(b"after").unwrap();
    drop(w);
    assert_eq!(fs::read_to_string(m.p("small")).unwrap(), "before after");
}

#[test]
fn without_passthrough_early_readers_follow_the_copy_up() {
    let (_s, m) = stack("pt-off", &["passthrough=0"]);
    assert!(!status_passthrough(&m));
    let mut reader = fs::File::open(m.p("small")).unwrap();
    let mut w = OpenOptions::new().append(true).open(m.p("small")).unwrap();
    w.write_all(b"after").unwrap();
    drop(w);
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before after", "as with kernel overlayfs");
}
