//! Packing an upper directory into an OCI layer tar: sorted, so the same
//! tree always gives the same bytes; whiteouts and opaque marks in the OCI
//! form; the union's own xattrs left out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::reader::BLOCK;
use super::{Compression, PackStats, TarError};
use crate::layer::whiteout::{self, OPAQUE_MARKER, WH_PREFIX};
use crate::layer::{cpath, sys, Dir, Kind, Stat};
use crate::union::override_stat::{self, Override};

/// Options of [`super::pack_layer_with`].
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// The lower layers under the upper, top first. A metadata-only copy
    /// in the upper (`overlay.metacopy`) takes its data from the first of
    /// them that has a regular file at the same path.
    pub lowers: Vec<PathBuf>,
}

const BENEATH: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
const COPY_BUF: usize = 1024 * 1024;
const OUT_BUF: usize = 1024 * 1024;

pub(super) fn pack<W: Write>(
    upper: &Path,
    out: W,
    compression: Compression,
    opts: &PackOptions,
) -> Result<PackStats, TarError> {
    let open = |p: &Path| {
        let shown = p.display().to_string();
        cpath(p)
            .and_then(|c| sys::openat2(at_fdcwd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0))
            .map(Dir::from_fd)
            .map_err(|e| io_err(&shown, "open", e))
    };
    let root = open(upper)?;
    let lowers = opts
        .lowers
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let out = BufWriter::with_capacity(OUT_BUF, out);
    let sink = match compression {
        Compression::None => Sink::Plain(out),
        Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::default(),
        )),
        Compression::Zstd => {
            Sink::Zstd(zstd::stream::write::Encoder::new(out, 3).map_err(|e| write_err("", e))?)
        }
    };
    let mut p = Packer {
        out: sink,
        links: HashMap::new(),
        lowers,
        stats: PackStats::default(),
        buf: vec![0u8; COPY_BUF],
    };
    p.walk(&root, &[])?;
    p.out
        .write_all(&[0u8; 2 * BLOCK])
        .map_err(|e| write_err("end of archive", e))?;
    p.out.finish().map_err(|e| write_err("end of archive", e))?;
    Ok(p.stats)
}

fn at_fdcwd() -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel understands, never closed.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

fn io_err(path: &str, op: &'static str, e: Errno) -> TarError {
    TarError::Io {
        path: path.to_string(),
        op,
        source: io::Error::from(e),
    }
}

fn write_err(path: &str, source: io::Error) -> TarError {
    TarError::Write {
        path: path.to_string(),
        source,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

enum Sink<W: Write> {
    Plain(BufWriter<W>),
    Gzip(flate2::write::GzEncoder<BufWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<W>>),
}

impl<W: Write> Sink<W> {
    fn finish(self) -> io::Result<()> {
        let mut out = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(e) => e.finish()?,
            Sink::Zstd(e) => e.finish()?,
        };
        out.flush()
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// What a directory entry becomes in the archive.
enum Item {
    /// A whiteout in any form: `.wh.<name>`.
    Whiteout { st: Stat },
    /// Itself.
    Entry { name: CString, st: Stat },
}

/// Header fields of one member.
struct Meta {
    kind: u8,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    link: Vec<u8>,
    dev: (u32, u32),
    xattrs: Vec<Xattr>,
}

/// An xattr's name and value.
type Xattr = (Vec<u8>, Vec<u8>);

struct Packer<W: Write> {
    out: Sink<W>,
    /// First archive name of each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    lowers: Vec<Dir>,
    stats: PackStats,
    buf: Vec<u8>,
}

impl<W: Write> Packer<W> {
    /// Writes the members below `dir`, whose archive path is `rel`.
    fn walk(&mut self, dir: &Dir, rel: &[u8]) -> Result<(), TarError> {
        let shown = lossy(rel);
        let marks = whiteout::dir_marks(dir, c"").map_err(|e| io_err(&shown, "read marks", e))?;
        if marks.opaque {
            let st = dir.stat_self().map_err(|e| io_err(&shown, "stat", e))?;
            let path = child_path(rel, OPAQUE_MARKER.to_bytes());
            self.marker(&path, &st)?;
        }
        let entries = dir
            .entries()
            .map_err(|e| io_err(&shown, "read directory", e))?;
        let mut items: BTreeMap<Vec<u8>, Item> = BTreeMap::new();
        let mut wh_files = Vec::new();
        let mut plain: HashSet<Vec<u8>> = HashSet::new();
        for e in entries {
            let nb = e.name.to_bytes();
            if nb.starts_with(WH_PREFIX) {
                // `.wh..wh..opq` is the opaque mark read above; other
                // `.wh..wh.` names are AUFS bookkeeping.
                if !nb.starts_with(b".wh..wh.") {
                    wh_files.push(e.name);
                }
                continue;
            }
            let path = lossy(&child_path(rel, nb));
            let Some(st) = dir
                .stat(&e.name)
                .map_err(|err| io_err(&path, "stat", err))?
            else {
                continue;
            };
            let is_wh = whiteout::is_whiteout(dir, &e.name, &st, marks.xwhiteouts)
                .map_err(|err| io_err(&path, "read whiteout", err))?;
            if is_wh {
                items.insert(
                    whiteout::whiteout_name(&e.name).into_bytes(),
                    Item::Whiteout { st },
                );
            } else {
                plain.insert(nb.to_vec());
                items.insert(nb.to_vec(), Item::Entry { name: e.name, st });
            }
        }
        for name in wh_files {
            let nb = name.to_bytes();
            // A `.wh.x` beside a real `x` has nothing left to hide.
            if nb.get(WH_PREFIX.len()..).is_some_and(|t| plain.contains(t)) {
                continue;
            }
            let path = lossy(&child_path(rel, nb));
            let Some(st) = dir.stat(&name).map_err(|err| io_err(&path, "stat", err))? else {
                continue;
            };
            items.entry(nb.to_vec()).or_insert(Item::Whiteout { st });
        }
        for (out_name, item) in items {
            let path = child_path(rel, &out_name);
            match item {
                Item::Whiteout { st } => self.marker(&path, &st)?,
                Item::Entry { name, st } => self.member(dir, &name, &path, &st)?,
            }
        }
        Ok(())
    }

    /// A whiteout or opaque marker: an empty file, mode 0 (as engines write).
    fn marker(&mut self, path: &[u8], st: &Stat) -> Result<(), TarError> {
        let meta = Meta {
            kind: b'0',
            perm: 0,
            uid: st.uid(),
            gid: st.gid(),
            mtime: st.mtime().tv_sec,
            size: 0,
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
        };
        self.header(path, &meta)
    }

    fn member(&mut self, dir: &Dir, name: &CStr, path: &[u8], st: &Stat) -> Result<(), TarError> {
        let shown = lossy(path);
        let Some(kind) = st.kind() else {
            return Ok(());
        };
        let (flag, mut size, mut link, mut devs) = match kind {
            Kind::Dir => (b'5', 0, Vec::new(), (0, 0)),
            Kind::File => (b'0', st.size(), Vec::new(), (0, 0)),
            Kind::Symlink => {
                let target = dir
                    .readlink(name)
                    .map_err(|e| io_err(&shown, "readlink", e))?;
                (b'2', 0, target, (0, 0))
            }
            Kind::Fifo => (b'6', 0, Vec::new(), (0, 0)),
            Kind::CharDev | Kind::BlockDev => {
                let rdev = st.rdev();
                let flag = if kind == Kind::CharDev { b'3' } else { b'4' };
                (flag, 0, Vec::new(), (libc::major(rdev), libc::minor(rdev)))
            }
            Kind::Socket => {
                tracing::debug!(path = %shown, "sockets have no tar form; skipped");
                return Ok(());
            }
        };
        let mut flag = flag;
        if kind != Kind::Dir && st.nlink() > 1 {
            match self.links.get(&(st.dev(), st.ino())) {
                Some(first) => {
                    flag = b'1';
                    link = first.clone();
                    size = 0;
                    devs = (0, 0);
                }
                None => {
                    self.links.insert((st.dev(), st.ino()), path.to_vec());
                }
            }
        }
        let (mut uid, mut gid, mut perm) = (st.uid(), st.gid(), st.perm());
        let xattrs = if kind == Kind::Symlink {
            // user.* cannot be set on a symlink; security.* can but the
            // union does not pass them through either.
            Vec::new()
        } else {
            if let Some(o) = whiteout::first_xattr(
                dir,
                name,
                &[override_stat::CONTAINERS, override_stat::FUSE_OVERLAYFS],
            )
            .map_err(|e| io_err(&shown, "getxattr", e))?
            .and_then(|v| Override::parse(&v))
            {
                (uid, gid, perm) = (o.uid, o.gid, o.perm);
            }
            self.xattrs(dir, name, &shown)?
        };
        let meta = Meta {
            kind: flag,
            perm,
            uid,
            gid,
            mtime: st.mtime().tv_sec,
            size,
            link,
            dev: devs,
            xattrs,
        };
        if kind == Kind::Dir {
            if whiteout::redirect_of(dir, name)
                .map_err(|e| io_err(&shown, "getxattr", e))?
                .is_some()
            {
                return Err(TarError::Unsupported {
                    path: shown,
                    detail: "a renamed directory (overlay.redirect): its lower contents are \
                             not in the upper directory; export it from the merged view"
                        .into(),
                });
            }
            self.header(path, &meta)?;
            let sub = dir
                .open_subdir(name)
                .map_err(|e| io_err(&shown, "open directory", e))?;
            return self.walk(&sub, path);
        }
        self.header(path, &meta)?;
        if flag == b'0' && size > 0 {
            let fd =
                if whiteout::is_metacopy(dir, name).map_err(|e| io_err(&shown, "getxattr", e))? {
                    self.lower_data(path, &shown)?
                } else {
                    dir.open(name, libc::O_RDONLY)
                        .map_err(|e| io_err(&shown, "open", e))?
                };
            self.data(fd, size, &shown)?;
        }
        Ok(())
    }

    /// The data of a metadata-only copy: the same path in the first lower
    /// layer that has a regular file there.
    fn lower_data(&self, path: &[u8], shown: &str) -> Result<std::os::fd::OwnedFd, TarError> {
        let rel = CString::new(path).map_err(|_| TarError::Malformed {
            path: shown.to_string(),
            detail: "NUL in a name".into(),
        })?;
        for lower in &self.lowers {
            match sys::openat2(
                lower.fd(),
                &rel,
                libc::O_RDONLY | libc::O_NOFOLLOW,
                0,
                BENEATH,
            ) {
                Ok(fd) => {
                    let st = sys::fstat(fd.as_fd()).map_err(|e| io_err(shown, "stat", e))?;
                    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                        return Ok(fd);
                    }
                }
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => {}
                Err(e) => return Err(io_err(shown, "open in a lower layer", e)),
            }
        }
        Err(TarError::Unsupported {
            path: shown.to_string(),
            detail: "a metadata-only copy whose data is in a lower layer: pass the lower \
                     layers (pack_layer_with)"
                .into(),
        })
    }

    /// Copies exactly `size` bytes of `fd`; a file that shrank meanwhile is
    /// an error (the header already promised `size`).
    fn data(&mut self, fd: std::os::fd::OwnedFd, size: u64, shown: &str) -> Result<(), TarError> {
        let mut f = std::fs::File::from(fd).take(size);
        let mut done = 0u64;
        loop {
            let n = match f.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TarError::Io {
                        path: shown.to_string(),
                        op: "read",
                        source,
                    })
                }
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(|e| write_err(shown, e))?;
            done += n as u64;
        }
        if done != size {
            return Err(TarError::Io {
                path: shown.to_string(),
                op: "read",
                source: io::Error::other(format!(
                    "file shrank while being packed ({done} of {size} bytes)"
                )),
            });
        }
        self.stats.bytes += size;
        self.pad(size, shown)
    }

    fn pad(&mut self, size: u64, shown: &str) -> Result<(), TarError> {
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(|e| write_err(shown, e))
    }

    /// Client xattrs of an entry, sorted by name: no union-internal ones
    /// and no owner records.
    fn xattrs(&self, dir: &Dir, name: &CStr, shown: &str) -> Result<Vec<Xattr>, TarError> {
        let list = match dir.list_xattr(name) {
            Ok(l) => l,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(shown, "listxattr", e)),
        };
        let mut out = Vec::new();
        for attr in list.split(|&b| b == 0).filter(|a| !a.is_empty()) {
            if whiteout::is_internal_xattr(attr)
                || attr == override_stat::CONTAINERS.to_bytes()
                || attr.starts_with(b"trusted.overlay")
                || attr.starts_with(b"user.overlay")
            {
                continue;
            }
            let c = CString::new(attr).map_err(|_| io_err(shown, "listxattr", Errno::EINVAL))?;
            if let Some(v) = dir
                .get_xattr(name, &c)
                .map_err(|e| io_err(shown, "getxattr", e))?
            {
                out.push((attr.to_vec(), v));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes a member's header, preceded by a PAX header when a name is
    /// too long for ustar or there are xattrs.
    fn header(&mut self, path: &[u8], m: &Meta) -> Result<(), TarError> {
        let shown = lossy(path);
        let mut name = path.to_vec();
        if m.kind == b'5' {
            name.push(b'/');
        }
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(&[u8], &[u8])> = Vec::new();
        let split = ustar_split(&name);
        {
            let u = h
                .as_ustar_mut()
                .ok_or_else(|| write_err(&shown, io::Error::other("not a ustar header")))?;
            match split {
                Some((prefix, base)) => {
                    u.prefix[..prefix.len()].copy_from_slice(prefix);
                    u.name[..base.len()].copy_from_slice(base);
                }
                None => {
                    let cut = name.len().min(100);
                    u.name[..cut].copy_from_slice(&name[..cut]);
                    pax.push((b"path", &name));
                }
            }
            let lcut = m.link.len().min(100);
            u.linkname[..lcut].copy_from_slice(&m.link[..lcut]);
            if m.link.len() > 100 {
                pax.push((b"linkpath", &m.link));
            }
        }
        let mut xkeys = Vec::new();
        for (k, _) in &m.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            xkeys.push(key);
        }
        for (key, (_, v)) in xkeys.iter().zip(&m.xattrs) {
            pax.push((key, v));
        }
        if !pax.is_empty() {
            let body = pax_body(&pax);
            let mut x = tar::Header::new_ustar();
            let base = name
                .rsplit(|&b| b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"x");
            let mut xname = b"PaxHeaders.0/".to_vec();
            xname.extend_from_slice(&base[..base.len().min(100 - 13)]);
            if let Some(u) = x.as_ustar_mut() {
                u.name[..xname.len()].copy_from_slice(&xname);
            }
            x.set_entry_type(tar::EntryType::XHeader);
            x.set_mode(0o644);
            x.set_size(body.len() as u64);
            x.set_mtime(0);
            x.set_cksum();
            self.out
                .write_all(x.as_bytes())
                .and_then(|()| self.out.write_all(&body))
                .map_err(|e| write_err(&shown, e))?;
            self.pad(body.len() as u64, &shown)?;
        }
        h.set_entry_type(tar::EntryType::new(m.kind));
        h.set_mode(m.perm);
        h.set_uid(u64::from(m.uid));
        h.set_gid(u64::from(m.gid));
        h.set_size(m.size);
        h.set_mtime(u64::try_from(m.mtime).unwrap_or(0));
        if matches!(m.kind, b'3' | b'4') {
            h.set_device_major(m.dev.0)
                .and_then(|()| h.set_device_minor(m.dev.1))
                .map_err(|e| write_err(&shown, e))?;
        }
        h.set_cksum();
        self.out
            .write_all(h.as_bytes())
            .map_err(|e| write_err(&shown, e))?;
        self.stats.entries += 1;
        Ok(())
    }
}

fn child_path(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Splits a name into ustar's prefix (≤155) and name (≤100) fields, at a
/// slash; `None` when it cannot be.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The trailing slash of a directory must stay in the name part.
    let search = &name[..name.len() - 1];
    search
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .next()
}

/// PAX records: `<len> <key>=<value>\n`, where `<len>` counts itself.
pub(super) fn pax_body(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k);
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths_count_themselves() {
        let body = pax_body(&[(b"path", &[b'a'; 5]), (b"k", &[b'v'; 94])]);
        let mut rest = &body[..];
        while !rest.is_empty() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            assert_eq!(rest[len - 1], b'\n');
            rest = &rest[len..];
        }
    }

    #[test]
    fn ustar_names() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [&[b'p'; 120][..], b"/", &[b'n'; 50]].concat();
        let (p, n) = ustar_split(&long).unwrap();
        assert_eq!((p.len(), n.len()), (120, 50));
        assert_eq!(ustar_split(&[b'x'; 150]), None);
    }
}
