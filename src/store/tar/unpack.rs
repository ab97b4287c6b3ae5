//! Unpacking a layer tar into a directory, every write relative to an fd
//! that was reached beneath the layer root without following a symlink.
//! See the parent module for the rules.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use super::compress::{Counting, Decoder};
use super::reader::{Entry, EntryKind, ReadError, TarReader, Time};
use super::{TarError, UnpackOptions, UnpackStats, WhiteoutForm};
use crate::layer::whiteout::{self, OPAQUE_MARKER, WH_PREFIX};
use crate::layer::{cpath, sys, Dir};

/// `RESOLVE_*` flags of every lookup below the layer root.
const BENEATH: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
/// Copy buffer: large, so data moves in few syscalls.
const COPY_BUF: usize = 1024 * 1024;
/// Where rootless owners and modes are kept.
const OVERRIDE_STAT: &CStr = c"user.containers.override_stat";
/// AUFS metadata names (`.wh..wh.plnk` …): not entries, and not ours to write.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

pub(super) fn unpack<R: Read>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<UnpackStats, TarError> {
    let dest_display = dest.display().to_string();
    let root_fd = cpath(dest)
        .and_then(|c| sys::openat2(at_fdcwd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0))
        .map_err(|e| io_err(&dest_display, "open the destination", e))?;
    let mut counting = Counting::new(input, progress);
    let mut stats = {
        let (_, decoder) = Decoder::detect(&mut counting).map_err(|source| TarError::Read {
            path: String::new(),
            source,
        })?;
        let mut tar = TarReader::new(decoder);
        let mut u = Unpacker {
            root: Dir::from_fd(root_fd),
            opts,
            stats: UnpackStats::default(),
            stack: Vec::new(),
            dirs: Vec::new(),
            xwhiteout_dirs: HashSet::new(),
            buf: vec![0u8; COPY_BUF],
        };
        let mut last = String::new();
        loop {
            let entry = match tar.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(read_error(e, &last)),
            };
            last = entry.display();
            u.entry(&mut tar, entry)?;
        }
        tar.drain().map_err(|e| read_error(e, "end of archive"))?;
        u.finish_dirs()?;
        u.stats
    };
    counting.finish();
    stats.compressed_bytes = counting.total();
    Ok(stats)
}

fn read_error(e: ReadError, after: &str) -> TarError {
    let context = |d: String| {
        if after.is_empty() {
            d
        } else {
            format!("{d} (after `{after}`)")
        }
    };
    match e {
        ReadError::Truncated(d) => TarError::Truncated {
            path: String::new(),
            detail: context(d),
        },
        ReadError::Malformed(d) => TarError::Malformed {
            path: String::new(),
            detail: context(d),
        },
        ReadError::Unsupported(d) => TarError::Unsupported {
            path: String::new(),
            detail: d,
        },
        ReadError::Io(source) => TarError::Read {
            path: after.to_string(),
            source,
        },
    }
}

fn io_err(path: &str, op: &'static str, e: Errno) -> TarError {
    TarError::Io {
        path: path.to_string(),
        op,
        source: io::Error::from(e),
    }
}

fn at_fdcwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel understands, never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

fn timespec(t: Time) -> libc::timespec {
    libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: libc::c_long::from(t.nsec as i32),
    }
}

/// Splits an archive name into its components: empty and `.` components
/// dropped (so a leading `/` or `./` is), `..` refused.
fn components<'a>(raw: &'a [u8], path: &str) -> Result<Vec<&'a [u8]>, TarError> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(TarError::PathEscape {
                    path: path.to_string(),
                    reason: "a `..` component",
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn cname(c: &[u8], path: &str) -> Result<CString, TarError> {
    CString::new(c).map_err(|_| TarError::Malformed {
        path: path.to_string(),
        detail: "NUL byte in a name".into(),
    })
}

fn join(comps: &[CString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.to_bytes());
    }
    v
}

fn lossy(c: &[CString]) -> String {
    String::from_utf8_lossy(&join(c)).into_owned()
}

/// Mode and times of a directory, applied once everything inside it is
/// written (a child's creation would move the mtime; a read-only mode
/// would stop a non-root unpacker writing the children).
struct DirMeta {
    comps: Vec<CString>,
    perm: u32,
    atime: Time,
    mtime: Time,
}

struct Unpacker<'o> {
    root: Dir,
    opts: &'o UnpackOptions,
    stats: UnpackStats,
    /// Open directories along the last parent path: `stack[i]` is the
    /// directory `names[0..=i]`. Tar members come grouped by directory, so
    /// most lookups are answered here. Emptied on any removal.
    stack: Vec<(CString, Dir)>,
    dirs: Vec<DirMeta>,
    /// Directories already marked as holding xattr whiteouts.
    xwhiteout_dirs: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, tar: &mut TarReader<R>, e: Entry) -> Result<(), TarError> {
        self.stats.entries += 1;
        let path = e.display();
        let comps = components(&e.path, &path)?
            .into_iter()
            .map(|c| cname(c, &path))
            .collect::<Result<Vec<_>, _>>()?;
        let Some((name, parents)) = comps.split_last() else {
            return self.root_entry(&e, &path);
        };
        let nb = name.to_bytes();
        if nb == OPAQUE_MARKER.to_bytes() {
            let form = self.opts.whiteouts;
            let dir = self.parent(parents, &path)?;
            return set_opaque(dir, form, &path).map(|()| {
                self.stats.opaque_dirs += 1;
            });
        }
        if nb.starts_with(AUFS_META_PREFIX) {
            tracing::debug!(path, "skipping AUFS metadata entry");
            return Ok(());
        }
        if let Some(target) = nb.strip_prefix(WH_PREFIX) {
            return self.whiteout(parents, target, &e, &path);
        }
        let parent_dir = self.parent(parents, &path)?.try_clone();
        let parent_dir = parent_dir.map_err(|err| io_err(&path, "dup", err))?;
        self.member(tar, &parent_dir, parents, name, &e, &path)
    }

    /// The entry for the layer root itself (`./`): only its metadata.
    fn root_entry(&mut self, e: &Entry, path: &str) -> Result<(), TarError> {
        if e.kind != EntryKind::Dir {
            return Err(TarError::Malformed {
                path: path.to_string(),
                detail: "the layer root must be a directory".into(),
            });
        }
        let root = self
            .root
            .try_clone()
            .map_err(|err| io_err(path, "dup", err))?;
        self.owner_and_xattrs(&root, c"", e, path, false)?;
        self.dirs.push(DirMeta {
            comps: Vec::new(),
            perm: e.perm,
            atime: e.atime.unwrap_or(e.mtime),
            mtime: e.mtime,
        });
        Ok(())
    }

    /// The directory `comps` (relative to the root), created (0755) where
    /// missing, never through a symlink.
    fn parent(&mut self, comps: &[CString], path: &str) -> Result<&Dir, TarError> {
        let common = self
            .stack
            .iter()
            .zip(comps)
            .take_while(|((have, _), want)| have == *want)
            .count();
        self.stack.truncate(common);
        for i in common..comps.len() {
            let dir = {
                let at = self.stack.last().map(|(_, d)| d).unwrap_or(&self.root);
                open_or_create_dir(at, &comps[i], &comps[..=i], path, self.opts)?
            };
            self.stack.push((comps[i].clone(), dir));
        }
        Ok(self.stack.last().map(|(_, d)| d).unwrap_or(&self.root))
    }

    fn whiteout(
        &mut self,
        parents: &[CString],
        target: &[u8],
        e: &Entry,
        path: &str,
    ) -> Result<(), TarError> {
        match target {
            b"" | b"." => {
                return Err(TarError::Malformed {
                    path: path.to_string(),
                    detail: "whiteout of an empty name".into(),
                })
            }
            b".." => {
                return Err(TarError::PathEscape {
                    path: path.to_string(),
                    reason: "a whiteout of `..`",
                })
            }
            _ => {}
        }
        let target = cname(target, path)?;
        let form = self.opts.whiteouts;
        let dir = self.parent(parents, path)?.try_clone();
        let dir = dir.map_err(|err| io_err(path, "dup", err))?;
        // A whiteout hides lower layers; an entry of this layer under the
        // same name, written earlier, is replaced as any later entry would.
        self.remove_existing(&dir, &target, path)?;
        match form {
            WhiteoutForm::CharDevice => dir
                .mknod(&target, libc::S_IFCHR, 0)
                .map_err(|err| io_err(path, "mknod whiteout", err))?,
            WhiteoutForm::UserXattr => {
                drop(
                    dir.create(&target, libc::O_WRONLY, 0o644)
                        .map_err(|err| io_err(path, "create whiteout", err))?,
                );
                dir.set_xattr(&target, c"user.overlay.whiteout", b"y", 0)
                    .map_err(|err| io_err(path, "set user.overlay.whiteout", err))?;
                let key = join(parents);
                if !self.xwhiteout_dirs.contains(&key) {
                    mark_xwhiteouts(&dir, path)?;
                    if !parents.is_empty() && !self.xwhiteout_dirs.contains(&Vec::new()) {
                        mark_xwhiteouts(&self.root, path)?;
                        self.xwhiteout_dirs.insert(Vec::new());
                    }
                    self.xwhiteout_dirs.insert(key);
                }
            }
        }
        let t = [timespec(e.atime.unwrap_or(e.mtime)), timespec(e.mtime)];
        dir.utimens(&target, &t)
            .map_err(|err| io_err(path, "set whiteout times", err))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Removes whatever an earlier entry left at `name`.
    fn remove_existing(&mut self, dir: &Dir, name: &CStr, path: &str) -> Result<(), TarError> {
        let Some(st) = dir.stat(name).map_err(|err| io_err(path, "stat", err))? else {
            return Ok(());
        };
        if st.is_dir() {
            // Open handles below it would point at a removed tree, and a
            // directory made again under its name has none of its marks.
            self.stack.clear();
            self.xwhiteout_dirs.clear();
            crate::union::remove_tree(dir, name)
                .map_err(|err| io_err(path, "remove the directory it replaces", err))
        } else {
            dir.unlink(name)
                .map_err(|err| io_err(path, "remove the entry it replaces", err))
        }
    }

    fn member<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        dir: &Dir,
        parents: &[CString],
        name: &CStr,
        e: &Entry,
        path: &str,
    ) -> Result<(), TarError> {
        let existing = dir.stat(name).map_err(|err| io_err(path, "stat", err))?;
        if e.kind == EntryKind::Dir {
            if !existing.is_some_and(|st| st.is_dir()) {
                self.remove_existing(dir, name, path)?;
                dir.mkdir(name, 0o700)
                    .map_err(|err| io_err(path, "mkdir", err))?;
            }
            // Directory over directory: contents stay, metadata is the new
            // entry's (mode and times at the end, with the others').
            self.owner_and_xattrs(dir, name, e, path, false)?;
            let mut comps = parents.to_vec();
            comps.push(name.to_owned());
            self.dirs.push(DirMeta {
                comps,
                perm: e.perm,
                atime: e.atime.unwrap_or(e.mtime),
                mtime: e.mtime,
            });
            return Ok(());
        }
        if existing.is_some() {
            self.remove_existing(dir, name, path)?;
        }
        let times = [timespec(e.atime.unwrap_or(e.mtime)), timespec(e.mtime)];
        match e.kind {
            EntryKind::File => {
                let fd = dir
                    .create(name, libc::O_WRONLY, 0o600)
                    .map_err(|err| io_err(path, "create", err))?;
                self.copy_data(tar, &fd, e.size, path)?;
                self.owner_and_xattrs_fd(fd.as_fd(), e, path)?;
                sys::utimensat_nofollow(fd.as_fd(), c"", &times)
                    .map_err(|err| io_err(path, "set times", err))?;
            }
            EntryKind::HardLink => {
                self.hard_link(dir, name, e, path)?;
                return Ok(());
            }
            EntryKind::Symlink => {
                let target = CString::new(e.link.clone()).map_err(|_| TarError::Malformed {
                    path: path.to_string(),
                    detail: "NUL byte in the symlink target".into(),
                })?;
                if target.is_empty() {
                    return Err(TarError::Malformed {
                        path: path.to_string(),
                        detail: "symlink with an empty target".into(),
                    });
                }
                dir.symlink(name, &target)
                    .map_err(|err| io_err(path, "symlink", err))?;
                self.owner_and_xattrs(dir, name, e, path, true)?;
                dir.utimens(name, &times)
                    .map_err(|err| io_err(path, "set times", err))?;
            }
            EntryKind::Fifo | EntryKind::CharDev | EntryKind::BlockDev => {
                let (fmt, kind) = match e.kind {
                    EntryKind::Fifo => (libc::S_IFIFO, "fifo"),
                    EntryKind::CharDev => (libc::S_IFCHR, "char"),
                    _ => (libc::S_IFBLK, "block"),
                };
                let rdev = if e.kind == EntryKind::Fifo {
                    0
                } else {
                    if !self.opts.allow_devices {
                        return Err(TarError::DeviceNotAllowed {
                            path: path.to_string(),
                            kind,
                            major: e.dev_major,
                            minor: e.dev_minor,
                        });
                    }
                    libc::makedev(e.dev_major, e.dev_minor)
                };
                dir.mknod(name, fmt | 0o600, rdev)
                    .map_err(|err| io_err(path, "mknod", err))?;
                // chmod before chown would let chown drop setgid; after it
                // is the order that keeps every bit.
                self.owner_and_xattrs(dir, name, e, path, false)?;
                dir.utimens(name, &times)
                    .map_err(|err| io_err(path, "set times", err))?;
            }
            EntryKind::Dir => {}
        }
        Ok(())
    }

    fn copy_data<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        fd: &OwnedFd,
        size: u64,
        path: &str,
    ) -> Result<(), TarError> {
        let mut out = std::fs::File::from(fd.try_clone().map_err(|source| TarError::Io {
            path: path.to_string(),
            op: "dup",
            source,
        })?);
        let mut written = 0u64;
        loop {
            let n = tar.read_data(&mut self.buf).map_err(|source| {
                if source.kind() == io::ErrorKind::UnexpectedEof {
                    TarError::Truncated {
                        path: path.to_string(),
                        detail: source.to_string(),
                    }
                } else {
                    TarError::Read {
                        path: path.to_string(),
                        source,
                    }
                }
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&self.buf[..n])
                .map_err(|source| TarError::Io {
                    path: path.to_string(),
                    op: "write",
                    source,
                })?;
            written += n as u64;
        }
        debug_assert_eq!(written, size);
        self.stats.bytes = self.stats.bytes.saturating_add(written);
        Ok(())
    }

    fn hard_link(&mut self, dir: &Dir, name: &CStr, e: &Entry, path: &str) -> Result<(), TarError> {
        let target_display = String::from_utf8_lossy(&e.link).into_owned();
        let outside = || TarError::HardlinkOutside {
            path: path.to_string(),
            target: target_display.clone(),
        };
        let comps = match components(&e.link, path) {
            Ok(c) => c,
            Err(TarError::PathEscape { .. }) => return Err(outside()),
            Err(other) => return Err(other),
        };
        let comps = comps
            .into_iter()
            .map(|c| cname(c, path))
            .collect::<Result<Vec<_>, _>>()?;
        let Some((tname, tparents)) = comps.split_last() else {
            return Err(outside());
        };
        let missing = || TarError::HardlinkMissing {
            path: path.to_string(),
            target: target_display.clone(),
        };
        let tdir = if tparents.is_empty() {
            self.root
                .try_clone()
                .map_err(|err| io_err(path, "dup", err))?
        } else {
            let rel = CString::new(join(tparents)).map_err(|_| missing())?;
            match sys::openat2(
                self.root.fd(),
                &rel,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                BENEATH,
            ) {
                Ok(fd) => Dir::from_fd(fd),
                Err(Errno::ENOENT) => return Err(missing()),
                Err(Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => {
                    // Through a symlink (anywhere on the way), or a
                    // non-directory?
                    let via_symlink = match sys::openat2(
                        self.root.fd(),
                        &rel,
                        libc::O_PATH | libc::O_NOFOLLOW,
                        0,
                        BENEATH,
                    ) {
                        Ok(fd) => sys::fstat(fd.as_fd())
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK),
                        Err(e) => e != Errno::ENOENT && e != Errno::ENOTDIR,
                    };
                    if via_symlink {
                        return Err(TarError::SymlinkEscape {
                            path: path.to_string(),
                            symlink: target_display.clone(),
                        });
                    }
                    return Err(missing());
                }
                Err(err) => return Err(io_err(path, "open the link target's directory", err)),
            }
        };
        match tdir.link(tname, dir, name) {
            Ok(()) => {
                self.stats.hardlinks += 1;
                Ok(())
            }
            Err(Errno::ENOENT) => Err(missing()),
            Err(err) => Err(io_err(path, "link", err)),
        }
    }

    /// Owner, override_stat and xattrs of entry `name` in `dir` (of `dir`
    /// itself for an empty name), never following a symlink. Mode too for
    /// non-directories (directories get theirs at the end).
    fn owner_and_xattrs(
        &self,
        dir: &Dir,
        name: &CStr,
        e: &Entry,
        path: &str,
        symlink: bool,
    ) -> Result<(), TarError> {
        if self.opts.preserve_owners {
            dir.chown(name, e.uid, e.gid)
                .map_err(|err| io_err(path, "chown", err))?;
        }
        let is_dir = e.kind == EntryKind::Dir;
        if !symlink && !is_dir {
            dir.chmod(name, self.real_perm(e))
                .map_err(|err| io_err(path, "chmod", err))?;
        }
        // The kernel allows user.* xattrs only on regular files and
        // directories: a rootless fifo or symlink keeps its mode but shows
        // the unpacking user as its owner.
        let user_xattrs_allowed = !symlink && matches!(e.kind, EntryKind::File | EntryKind::Dir);
        if self.opts.override_stat && user_xattrs_allowed {
            let v = format!("{}:{}:0{:o}", e.uid, e.gid, e.perm);
            dir.set_xattr(name, OVERRIDE_STAT, v.as_bytes(), 0)
                .map_err(|err| io_err(path, "set user.containers.override_stat", err))?;
        }
        for (attr, value) in &e.xattrs {
            if skip_xattr(attr) || (!user_xattrs_allowed && attr.starts_with(b"user.")) {
                tracing::debug!(path, attr = %String::from_utf8_lossy(attr), "xattr not restored");
                continue;
            }
            let c = cname(attr, path)?;
            dir.set_xattr(name, &c, value, 0)
                .map_err(|err| io_err(path, "setxattr", err))?;
        }
        Ok(())
    }

    /// [`Self::owner_and_xattrs`] on an open regular file.
    fn owner_and_xattrs_fd(
        &self,
        fd: BorrowedFd<'_>,
        e: &Entry,
        path: &str,
    ) -> Result<(), TarError> {
        if self.opts.preserve_owners {
            sys::fchown(fd, e.uid, e.gid).map_err(|err| io_err(path, "chown", err))?;
        }
        sys::fchmod(fd, self.real_perm(e)).map_err(|err| io_err(path, "chmod", err))?;
        if self.opts.override_stat {
            let v = format!("{}:{}:0{:o}", e.uid, e.gid, e.perm);
            sys::setxattrat(fd, c"", OVERRIDE_STAT, v.as_bytes(), 0)
                .map_err(|err| io_err(path, "set user.containers.override_stat", err))?;
        }
        // After chown, which clears security.capability.
        for (attr, value) in &e.xattrs {
            if skip_xattr(attr) {
                tracing::debug!(path, attr = %String::from_utf8_lossy(attr), "xattr not restored");
                continue;
            }
            let c = cname(attr, path)?;
            sys::setxattrat(fd, c"", &c, value, 0).map_err(|err| io_err(path, "setxattr", err))?;
        }
        Ok(())
    }

    /// The mode bits the object itself gets: the entry's, or with
    /// override_stat (where the real owner is the unpacking user) only the
    /// plain bits, with the owner's read/write(/search) added.
    fn real_perm(&self, e: &Entry) -> u32 {
        if self.opts.override_stat {
            let owner = if e.kind == EntryKind::Dir {
                0o700
            } else {
                0o600
            };
            (e.perm & 0o777) | owner
        } else {
            e.perm
        }
    }

    /// Applies directory modes and times, deepest-last-written first; an
    /// entry replaced later in the archive is skipped.
    fn finish_dirs(&mut self) -> Result<(), TarError> {
        self.stack.clear();
        let mut done: HashSet<Vec<u8>> = HashSet::new();
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let key = join(&d.comps);
            if !done.insert(key.clone()) {
                continue;
            }
            let path = lossy(&d.comps);
            let dir = if d.comps.is_empty() {
                self.root
                    .try_clone()
                    .map_err(|err| io_err(&path, "dup", err))?
            } else {
                let rel = CString::new(key).map_err(|_| TarError::Malformed {
                    path: path.clone(),
                    detail: "NUL byte in a name".into(),
                })?;
                match sys::openat2(
                    self.root.fd(),
                    &rel,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    BENEATH,
                ) {
                    Ok(fd) => Dir::from_fd(fd),
                    // Replaced by a later entry (or a whiteout).
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                    Err(err) => return Err(io_err(&path, "open directory", err)),
                }
            };
            let perm = if self.opts.override_stat {
                (d.perm & 0o777) | 0o700
            } else {
                d.perm
            };
            sys::fchmod(dir.fd(), perm).map_err(|err| io_err(&path, "chmod", err))?;
            let t = [timespec(d.atime), timespec(d.mtime)];
            dir.utimens(c"", &t)
                .map_err(|err| io_err(&path, "set times", err))?;
        }
        Ok(())
    }
}

/// xattrs an archive may not set: the union's own (whiteouts, opaque,
/// redirects… must come from `.wh.` entries, never from a layer's say-so)
/// and the rootless owner record.
fn skip_xattr(name: &[u8]) -> bool {
    whiteout::is_internal_xattr(name)
        || name == OVERRIDE_STAT.to_bytes()
        || name.starts_with(b"trusted.overlay")
        || name.starts_with(b"user.overlay")
}

fn set_opaque(dir: &Dir, form: WhiteoutForm, path: &str) -> Result<(), TarError> {
    let attr = match form {
        WhiteoutForm::CharDevice => whiteout::XattrNs::Trusted.opaque(),
        WhiteoutForm::UserXattr => whiteout::XattrNs::User.opaque(),
    };
    dir.set_xattr(c"", attr, b"y", 0)
        .map_err(|err| io_err(path, "mark the directory opaque", err))
}

/// Marks a directory as holding xattr whiteouts (the kernel looks for
/// them only there, and only when the layer root is marked too).
fn mark_xwhiteouts(dir: &Dir, path: &str) -> Result<(), TarError> {
    dir.set_xattr(c"", c"user.overlay.xwhiteouts", b"", 0)
        .map_err(|err| io_err(path, "set user.overlay.xwhiteouts", err))
}

/// Opens directory `name` in `at` beneath it, creating it (0755, root's)
/// when missing. `comps` is its path from the root, for messages.
fn open_or_create_dir(
    at: &Dir,
    name: &CStr,
    comps: &[CString],
    path: &str,
    opts: &UnpackOptions,
) -> Result<Dir, TarError> {
    let open = || {
        sys::openat2(
            at.fd(),
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            BENEATH,
        )
    };
    let err = match open() {
        Ok(fd) => return Ok(Dir::from_fd(fd)),
        Err(e) => e,
    };
    match err {
        Errno::ENOENT => {
            match at.mkdir(name, 0o755) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(path, "create a parent directory", e)),
            }
            if opts.override_stat {
                at.set_xattr(name, OVERRIDE_STAT, b"0:0:0755", 0)
                    .map_err(|e| io_err(path, "set user.containers.override_stat", e))?;
            }
            open()
                .map(Dir::from_fd)
                .map_err(|e| io_err(path, "open a parent directory", e))
        }
        Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => {
            let is_link = at
                .stat(name)
                .ok()
                .flatten()
                .is_some_and(|st| st.mode() & libc::S_IFMT == libc::S_IFLNK);
            if is_link || err != Errno::ENOTDIR {
                Err(TarError::SymlinkEscape {
                    path: path.to_string(),
                    symlink: lossy(comps),
                })
            } else {
                Err(TarError::NotADirectory {
                    path: path.to_string(),
                    parent: lossy(comps),
                })
            }
        }
        e => Err(io_err(path, "open a parent directory", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_components() {
        let c = |s: &str| {
            components(s.as_bytes(), s).map(|v| {
                v.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c("./a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert_eq!(c("/etc/x").unwrap(), ["etc", "x"]);
        assert!(c("./").unwrap().is_empty());
        assert!(matches!(c("../x"), Err(TarError::PathEscape { .. })));
        assert!(matches!(c("a/../b"), Err(TarError::PathEscape { .. })));
        assert!(matches!(c("a/.."), Err(TarError::PathEscape { .. })));
        assert_eq!(c("a/...").unwrap(), ["a", "..."]);
    }
}
