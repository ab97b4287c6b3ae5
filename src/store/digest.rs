//! sha256 digests in the OCI spelling (`sha256:<64 hex>`), and readers and
//! writers that compute them while data streams through.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use super::{Result, StoreError};

/// A validated sha256 digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused by name.
    pub fn parse(s: &str) -> Result<Digest> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(StoreError::Invalid(format!(
                "digest {s:?}: expected <algorithm>:<hex>"
            )));
        };
        if alg != "sha256" {
            return Err(StoreError::Invalid(format!(
                "digest {s:?}: algorithm {alg:?} is not supported (only sha256)"
            )));
        }
        Digest::from_hex(hex).ok_or_else(|| {
            StoreError::Invalid(format!("digest {s:?}: expected 64 lowercase hex digits"))
        })
    }

    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest {
            hex: hex.to_string(),
        })
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// Errors unless `self` is `expected`.
    pub fn check(&self, expected: &Digest, what: impl Into<String>) -> Result<()> {
        if self == expected {
            return Ok(());
        }
        Err(StoreError::Digest {
            what: what.into(),
            expected: expected.to_string(),
            actual: self.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A running sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    h: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, b: &[u8]) {
        self.h.update(b);
        self.len += b.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn finish(self) -> Digest {
        let out = self.h.finalize();
        let mut hex = String::with_capacity(64);
        for b in out.iter() {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 15)]));
        }
        Digest { hex }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Hashes what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it) and
    /// returns the digest, the byte count and the inner reader.
    pub fn finish(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len, self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Hashes what is written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }

    pub fn finish(self) -> (Digest, u64, W) {
        let len = self.hasher.len();
        (self.hasher.finish(), len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_hash() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        let mut r = HashingReader::new(&b"abc"[..]);
        let mut one = [0u8; 1];
        r.read_exact(&mut one).unwrap();
        let (d, n, _) = r.finish().unwrap();
        assert_eq!(n, 3);
        assert_eq!(d, Digest::of(b"abc"));
    }
}
