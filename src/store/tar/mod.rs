//! OCI layer tars: unpack one into a layer directory (whiteouts converted to
//! the on-disk form layerfs and the kernel read), and pack an upper
//! directory back into one.
//!
//! Unpacking is the security-critical half: it runs as root on archives
//! from anywhere. Its rules, enforced in [`unpack`]:
//! - Names are relative to the layer root. A leading `/` (or `./`) is
//!   stripped, as GNU tar, Go's archive/tar users (containers/storage,
//!   moby) and the OCI spec's "relative to the root" reading all do: the
//!   name is still resolved beneath the layer, so accepting it costs no
//!   safety, and rejecting it would refuse images every engine loads. A
//!   `..` component anywhere is refused outright (no legitimate layer needs
//!   one, and refusing beats reasoning about where it lands).
//! - Every name is reached from an fd on the layer root, one component at
//!   a time, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a
//!   symlink written by an earlier entry is never followed, whatever its
//!   target; going through one is an error naming both.
//! - Hard links must name an entry already unpacked in this layer.
//! - Device nodes only when the caller allows them.
//! - A later entry replaces an earlier one at the same path, except a
//!   directory over a directory, which keeps the contents and takes the new
//!   metadata (the OCI layer spec's rule).
//! - A truncated archive is an error, never a partial success; bytes after
//!   the end-of-archive block are ignored.
//!
//! Packing walks an upper directory in sorted order and writes what engines
//! expect: `.wh.<name>` for every form of whiteout layerfs reads,
//! `.wh..wh..opq` for opaque directories, no internal xattrs, owners and
//! modes from the override_stat xattr where present, hard links as links.

mod compress;
mod pack;
mod reader;
mod unpack;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fixture;

use std::io::{self, Read, Write};
use std::path::Path;

pub use compress::Compression;
pub use pack::PackOptions;

/// The on-disk form whiteouts and opaque directories are unpacked into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// Kernel overlayfs form, needs root: a char device 0/0 for a whiteout,
    /// `trusted.overlay.opaque=y` on an opaque directory.
    CharDevice,
    /// Rootless form: an empty file carrying `user.overlay.whiteout` (its
    /// directory and the layer root marked `user.overlay.xwhiteouts`, as the
    /// kernel requires to look for them), and `user.overlay.opaque=y` on an
    /// opaque directory.
    UserXattr,
}

/// How to unpack a layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutForm,
    /// Create char and block devices (refused with
    /// [`TarError::DeviceNotAllowed`] otherwise).
    pub allow_devices: bool,
    /// chown every entry to the numeric uid/gid of its header.
    pub preserve_owners: bool,
    /// Rootless: record `uid:gid:mode` of each entry in
    /// `user.containers.override_stat` (the file itself keeps the unpacking
    /// user as owner and gets owner read/write(/search) bits).
    pub override_stat: bool,
}

impl Default for UnpackOptions {
    /// What root wants: kernel-form whiteouts, devices, owners.
    fn default() -> Self {
        UnpackOptions {
            whiteouts: WhiteoutForm::CharDevice,
            allow_devices: true,
            preserve_owners: true,
            override_stat: false,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UnpackStats {
    /// Archive members processed (whiteout markers included).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub hardlinks: u64,
    /// Compressed size of the blob as read (all of it, trailing padding too).
    pub compressed_bytes: u64,
}

/// What a pack wrote.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PackStats {
    /// Archive members written (whiteout markers included).
    pub entries: u64,
    /// Bytes of file data written (before compression).
    pub bytes: u64,
}

/// Why a layer could not be unpacked or packed. Each names the entry (a
/// path relative to the layer root, as in the archive) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{path}: {reason}: refused, it would escape the layer")]
    PathEscape { path: String, reason: &'static str },
    #[error("{path}: goes through `{symlink}`, a symlink written by an earlier entry: refused")]
    SymlinkEscape { path: String, symlink: String },
    #[error("{path}: hard link to `{target}`, outside the layer: refused")]
    HardlinkOutside { path: String, target: String },
    #[error("{path}: hard link to `{target}`, which is not in the layer (yet)")]
    HardlinkMissing { path: String, target: String },
    #[error("{path}: device node ({kind} {major}:{minor}) not allowed in this store")]
    DeviceNotAllowed {
        path: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("{path}: `{parent}` is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("archive truncated{}: {detail}", at(path))]
    Truncated { path: String, detail: String },
    #[error("malformed archive{}: {detail}", at(path))]
    Malformed { path: String, detail: String },
    #[error("{path}: {detail}")]
    Unsupported { path: String, detail: String },
    /// A syscall on the layer failed; `source` carries its errno.
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Reading the input (or decompressing it) failed.
    #[error("reading the layer{}: {source}", at(path))]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Writing the output archive failed.
    #[error("writing the layer archive{}: {source}", at(path))]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    }
}

impl TarError {
    /// The errno behind the error, if a syscall failed (ENOSPC, EDQUOT...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TarError::Io { source, .. }
            | TarError::Read { source, .. }
            | TarError::Write { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Unpack one layer (plain, gzip or zstd — detected by magic bytes) into
/// `dest`, an existing (normally empty) directory. `input` is read to its
/// end, so a digest computed while reading covers the whole blob.
/// `progress(bytes_read_compressed)` is called every few MiB and at the end.
///
/// On error, `dest` holds whatever was written so far: unpack into a
/// staging directory and discard it on failure.
pub fn unpack_layer<R: Read>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<UnpackStats, TarError> {
    unpack::unpack(input, dest, opts, progress)
}

/// Write the OCI layer tar of an upper directory (see the module docs).
/// Metadata-only copies (`overlay.metacopy`) need their lower layers for
/// data: use [`pack_layer_with`] for an upper that may have them.
pub fn pack_layer<W: Write>(
    upper: &Path,
    out: W,
    compression: Compression,
) -> Result<PackStats, TarError> {
    pack::pack(upper, out, compression, &PackOptions::default())
}

/// [`pack_layer`] with options: the lower layers (top first) that hold the
/// data of metadata-only copies.
pub fn pack_layer_with<W: Write>(
    upper: &Path,
    out: W,
    compression: Compression,
    opts: &PackOptions,
) -> Result<PackStats, TarError> {
    pack::pack(upper, out, compression, opts)
}

/// The compression of a blob, from its first bytes.
pub fn detect_compression(head: &[u8]) -> Compression {
    compress::detect_bytes(head)
}
