//! The FUSE adapter: translates kernel requests into union calls and union
//! answers into replies. It owns the open file and directory handles and
//! the kernel cache policy; every rule about layers lives in the union core.

mod convert;
mod handles;
mod passthrough;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::union::{Attr, Node, OpenDir, SetAttr, Union, XattrReply};
use convert::{caller, cname, errno, file_attr, file_type, negative_attr, time_spec};
use handles::Handle;
use passthrough::Backings;

/// Kernel-facing knobs.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// How long the kernel may cache names and attributes.
    pub timeout: Duration,
    /// Let the kernel enforce POSIX ACLs stored in xattrs.
    pub acl: bool,
    /// Use FUSE passthrough where the kernel offers it (the daemon must be
    /// privileged in the initial user namespace).
    pub passthrough: bool,
    /// Let the kernel cache writes when passthrough is off.
    pub writeback: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            timeout: Duration::from_secs(1),
            acl: true,
            passthrough: false,
            writeback: true,
        }
    }
}

/// A [`Union`] served over FUSE.
pub struct UnionFs {
    union: Arc<Union>,
    opts: FuseOptions,
    files: DashMap<u64, Handle>,
    dirs: DashMap<u64, Arc<OpenDir>>,
    next_fh: AtomicU64,
    backings: Backings,
    /// Passthrough was negotiated with the kernel.
    passthrough: Arc<AtomicBool>,
}

const GEN: Generation = Generation(0);

/// Cache time for names and attributes that only immutable lower layers
/// hold, and for names that do not exist (a create goes through the kernel,
/// which drops the negative entry).
const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);

impl UnionFs {
    pub fn new(union: Arc<Union>, opts: FuseOptions) -> UnionFs {
        UnionFs {
            union,
            opts,
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
            backings: Backings::default(),
            passthrough: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn union(&self) -> &Arc<Union> {
        &self.union
    }

    /// Set once the kernel agreed to passthrough; shared with the status.
    pub fn passthrough_flag(&self) -> Arc<AtomicBool> {
        self.passthrough.clone()
    }

    fn ttl(&self) -> &Duration {
        &self.opts.timeout
    }

    /// How long the kernel may cache a node's name and attributes. Only
    /// this mount changes the union and the kernel invalidates what it
    /// changes, so caching is safe; objects that live only in immutable
    /// lower layers are cached for long, upper ones for `timeout=`.
    fn ttl_of(&self, node: &Node) -> &Duration {
        if node.state().upper {
            &self.opts.timeout
        } else {
            &LOWER_TTL
        }
    }

    fn ttl_of_id(&self, id: u64) -> &Duration {
        match self.union.node(id) {
            Ok(n) if !n.state().upper => &LOWER_TTL,
            _ => &self.opts.timeout,
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, r: crate::union::Result<(Arc<Node>, Attr)>) {
        match r {
            Ok((node, attr)) => reply.entry(self.ttl_of(&node), &file_attr(&attr), GEN),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_EXPORT_SUPPORT;
        if self.opts.acl {
            wanted |= InitFlags::FUSE_POSIX_ACL;
        }
        if self.opts.passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            // Depth 1: backing files must not sit on a stacked filesystem,
            // and layerfs itself may be a lower layer of an overlay.
            if config.set_max_stack_depth(1).is_ok() {
                wanted |= InitFlags::FUSE_PASSTHROUGH;
            }
        }
        let supported = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(supported) {
            tracing::warn!(?missing, "kernel refused FUSE capabilities");
        }
        let passthrough = supported.contains(InitFlags::FUSE_PASSTHROUGH);
        self.passthrough.store(passthrough, Ordering::Relaxed);
        // Without passthrough every write is a round trip; let the kernel
        // gather them in its page cache instead. (The two exclude each
        // other in the kernel.)
        if !passthrough
            && self.opts.writeback
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok()
        {
            tracing::debug!("writeback cache on");
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        tracing::debug!(capabilities = ?supported, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.union.lookup(parent.0, &name) {
            // A negative entry: the kernel remembers the name is absent.
            Err(nix::errno::Errno::ENOENT) => reply.entry(&LOWER_TTL, &negative_attr(), GEN),
            r => self.reply_entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let file = fh.and_then(|fh| self.files.get(&fh.0).map(|h| h.file.clone()));
        match self.union.getattr(ino.0, file.as_deref()) {
            Ok(attr) => reply.attr(self.ttl_of_id(ino.0), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
        };
        let file = fh.and_then(|fh| self.files.get(&fh.0).map(|h| h.file.clone()));
        match self
            .union
            .setattr(ino.0, &change, file.as_deref(), &caller(req))
        {
            Ok(attr) => reply.attr(self.ttl(), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self
            .union
            .mknod(parent.0, &name, mode, umask, u64::from(rdev), &caller(req));
        self.reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.union.mkdir(parent.0, &name, mode, umask, &caller(req));
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name).and_then(|n| self.union.unlink(parent.0, &n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name).and_then(|n| self.union.rmdir(parent.0, &n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (cname(link_name), cname(target.as_os_str())) {
            (Ok(n), Ok(t)) => (n, t),
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        let r = self.union.symlink(parent.0, &name, &target, &caller(req));
        self.reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = match (cname(name), cname(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        match self
            .union
            .rename(parent.0, &name, newparent.0, &newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = match cname(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.union.link(ino.0, newparent.0, &name, &caller(req));
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let file = match self.union.open(ino.0, flags.0) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let cache = self.cache_flags(&file);
        match self.add_handle(file, |f| reply.open_backing(f.fd().as_ref())) {
            Ok((fh, Some(id))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok((fh, None)) => reply.opened(FileHandle(fh), cache),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .file(fh)
            .and_then(|f| self.union.read(&f, offset, size).map_err(errno))
        {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .file(fh)
            .and_then(|f| self.union.write(&f, offset, data).map_err(errno))
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.file(fh) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some((_, h)) = self.files.remove(&fh.0) {
            if h.counted {
                self.backings.release(h.file.node().id);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .file(fh)
            .and_then(|f| self.union.fsync(&f, datasync).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            Ok(dir) => {
                let fh = self.fh();
                self.dirs.insert(fh, Arc::new(dir));
                // A read-only union never changes: the kernel may keep
                // listings across opens. A writable one may not: with kept
                // listings, semantics::stress (8 threads renaming, creating
                // and unlinking in one directory while listing it) saw 0
                // or 2 names of a file its thread had renamed before
                // listing, in 4 of 6 runs; without them, 0 in 14.
                //
                // The cause is in the kernel's cache (fs/fuse/readdir.c):
                // a change resets the kept listing, but a READDIR reply
                // still arriving is added to the new one whenever its
                // offset equals where the new one ends; the version check
                // is made when the reply is added, not when it was asked
                // for. A handle's listing older than the change is thus
                // spliced into a fresh one: names before the offset from
                // one state, after it from another. Offsets that mean the
                // same in every listing (name-hash cookies) made it worse
                // (7 of 8), presumably because two listings' offsets then
                // match more often.
                // Offsets unique to each listing would stop the splice,
                // but a first reply (offset 0) taken before a change and
                // added after the reset still fills the cache with the old
                // state; no offset scheme can prevent that.
                let flags = if self.union.is_read_only() {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (dir, entries) = match self.listing(fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let (dot, dotdot) = self.union.dot_inos(&dir);
        // Offsets: 0 = ".", 1 = "..", 2 + i = entries[i]; an entry carries
        // the offset of the one after it.
        for idx in offset..(entries.len() as u64 + 2) {
            let full = match idx {
                0 => reply.add(INodeNo(dot), 1, fuser::FileType::Directory, "."),
                1 => reply.add(INodeNo(dotdot), 2, fuser::FileType::Directory, ".."),
                _ => {
                    let e = &entries[(idx - 2) as usize];
                    reply.add(
                        INodeNo(e.ino),
                        idx + 1,
                        file_type(e.kind),
                        OsStr::from_bytes(e.name.to_bytes()),
                    )
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (dir, entries) = match self.listing(fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let own = match self.union.getattr(ino.0, None) {
            Ok(a) => file_attr(&a),
            Err(e) => return reply.error(errno(e)),
        };
        let (dot, dotdot) = self.union.dot_inos(&dir);
        for idx in offset..(entries.len() as u64 + 2) {
            // The kernel takes no reference for "." and "..".
            let full = match idx {
                0 => reply.add(INodeNo(dot), 1, ".", self.ttl(), &own, GEN),
                1 => reply.add(INodeNo(dotdot), 2, "..", self.ttl(), &own, GEN),
                _ => {
                    let e = &entries[(idx - 2) as usize];
                    let Ok((node, attr)) = self.union.lookup(ino.0, &e.name) else {
                        continue; // gone since the listing was taken
                    };
                    let full = reply.add(
                        INodeNo(node.id),
                        idx + 1,
                        OsStr::from_bytes(e.name.to_bytes()),
                        self.ttl_of(&node),
                        &file_attr(&attr),
                        GEN,
                    );
                    if full {
                        self.union.forget(node.id, 1);
                    }
                    full
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.union.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match cname(name).and_then(|n| self.union.setxattr(ino.0, &n, value, flags).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match cname(name).and_then(|n| self.union.getxattr(ino.0, &n, size).map_err(errno)) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.union.listxattr(ino.0, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match cname(name).and_then(|n| self.union.removexattr(ino.0, &n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.union.access(ino.0, mask.bits(), &caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match cname(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self
            .union
            .create(parent.0, &name, mode, umask, flags, &caller(req))
        {
            Ok((_, attr, file)) => {
                let cache = self.cache_flags(&file);
                let attr = file_attr(&attr);
                match self.add_handle(file, |f| reply.open_backing(f.fd().as_ref())) {
                    Ok((fh, Some(id))) => reply.created_passthrough(
                        self.ttl(),
                        &attr,
                        GEN,
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    ),
                    Ok((fh, None)) => reply.created(self.ttl(), &attr, GEN, FileHandle(fh), cache),
                    Err(e) => {
                        // The entry exists now; the kernel drops its
                        // reference with a FORGET.
                        reply.error(e)
                    }
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// No ioctls are served; ENOTTY is what a file without them answers
    /// (isatty() probes them on every open by some runtimes).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.file(fh).and_then(|f| {
            self.union
                .fallocate(&f, mode, offset, length)
                .map_err(errno)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self
            .file(fh)
            .and_then(|f| self.union.lseek(&f, offset, whence).map_err(errno))
        {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.file(fh_in).and_then(|src| {
            let dst = self.file(fh_out)?;
            self.union
                .copy_file_range(&src, offset_in, &dst, offset_out, len)
                .map_err(errno)
        });
        match r {
            Ok(n) => reply.written(n.min(u32::MAX as usize) as u32),
            Err(e) => reply.error(e),
        }
    }
}
