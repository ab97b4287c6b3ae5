//! Layer compression: detection by magic bytes, decoders that stop cleanly
//! at what follows the last compressed member, and byte counting for
//! progress reports.

use std::io::{self, BufRead, BufReader, Read};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Input buffer: large, so the decompressor makes few read calls.
const IN_BUF: usize = 256 * 1024;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a blob, from its first bytes.
pub(super) fn detect_bytes(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if is_zstd_frame(head) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn is_zstd_frame(b: &[u8]) -> bool {
    // A data frame, or a skippable frame (magic 0x184D2A5?, little-endian).
    b.starts_with(&ZSTD_MAGIC)
        || (b.len() >= 4 && b[0] & 0xf0 == 0x50 && b[1..4] == [0x2a, 0x4d, 0x18])
}

/// Counts the compressed bytes read and reports them now and then.
pub(super) struct Counting<'p, R> {
    inner: R,
    total: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(u64),
}

/// Report at most once per this many bytes.
const REPORT_EVERY: u64 = 4 * 1024 * 1024;

impl<'p, R: Read> Counting<'p, R> {
    pub fn new(inner: R, progress: &'p mut dyn FnMut(u64)) -> Self {
        Counting {
            inner,
            total: 0,
            reported: 0,
            progress,
        }
    }

    /// Bytes read so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reports the final count.
    pub fn finish(&mut self) {
        if self.reported != self.total || self.total == 0 {
            (self.progress)(self.total);
            self.reported = self.total;
        }
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total = self.total.saturating_add(n as u64);
        if self.total - self.reported >= REPORT_EVERY {
            (self.progress)(self.total);
            self.reported = self.total;
        }
        Ok(n)
    }
}

/// The decompressed stream of a layer blob.
pub(super) enum Decoder<R: BufRead> {
    Plain(R),
    /// gzip, member after member (pigz and eStargz write several).
    Gzip(Option<Box<flate2::bufread::GzDecoder<R>>>),
    /// zstd, frame after frame.
    Zstd(Option<zstd::stream::read::Decoder<'static, R>>),
}

/// What [`Decoder::detect`] reads from: the magic bytes it peeked, then the
/// rest of the input.
pub(super) type Peeked<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

impl<R: Read> Decoder<Peeked<R>> {
    /// Detects the compression from the first bytes of `input`.
    pub fn detect(mut input: R) -> io::Result<(Compression, Self)> {
        let mut head = vec![0u8; 4];
        let mut got = 0;
        while got < head.len() {
            match input.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(got);
        let compression = detect_bytes(&head);
        let r = BufReader::with_capacity(IN_BUF, io::Cursor::new(head).chain(input));
        let d = match compression {
            Compression::None => Decoder::Plain(r),
            Compression::Gzip => Decoder::Gzip(Some(Box::new(flate2::bufread::GzDecoder::new(r)))),
            Compression::Zstd => Decoder::Zstd(Some(
                zstd::stream::read::Decoder::with_buffer(r)?.single_frame(),
            )),
        };
        Ok((compression, d))
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(slot) => loop {
                let Some(d) = slot.as_mut() else {
                    return Ok(0);
                };
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // End of a member: another one, or the end of the layer
                // (anything else after it is padding we ignore).
                let Some(d) = slot.take() else {
                    return Ok(0);
                };
                let mut r = d.into_inner();
                if r.fill_buf()?.starts_with(&GZIP_MAGIC) {
                    *slot = Some(Box::new(flate2::bufread::GzDecoder::new(r)));
                } else {
                    drain(&mut r)?;
                    return Ok(0);
                }
            },
            Decoder::Zstd(slot) => loop {
                let Some(d) = slot.as_mut() else {
                    return Ok(0);
                };
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                let Some(d) = slot.take() else {
                    return Ok(0);
                };
                let mut r = d.finish();
                if is_zstd_frame(r.fill_buf()?) {
                    *slot = Some(zstd::stream::read::Decoder::with_buffer(r)?.single_frame());
                } else {
                    drain(&mut r)?;
                    return Ok(0);
                }
            },
        }
    }
}

/// Reads `r` to its end, discarding (trailing padding of a blob).
fn drain<R: BufRead>(r: &mut R) -> io::Result<()> {
    loop {
        let n = r.fill_buf()?.len();
        if n == 0 {
            return Ok(());
        }
        r.consume(n);
    }
}
