//! Truncated, padded, malformed and mutated archives: errors, never a
//! panic nor an escape.

use super::*;

fn sample() -> Vec<u8> {
    RawTar::new()
        .dir("d")
        .file("d/a", &vec![7u8; 3000])
        .file("d/b", b"bee")
        .symlink("d/l", "a")
        .finish()
}

#[test]
fn truncated_input_is_an_error() {
    let tar = sample();
    // Mid-file, mid-header, at a header boundary without the end blocks.
    for cut in [700, 512 * 2 + 100, 512 * 8, 512 * 9 + 3, tar.len() - 1024] {
        let s = Scratch::new();
        let err = s.unpack(&tar[..cut], &root_opts()).unwrap_err();
        assert!(
            matches!(err, TarError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
    let gz = gzip(&tar);
    for cut in [10, gz.len() / 2, gz.len() - 4] {
        let s = Scratch::new();
        let err = s.unpack(&gz[..cut], &root_opts()).unwrap_err();
        assert!(
            matches!(err, TarError::Truncated { .. }),
            "gzip cut {cut}: {err:?}"
        );
    }
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let s = Scratch::new();
    let err = s.unpack(&zst[..zst.len() / 2], &root_opts()).unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err:?}");
}

#[test]
fn trailing_padding_is_tolerated_and_read() {
    let mut tar = sample();
    tar.extend_from_slice(&[0u8; 10_000]);
    tar.extend_from_slice(b"garbage after the end");
    let s = Scratch::new();
    let mut seen = 0;
    let st = unpack_layer(&tar[..], &s.dest(), &root_opts(), &mut |n| seen = n).unwrap();
    assert_eq!(st.compressed_bytes, tar.len() as u64);
    assert_eq!(seen, tar.len() as u64);
    let mut gz = gzip(&sample());
    gz.extend_from_slice(&[0u8; 4096]);
    let s = Scratch::new();
    let st = s.unpack(&gz, &root_opts()).unwrap();
    assert_eq!(st.compressed_bytes, gz.len() as u64);
    // Two gzip members, as pigz or eStargz write.
    let tar = sample();
    let mut two = gzip(&tar[..1024]);
    two.extend(gzip(&tar[1024..]));
    let s = Scratch::new();
    s.unpack(&two, &root_opts()).unwrap();
    assert_eq!(fs::read(s.dest().join("d/b")).unwrap(), b"bee");
    // zstd.
    let s = Scratch::new();
    s.unpack(&zstd::encode_all(&tar[..], 3).unwrap(), &root_opts())
        .unwrap();
    assert_eq!(fs::read(s.dest().join("d/a")).unwrap(), vec![7u8; 3000]);
}

#[test]
fn unsupported_and_malformed_headers() {
    let s = Scratch::new();
    let tar = RawTar::new().entry(b"v", b'V', b"", b"", |_| {}).finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Unsupported { .. }
    ));
    let mut tar = sample();
    tar[100] ^= 0x10; // mode field of the first header: checksum breaks
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Malformed { .. }
    ));
    // A PAX header announcing far more than we hold in memory.
    let s = Scratch::new();
    let tar = RawTar::new()
        .entry(b"PaxHeaders/x", b'x', b"", b"", |h| h.set_size(1 << 40))
        .finish();
    assert!(matches!(
        s.unpack(&tar, &root_opts()).unwrap_err(),
        TarError::Malformed { .. }
    ));
}

// ---- robustness ----

/// xorshift: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_archives_never_panic_nor_escape() {
    let sentinel_abs = "/tmp/layerfs-tar-mutation-sentinel-never-created";
    let bases = [
        sample(),
        whiteout_tar(),
        RawTar::new()
            .symlink("a", "..")
            .symlink("b", sentinel_abs)
            .dir("c")
            .file("c/f", b"0123456789")
            .link("c/g", "c/f")
            .pax(&[("path", b"c/p"), ("SCHILY.xattr.user.x", b"1")])
            .file("c/q", b"pax")
            .entry(b"c/n", b'6', b"", b"", |_| {})
            .finish(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = BTreeMap::new();
    for i in 0..400 {
        let base = &bases[i % bases.len()];
        let mut data = base.clone();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(data.len());
                    data[at] = rng.next() as u8;
                }
            }
            1 => data.truncate(rng.below(data.len())),
            2 => {
                // Replace a name byte with '/' or '.' to make odd paths.
                let block = rng.below(data.len() / 512) * 512;
                let at = block + rng.below(100);
                data[at] = if rng.next() % 2 == 0 { b'/' } else { b'.' };
                fix_checksum(&mut data[block..block + 512]);
            }
            _ => {
                let at = rng.below(data.len());
                let junk: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, junk);
            }
        }
        let data = if i % 3 == 0 { gzip(&data) } else { data };
        let s = Scratch::new();
        let opts = if i % 2 == 0 {
            root_opts()
        } else {
            no_dev_opts()
        };
        let r = s.unpack(&data, &opts);
        let key = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string(),
        };
        *outcomes.entry(key).or_insert(0) += 1;
        s.assert_contained();
        assert!(!Path::new(sentinel_abs).exists());
    }
    // Both outcomes happen; the exact mix is not the point.
    assert!(outcomes.len() > 2, "{outcomes:?}");
}

fn fix_checksum(block: &mut [u8]) {
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(block);
    h.set_cksum();
    block.copy_from_slice(h.as_bytes());
}
