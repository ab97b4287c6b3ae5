//! What the index stores: keys and the encoding of entry records.
//!
//! Keys (all big-endian, so RocksDB's byte order is the tree order):
//! - `L <layer id:8> m` → [`LayerMeta`] of one layer's index;
//! - `L <layer id:8> e <dir path> 0x00 <name>` → [`Entry`] of one layer;
//! - `S <stack id:8> m` → [`LayerMeta`] of a merged stack index;
//! - `S <stack id:8> e <dir path> 0x00 <name>` → [`Merged`] entry of a stack;
//! - `L <layer id:8> p` → [`Place`]: where the layer was when indexed;
//! - `S <stack id:8> l` → the ids of the stack's layers, top first.
//!
//! The last two let `unionctl index gc` find indexes whose layers are
//! gone; an index built before they existed has none and is kept.
//!
//! A directory's entries share the prefix `… e <dir path> 0x00`, so listing
//! it is one range scan, and a parent path sorts before its children's
//! (`0x00` sorts before `/`). Dir paths are relative to the layer root,
//! empty for the root.

use crate::layer::{Kind, Stat};

/// Format of the records; a different version means re-index.
pub const VERSION: u32 = 2;

pub const WHITEOUT: u8 = 1;
pub const OPAQUE: u8 = 2;
/// The entry has extended attributes (of any namespace, internal ones
/// included); without it, getxattr of a lower-only object needs no syscall.
pub const HAS_XATTRS: u8 = 4;
/// A `.wh.<name>` sits beside the entry: layers below do not count.
pub const CUT_BELOW: u8 = 8;

/// One entry of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub flags: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub rdev: u64,
    pub ino: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// Symlink target.
    pub target: Vec<u8>,
}

/// A name resolved through a whole lower stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The top object's attributes (whiteouts never appear here).
    pub entry: Entry,
    /// Lower layers holding it, top first: every merged layer for a
    /// directory, the one holding it for anything else.
    pub layers: Vec<u16>,
}

/// State of a layer's or a stack's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMeta {
    pub version: u32,
    /// False while building: an interrupted build is never served.
    pub complete: bool,
    pub entries: u64,
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Socket => 5,
        Kind::CharDev => 6,
        Kind::BlockDev => 7,
    }
}

fn kind_of(c: u8) -> Option<Kind> {
    Some(match c {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Socket,
        6 => Kind::CharDev,
        7 => Kind::BlockDev,
        _ => return None,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (a, b) = self.0.split_at_checked(N)?;
        self.0 = b;
        a.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        let (a, b) = self.0.split_at_checked(n)?;
        self.0 = b;
        Some(a.to_vec())
    }
}

impl Entry {
    /// The record of a stat'ed layer entry.
    pub fn from_stat(st: &Stat, flags: u8, target: Vec<u8>) -> Option<Entry> {
        let s = &st.0;
        Some(Entry {
            kind: st.kind()?,
            flags,
            mode: s.st_mode,
            uid: s.st_uid,
            gid: s.st_gid,
            nlink: s.st_nlink,
            size: s.st_size as u64,
            blocks: s.st_blocks as u64,
            blksize: s.st_blksize as u32,
            rdev: s.st_rdev,
            ino: s.st_ino,
            atime: (s.st_atime, s.st_atime_nsec),
            mtime: (s.st_mtime, s.st_mtime_nsec),
            ctime: (s.st_ctime, s.st_ctime_nsec),
            target,
        })
    }

    /// The `struct stat` this record stands for, on device `dev`.
    pub fn to_stat(&self, dev: u64) -> Stat {
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut s: libc::stat64 = unsafe { std::mem::zeroed() };
        s.st_dev = dev;
        s.st_ino = self.ino;
        s.st_mode = self.mode;
        s.st_uid = self.uid;
        s.st_gid = self.gid;
        s.st_nlink = self.nlink;
        s.st_size = self.size as i64;
        s.st_blocks = self.blocks as i64;
        s.st_blksize = i64::from(self.blksize);
        s.st_rdev = self.rdev;
        (s.st_atime, s.st_atime_nsec) = self.atime;
        (s.st_mtime, s.st_mtime_nsec) = self.mtime;
        (s.st_ctime, s.st_ctime_nsec) = self.ctime;
        Stat(s)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(kind_code(self.kind));
        out.push(self.flags);
        for v in [self.mode, self.uid, self.gid, self.blksize] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.nlink, self.size, self.blocks, self.rdev, self.ino] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (s, n) in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&(self.target.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.target);
    }

    fn read(r: &mut Reader<'_>) -> Option<Entry> {
        let kind = kind_of(r.u8()?)?;
        let flags = r.u8()?;
        let (mode, uid, gid, blksize) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let (nlink, size, blocks, rdev, ino) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let atime = (r.i64()?, r.i64()?);
        let mtime = (r.i64()?, r.i64()?);
        let ctime = (r.i64()?, r.i64()?);
        let n = r.u32()? as usize;
        let target = r.bytes(n)?;
        Some(Entry {
            kind,
            flags,
            mode,
            uid,
            gid,
            nlink,
            size,
            blocks,
            blksize,
            rdev,
            ino,
            atime,
            mtime,
            ctime,
            target,
        })
    }

    pub fn decode(v: &[u8]) -> Option<Entry> {
        let mut r = Reader(v);
        let e = Entry::read(&mut r)?;
        r.0.is_empty().then_some(e)
    }
}

impl Merged {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        self.entry.encode(&mut out);
        out.extend_from_slice(&(self.layers.len() as u16).to_le_bytes());
        for l in &self.layers {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out
    }

    pub fn decode(v: &[u8]) -> Option<Merged> {
        let mut r = Reader(v);
        let entry = Entry::read(&mut r)?;
        let n = r.u16()? as usize;
        let layers = (0..n).map(|_| r.u16()).collect::<Option<Vec<_>>>()?;
        r.0.is_empty().then_some(Merged { entry, layers })
    }
}

impl LayerMeta {
    /// A finished index in this format: the only kind served.
    pub fn usable(&self) -> bool {
        self.complete && self.version == VERSION
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(u8::from(self.complete));
        out.extend_from_slice(&self.entries.to_le_bytes());
        out
    }

    pub fn decode(v: &[u8]) -> Option<LayerMeta> {
        let mut r = Reader(v);
        let m = LayerMeta {
            version: r.u32()?,
            complete: r.u8()? == 1,
            entries: r.u64()?,
        };
        r.0.is_empty().then_some(m)
    }
}

/// `<space> <id> m`.
pub fn meta_key(space: u8, id: u64) -> Vec<u8> {
    let mut k = index_prefix(space, id);
    k.push(b'm');
    k
}

/// `<space> <id>`: the start of every key of one index.
pub fn index_prefix(space: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(space);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `L <id> p`: where a layer was when it was indexed.
pub fn path_key(id: u64) -> Vec<u8> {
    let mut k = index_prefix(LAYER, id);
    k.push(b'p');
    k
}

/// `S <id> l`: which layers a stack merges.
pub fn layers_key(id: u64) -> Vec<u8> {
    let mut k = index_prefix(STACK, id);
    k.push(b'l');
    k
}

/// Where a layer was indexed: its root directory's device and inode, and
/// its canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub dev: u64,
    pub ino: u64,
    pub path: Vec<u8>,
}

impl Place {
    pub fn path_buf(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.path).into()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.path.len());
        v.extend_from_slice(&self.dev.to_be_bytes());
        v.extend_from_slice(&self.ino.to_be_bytes());
        v.extend_from_slice(&self.path);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Place> {
        let num = |r: std::ops::Range<usize>| Some(u64::from_be_bytes(v.get(r)?.try_into().ok()?));
        Some(Place {
            dev: num(0..8)?,
            ino: num(8..16)?,
            path: v.get(16..).filter(|p| !p.is_empty())?.to_vec(),
        })
    }
}

pub fn encode_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_be_bytes()).collect()
}

pub fn decode_ids(v: &[u8]) -> Option<Vec<u64>> {
    if v.len() % 8 != 0 {
        return None;
    }
    Some(
        v.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// `<space> <id> e` : the start of every entry key of one index.
pub fn entries_prefix(space: u8, id: u64) -> Vec<u8> {
    let mut k = index_prefix(space, id);
    k.push(b'e');
    k
}

/// `<space> <id> e <dir> 0x00`: the start of one directory's entries.
pub fn dir_prefix(space: u8, id: u64, dir: &[u8]) -> Vec<u8> {
    let mut k = entries_prefix(space, id);
    k.extend_from_slice(dir);
    k.push(0);
    k
}

/// The smallest key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub const LAYER: u8 = b'L';
pub const STACK: u8 = b'S';

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            kind: Kind::Symlink,
            flags: OPAQUE | HAS_XATTRS,
            mode: 0o120777,
            uid: 1,
            gid: 2,
            nlink: 3,
            size: 4,
            blocks: 5,
            blksize: 4096,
            rdev: 7,
            ino: 8,
            atime: (-1, 2),
            mtime: (3, 4),
            ctime: (5, 6),
            target: b"../x".to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        let mut v = Vec::new();
        entry().encode(&mut v);
        assert_eq!(Entry::decode(&v), Some(entry()));
        assert_eq!(Entry::decode(&v[..v.len() - 1]), None, "truncated");
        let m = Merged {
            entry: entry(),
            layers: vec![0, 3, 7],
        };
        assert_eq!(Merged::decode(&m.encode()), Some(m));
        let meta = LayerMeta {
            version: VERSION,
            complete: true,
            entries: 99,
        };
        assert_eq!(LayerMeta::decode(&meta.encode()), Some(meta));
        assert_eq!(entry().to_stat(9).ino(), 8);
    }

    #[test]
    fn keys_sort_as_the_tree() {
        let root = dir_prefix(LAYER, 1, b"");
        let a = dir_prefix(LAYER, 1, b"a");
        let ab = dir_prefix(LAYER, 1, b"a/b");
        let a_x = dir_prefix(LAYER, 1, b"a-x");
        assert!(
            root < a && a < ab,
            "a parent's entries come before its children's"
        );
        assert!(
            !ab.starts_with(&a) && !a_x.starts_with(&a),
            "prefixes do not overlap"
        );
        assert!(prefix_end(&a) > a && prefix_end(&a) <= ab);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
