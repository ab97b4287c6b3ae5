//! Union semantics checked end to end on a layerfs mount:
//! - `entries`: the operations on names (lookup, getattr, setattr, mknod,
//!   mkdir, unlink, rmdir, symlink, readlink, rename and its flags, link),
//!   and a read-only union refusing every write;
//! - `io`: open files and directories (read, write, fsync, readdir and
//!   readdirplus, statfs, xattrs and ACLs, access, fallocate, lseek,
//!   copy_file_range);
//! - `union`: whiteouts, opaque directories, copy-up, inode numbers, link
//!   counts;
//! - `stress`: copy-up killed half way, concurrency, memory under FORGET.

mod entries;
mod io;
mod stress;
mod union;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::sys::{self, DirStream};
use crate::harness::*;

/// Two lowers (`l1` on top of `l2`) and an upper, mounted at `m`.
struct U {
    m: Mounted,
    via: Via,
    l1: PathBuf,
    l2: PathBuf,
    up: PathBuf,
    work: PathBuf,
    s: Scratch,
}

fn setup(tag: &str, via: Via, build: impl FnOnce(&LayerBuilder, &LayerBuilder)) -> U {
    let s = Scratch::new(tag);
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    build(&LayerBuilder::new(&l1), &LayerBuilder::new(&l2));
    let (up, work, mnt) = (s.dir("u"), s.dir("w"), s.dir("m"));
    let m = mount(
        via,
        &[l1.clone(), l2.clone()],
        Some((&up, &work)),
        &mnt,
        &[],
    );
    U {
        m,
        via,
        l1,
        l2,
        up,
        work,
        s,
    }
}

impl U {
    fn p(&self, rel: &str) -> PathBuf {
        self.m.p(rel)
    }
    fn u(&self, rel: &str) -> PathBuf {
        self.up.join(rel)
    }
    fn remount(&mut self) {
        self.m.unmount();
        let lowers = [self.l1.clone(), self.l2.clone()];
        self.m = mount(
            self.via,
            &lowers,
            Some((&self.up, &self.work)),
            &self.s.path("m"),
            &[],
        );
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"))
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"))
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn perm(p: &Path) -> u32 {
    lstat(p).mode() & 0o7777
}

fn xattr_str(p: &Path, name: &str) -> std::io::Result<String> {
    get_xattr(p, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open rw {p:?}: {e}"))
}
