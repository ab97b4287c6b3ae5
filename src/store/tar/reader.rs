//! A streaming reader of tar archives (ustar, GNU long names, PAX), with
//! every size bounded and every number checked.
//!
//! Why not `tar::Archive`: it reads PAX and GNU long-name bodies into memory
//! without a bound (a few KiB of gzip can inflate into a "header" of many
//! GiB), and in raw mode it ignores the PAX `size` record, which Go's writer
//! uses for files over 8 GiB. We still use `tar::Header` to decode the
//! fields of a 512-byte header block.

use std::io::{self, Read};

/// Header-block and padding size.
pub(super) const BLOCK: usize = 512;
/// Longest GNU long name / long link body we accept (PATH_MAX is 4096).
const MAX_LONG_NAME: u64 = 64 * 1024;
/// Largest PAX extended header body: room for many big xattrs.
const MAX_PAX: u64 = 16 * 1024 * 1024;

/// A point in time from a tar header or PAX record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    HardLink,
    Symlink,
    CharDev,
    BlockDev,
    Dir,
    Fifo,
}

/// One archive member, with its PAX and GNU extensions applied.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Name as in the archive (not yet normalised).
    pub path: Vec<u8>,
    /// Hard link or symlink target.
    pub link: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`07777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of data that follow (0 for everything but regular files).
    pub size: u64,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// From `SCHILY.xattr.<name>` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The name for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Why the archive could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The input ended early.
    Truncated(String),
    /// Bytes that are not a valid archive.
    Malformed(String),
    /// Valid, but something we do not handle.
    Unsupported(String),
    /// The input (or its decompressor) failed.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated(e.to_string())
        } else {
            ReadError::Io(e)
        }
    }
}

type Result<T> = std::result::Result<T, ReadError>;

/// Reads members one at a time; the data of the current member is read with
/// [`TarReader::read_data`] (whatever is left unread is skipped by the next
/// [`TarReader::next_entry`]).
pub(super) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current member not yet read.
    remaining: u64,
    /// Padding after the current member's data.
    padding: u64,
    /// The end-of-archive block was seen.
    ended: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            ended: false,
        }
    }

    /// The next member, or `None` after the end-of-archive block. Running out
    /// of input before that block is [`ReadError::Truncated`].
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Pax> = None;
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                return Err(ReadError::Truncated(
                    "input ends without the end-of-archive block".into(),
                ));
            }
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(ReadError::Malformed(
                        "extension header not followed by a member".into(),
                    ));
                }
                self.ended = true;
                return Ok(None);
            }
            let mut header = tar::Header::new_old();
            header.as_mut_bytes().copy_from_slice(&block);
            check_checksum(&block, &header)?;
            let size = header
                .entry_size()
                .map_err(|e| ReadError::Malformed(format!("size field: {e}")))?;
            let flag = block[156];
            match flag {
                b'L' => {
                    let body = self.read_body(size, MAX_LONG_NAME, "GNU long name")?;
                    set_once(&mut long_name, trim_nul(body), "GNU long name")?;
                    continue;
                }
                b'K' => {
                    let body = self.read_body(size, MAX_LONG_NAME, "GNU long link")?;
                    set_once(&mut long_link, trim_nul(body), "GNU long link")?;
                    continue;
                }
                b'x' => {
                    let body = self.read_body(size, MAX_PAX, "PAX header")?;
                    set_once(&mut pax, Pax::parse(&body)?, "PAX header")?;
                    continue;
                }
                b'g' => {
                    // Global records (usually just a comment) describe the
                    // archive, not a member; engines ignore them too.
                    self.read_body(size, MAX_PAX, "PAX global header")?;
                    continue;
                }
                _ => {}
            }
            let pax = pax.unwrap_or_default();
            let mut path = long_name
                .or(pax.path)
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let link = long_link
                .or(pax.linkpath)
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default();
            let kind = match flag {
                b'0' | b'\0' | b'7' => {
                    // Pre-POSIX archives mark directories by a trailing slash.
                    if flag == b'\0' && path.last() == Some(&b'/') {
                        EntryKind::Dir
                    } else {
                        EntryKind::File
                    }
                }
                b'1' => EntryKind::HardLink,
                b'2' => EntryKind::Symlink,
                b'3' => EntryKind::CharDev,
                b'4' => EntryKind::BlockDev,
                b'5' => EntryKind::Dir,
                b'6' => EntryKind::Fifo,
                b'S' => {
                    return Err(ReadError::Unsupported(format!(
                        "{}: GNU sparse members are not supported",
                        lossy(&path)
                    )))
                }
                other => {
                    return Err(ReadError::Unsupported(format!(
                        "{}: entry type {:?} is not supported",
                        lossy(&path),
                        char::from(other)
                    )))
                }
            };
            if pax.sparse {
                return Err(ReadError::Unsupported(format!(
                    "{}: GNU PAX sparse members are not supported",
                    lossy(&path)
                )));
            }
            if path.contains(&0) || link.contains(&0) {
                return Err(ReadError::Malformed(format!(
                    "{}: NUL byte in a name",
                    lossy(&path)
                )));
            }
            let field = |what: &str, r: io::Result<u64>| {
                r.map_err(|e| ReadError::Malformed(format!("{}: {what}: {e}", lossy(&path))))
            };
            let size = pax.size.unwrap_or(size);
            let perm = field("mode", header.mode().map(u64::from))? as u32 & 0o7777;
            let uid = match pax.uid {
                Some(u) => u,
                None => field("uid", header.uid())?,
            };
            let gid = match pax.gid {
                Some(g) => g,
                None => field("gid", header.gid())?,
            };
            let id = |what: &str, v: u64| {
                u32::try_from(v).map_err(|_| {
                    ReadError::Malformed(format!("{}: {what} {v} out of range", lossy(&path)))
                })
            };
            let (uid, gid) = (id("uid", uid)?, id("gid", gid)?);
            let mtime = match pax.mtime {
                Some(t) => t,
                None => {
                    let s = field("mtime", header.mtime())?;
                    Time {
                        sec: i64::try_from(s).unwrap_or(i64::MAX),
                        nsec: 0,
                    }
                }
            };
            let (dev_major, dev_minor) = if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev)
            {
                let major = header.device_major().map_err(|e| {
                    ReadError::Malformed(format!("{}: device major: {e}", lossy(&path)))
                })?;
                let minor = header.device_minor().map_err(|e| {
                    ReadError::Malformed(format!("{}: device minor: {e}", lossy(&path)))
                })?;
                (major.unwrap_or(0), minor.unwrap_or(0))
            } else {
                (0, 0)
            };
            // As Go's reader (which wrote and reads most layers) does: only
            // regular files carry data; other types' size fields are ignored.
            let data = if kind == EntryKind::File { size } else { 0 };
            self.remaining = data;
            self.padding = pad_of(data);
            if kind == EntryKind::Dir {
                while path.len() > 1 && path.last() == Some(&b'/') {
                    path.pop();
                }
            }
            return Ok(Some(Entry {
                path,
                link,
                kind,
                perm,
                uid,
                gid,
                size: data,
                mtime,
                atime: pax.atime,
                dev_major,
                dev_minor,
                xattrs: pax.xattrs,
            }));
        }
    }

    /// Reads data of the current member; 0 at its end. Input ending before
    /// the member's end is `UnexpectedEof`.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "input ends {} bytes before the end of member data",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// After the end-of-archive block: reads the input to its end, so that a
    /// digest computed over it covers every byte and a decompressor checks
    /// its trailer. What follows the end block is ignored (engines pad).
    pub fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.inner.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn skip_rest(&mut self) -> Result<()> {
        let n = self
            .remaining
            .checked_add(self.padding)
            .ok_or_else(|| ReadError::Malformed("size overflow".into()))?;
        self.remaining = 0;
        self.padding = 0;
        skip(&mut self.inner, n)
    }

    /// Reads a member's body into memory, refusing more than `max` bytes.
    fn read_body(&mut self, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
        if size > max {
            return Err(ReadError::Malformed(format!(
                "{what} of {size} bytes (at most {max} accepted)"
            )));
        }
        let mut body = vec![0u8; size as usize];
        read_exact(&mut self.inner, &mut body)?;
        skip(&mut self.inner, pad_of(size))?;
        Ok(body)
    }

    /// Fills `block`; `false` if the input ended before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(ReadError::Truncated(format!(
                        "input ends inside a header block ({got} of {BLOCK} bytes)"
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|&b| b == 0) {
        v.truncate(end);
    }
    v
}

fn set_once<T>(slot: &mut Option<T>, v: T, what: &str) -> Result<()> {
    if slot.is_some() {
        return Err(ReadError::Malformed(format!("two {what}s for one member")));
    }
    *slot = Some(v);
    Ok(())
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ReadError::Truncated(format!(
                    "input ends {} bytes early",
                    buf.len() - got
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn skip<R: Read>(r: &mut R, mut n: u64) -> Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let want = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(ReadError::Truncated(format!(
                    "input ends {n} bytes before the next header"
                )))
            }
            Ok(got) => n -= got as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The checksum is the sum of the header bytes with the checksum field
/// taken as spaces; historic writers summed signed bytes, so accept either.
fn check_checksum(block: &[u8; BLOCK], header: &tar::Header) -> Result<()> {
    let stored = header
        .cksum()
        .map_err(|e| ReadError::Malformed(format!("header checksum field: {e}")))?;
    let (mut unsigned, mut signed) = (0u32, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err(ReadError::Malformed(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned})"
        )))
    }
}

/// The records of a PAX extended header that we use.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

impl Pax {
    /// Records are `<len> <key>=<value>\n`, `<len>` counting the whole
    /// record in decimal.
    fn parse(mut body: &[u8]) -> Result<Pax> {
        let bad = |why: &str| ReadError::Malformed(format!("PAX header: {why}"));
        let mut pax = Pax::default();
        // Writers may pad the body with NULs.
        while !body.is_empty() && body[0] != 0 {
            let space = body
                .iter()
                .take(21)
                .position(|&b| b == b' ')
                .ok_or_else(|| bad("record without a length"))?;
            let len: usize = std::str::from_utf8(&body[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("record length is not a number"))?;
            if len <= space + 1 || len > body.len() {
                return Err(bad("record length out of range"));
            }
            let record = &body[space + 1..len];
            body = &body[len..];
            let record = record
                .strip_suffix(b"\n")
                .ok_or_else(|| bad("record does not end in a newline"))?;
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad("record without '='"))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            pax.apply(key, value)?;
        }
        Ok(pax)
    }

    fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let number = |v: &[u8]| -> Result<u64> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ReadError::Malformed(format!(
                        "PAX header: {} is not a number: {:?}",
                        lossy(key),
                        lossy(v)
                    ))
                })
        };
        // An empty value removes the record (POSIX): keep the header's.
        if value.is_empty() && !key.starts_with(b"SCHILY.xattr.") {
            return Ok(());
        }
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.linkpath = Some(value.to_vec()),
            b"size" => self.size = Some(number(value)?),
            b"uid" => self.uid = Some(number(value)?),
            b"gid" => self.gid = Some(number(value)?),
            b"mtime" => self.mtime = Some(parse_time(key, value)?),
            b"atime" => self.atime = Some(parse_time(key, value)?),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() || name.contains(&0) {
                        return Err(ReadError::Malformed("PAX header: bad xattr name".into()));
                    }
                    self.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    self.sparse = true;
                }
            }
        }
        Ok(())
    }
}

/// `[-]seconds[.fraction]`.
fn parse_time(key: &[u8], v: &[u8]) -> Result<Time> {
    let bad = || {
        ReadError::Malformed(format!(
            "PAX header: {} is not a time: {:?}",
            lossy(key),
            lossy(v)
        ))
    };
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let sec: i64 = int.parse().map_err(|_| bad())?;
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(if !neg {
        Time { sec, nsec }
    } else if nsec == 0 {
        Time { sec: -sec, nsec: 0 }
    } else {
        Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        let body =
            b"30 mtime=1700000000.123456789\n20 path=a/very/long\n27 SCHILY.xattr.user.k=v\x00w\n";
        let p = Pax::parse(body).unwrap();
        assert_eq!(
            p.mtime,
            Some(Time {
                sec: 1_700_000_000,
                nsec: 123_456_789
            })
        );
        assert_eq!(p.path.as_deref(), Some(&b"a/very/long"[..]));
        assert_eq!(p.xattrs, vec![(b"user.k".to_vec(), b"v\0w".to_vec())]);
        for bad in [&b"99 path=x\n"[..], b"x path=y\n", b"9 pathx\n", b"0 \n"] {
            assert!(Pax::parse(bad).is_err(), "{:?}", lossy(bad));
        }
    }

    #[test]
    fn times() {
        let t = |s: &str| parse_time(b"mtime", s.as_bytes()).ok();
        assert_eq!(t("5"), Some(Time { sec: 5, nsec: 0 }));
        assert_eq!(
            t("-1.25"),
            Some(Time {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(t("1.0000000001"), Some(Time { sec: 1, nsec: 0 }));
        assert_eq!(t(""), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t("99999999999999999999999"), None);
    }
}
