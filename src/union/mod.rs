//! The union core: overlayfs semantics over layer directories, with no FUSE
//! types in sight.
//!
//! A [`Union`] merges N read-only lower layers and an optional writable
//! upper layer. Requests name nodes by [`NodeId`]; answers are plain data
//! ([`Attr`], [`DirEntry`], open files). Errors are errnos, carried from the
//! syscall that failed to the caller unchanged.
//!
//! Who writes what: only this module writes the upper and work directories,
//! and only through [`crate::layer`]. Lower layers are never written.

mod attr;
mod copyup;
mod create;
mod dircache;
mod file;
pub mod idmap;
mod node;
pub mod override_stat;
mod readdir;
mod remove;
mod rename;
mod resolve;
mod xattr;

use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use smallvec::SmallVec;

pub use attr::{Attr, SetAttr, TimeSpec};
pub use copyup::remove_tree;
pub use file::{OpenDir, OpenFile};
pub use node::{Loc, Node, NodeId, ROOT_ID};
pub use readdir::DirEntry;
pub use xattr::XattrReply;

use crate::layer::whiteout::{self, XattrNs};
use crate::layer::{Dir, Kind, Layer, Stat};
use dircache::{CachedDir, DirCache};
use node::{NodeState, NodeTable, RealId};

pub type Result<T> = std::result::Result<T, Errno>;

/// Most layers one union accepts (the fuse-overlayfs and containers/storage
/// limit).
pub const MAX_LAYERS: usize = 500;

/// Who is asking: the credentials of the process behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Behaviour switches of a union.
#[derive(Debug, Clone)]
pub struct UnionConfig {
    /// Namespace for the overlay xattrs we write.
    pub xattr_ns: XattrNs,
    /// Sync copied-up data and honour fsync (off with `fsync=0`/`volatile`).
    pub fsync: bool,
    /// POSIX ACLs are enforced and inherited (off with `noacl`).
    pub acl: bool,
    /// Copy up metadata only for chmod, chown, utimes and xattr changes of
    /// a lower file (`metacopy=on`, the kernel's format); data follows on
    /// the first write.
    pub metacopy: bool,
    /// Rename directories that have lower layers by recording a redirect
    /// (`redirect_dir=on`, the kernel's format); off gives EXDEV.
    pub redirect_dir: bool,
    /// Report 1 as the link count of every directory (`static_nlink`).
    pub static_nlink: bool,
    /// Open directory fds kept for lookups.
    pub dir_cache_size: usize,
    /// uid mapping between the layers and the mount.
    pub uids: idmap::IdMap,
    /// gid mapping between the layers and the mount.
    pub gids: idmap::IdMap,
    /// Keep owner and mode in this xattr instead of the inode
    /// (`xattr_permissions=1|2`); read from either override xattr.
    pub override_stat: Option<&'static CStr>,
}

impl Default for UnionConfig {
    fn default() -> Self {
        UnionConfig {
            xattr_ns: XattrNs::Trusted,
            fsync: true,
            acl: true,
            metacopy: true,
            redirect_dir: true,
            static_nlink: false,
            dir_cache_size: 4096,
            uids: idmap::IdMap::default(),
            gids: idmap::IdMap::default(),
            override_stat: None,
        }
    }
}

/// The writable layer and its scratch directory.
#[derive(Debug)]
pub struct Upper {
    pub layer: Layer,
    /// Where copy-ups and whiteout swaps are prepared before being renamed
    /// into place (`<workdir>/work`, on the upper's filesystem).
    pub work: Dir,
    /// Copied-up lower files with several names, by their lower identity,
    /// so every name becomes the same upper inode (kernel `index=on`
    /// semantics; `<workdir>/layerfs-index`).
    pub index: Dir,
    seq: AtomicU64,
}

impl Upper {
    pub fn new(layer: Layer, work: Dir, index: Dir) -> Upper {
        Upper {
            layer,
            work,
            index,
            seq: AtomicU64::new(0),
        }
    }

    /// Index name of a lower object.
    fn index_key(st: &Stat) -> CString {
        CString::new(format!("{:x}-{:x}", st.dev(), st.ino())).unwrap_or_default()
    }

    /// A name for a temporary entry in the work directory, unique within
    /// this mount (the work directory is emptied at mount).
    fn tmp_name(&self) -> CString {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#lfs{n:x}")).unwrap_or_default()
    }
}

/// Maps (device, inode) of layer objects to the `st_ino` we report, keeping
/// layers on different filesystems apart (overlayfs calls this xino).
#[derive(Debug)]
struct Xino {
    devs: Vec<u64>,
}

impl Xino {
    const SHIFT: u32 = 56;

    fn new(devs: impl IntoIterator<Item = u64>) -> Xino {
        let mut v: Vec<u64> = Vec::new();
        for d in devs {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        Xino { devs: v }
    }

    fn ino(&self, dev: u64, ino: u64) -> u64 {
        if self.devs.len() <= 1 {
            return ino;
        }
        let fsid = self.devs.iter().position(|&d| d == dev).unwrap_or(0) as u64;
        if fsid == 0 {
            return ino;
        }
        // Keep the top bit clear: it marks synthetic node ids.
        ((fsid & 0x7f) << Self::SHIFT) ^ ino
    }
}

/// A mounted union.
#[derive(Debug)]
pub struct Union {
    lowers: Vec<Layer>,
    upper: Option<Upper>,
    cfg: UnionConfig,
    xino: Xino,
    nodes: NodeTable,
    dirs: DirCache,
    /// The merged index of the lower stack, when one is in use: lookups,
    /// listings and attributes of lower entries come from it.
    index: Option<LowerIndex>,
}

/// A lower stack's merged index.
#[derive(Debug)]
pub struct LowerIndex {
    pub index: crate::index::Index,
    pub stack: u64,
}

impl Union {
    /// Builds the union over open layers. `lowers[0]` is the top lower.
    pub fn new(lowers: Vec<Layer>, upper: Option<Upper>, cfg: UnionConfig) -> io::Result<Union> {
        if lowers.is_empty() && upper.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a union needs at least one layer",
            ));
        }
        if lowers.len() > MAX_LAYERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} lower layers given, at most {MAX_LAYERS} are supported",
                    lowers.len()
                ),
            ));
        }
        let xino = Xino::new(
            upper
                .iter()
                .map(|u| u.layer.dev())
                .chain(lowers.iter().map(Layer::dev)),
        );

        // The root merges every lower down to the first opaque one.
        let mut root_lowers: SmallVec<[u16; 2]> = SmallVec::new();
        let mut root_stat: Option<Stat> = None;
        let mut opaque_above = false;
        if let Some(u) = &upper {
            root_stat = Some(u.layer.root().stat_self()?);
            opaque_above = whiteout::dir_marks(u.layer.root(), c"")?.opaque;
        }
        if !opaque_above {
            for (i, l) in lowers.iter().enumerate() {
                if root_stat.is_none() {
                    root_stat = Some(l.root().stat_self()?);
                }
                root_lowers.push(i as u16);
                if i + 1 < lowers.len() && whiteout::dir_marks(l.root(), c"")?.opaque {
                    break;
                }
            }
        }
        if root_stat.is_none() {
            return Err(io::Error::from(Errno::ENOENT));
        }
        let root = Node::new(
            ROOT_ID,
            Kind::Dir,
            NodeState {
                links: SmallVec::new(),
                upper: upper.is_some(),
                lowers: root_lowers,
                key: RealId {
                    dev: u64::MAX,
                    ino: u64::MAX,
                },
                metacopy: false,
                lower_path: None,
                index_nlink: 0,
                unlinked: false,
                orphan: None,
                lower_xattr_free: false,
            },
        );
        let dirs = DirCache::new(cfg.dir_cache_size);
        Ok(Union {
            lowers,
            upper,
            cfg,
            xino,
            nodes: NodeTable::new(root),
            dirs,
            index: None,
        })
    }

    /// Serves lower lookups, listings and attributes from a merged index
    /// of exactly these lower layers.
    pub fn set_index(&mut self, index: LowerIndex) {
        self.index = Some(index);
    }

    pub fn uses_index(&self) -> bool {
        self.index.is_some()
    }

    /// How many of the lower layers the root merges (down to the first
    /// opaque root).
    pub fn root_lower_count(&self) -> usize {
        self.nodes
            .get(ROOT_ID)
            .map_or(0, |r| r.state().lowers.len())
    }

    pub fn config(&self) -> &UnionConfig {
        &self.cfg
    }

    pub fn is_read_only(&self) -> bool {
        self.upper.is_none()
    }

    pub fn lower_count(&self) -> usize {
        self.lowers.len()
    }

    /// Number of live nodes (what the kernel currently remembers).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Layer directories currently held open.
    pub fn cached_dirs(&self) -> usize {
        self.dirs.len()
    }

    pub fn node(&self, id: NodeId) -> Result<Arc<Node>> {
        self.nodes.get(id).ok_or(Errno::ESTALE)
    }

    /// Drops `n` kernel references on a node (FORGET).
    pub fn forget(&self, id: NodeId, n: u64) {
        if let Some(node) = self.nodes.get(id) {
            self.nodes.forget(id, n);
            if node.is_dir() && self.nodes.get(id).is_none() {
                self.evict_dirs(&node);
            }
        }
    }

    fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    fn layer(&self, loc: Loc) -> Result<&Layer> {
        match loc {
            Loc::Upper => Ok(&self.upper()?.layer),
            Loc::Lower(i) => self.lowers.get(i as usize).ok_or(Errno::EIO),
        }
    }

    fn st_ino(&self, st: &Stat) -> u64 {
        self.xino.ino(st.dev(), st.ino())
    }

    /// The path of a node relative to the layer roots (`.` for the root):
    /// its names in the upper layer, or with `lower` the path its lower
    /// layers hold it at (which differs below a moved directory).
    fn path_of(&self, node: &Node, lower: bool) -> Result<CString> {
        let mut parts: Vec<CString> = Vec::new();
        let mut base: Option<Arc<CString>> = None;
        let mut cur = {
            let st = node.state();
            if st.unlinked {
                return Err(Errno::ENOENT);
            }
            if lower {
                base = st.lower_path.clone();
            }
            if base.is_some() {
                None
            } else {
                st.link().cloned()
            }
        };
        while let Some(link) = cur {
            parts.push(link.name);
            let st = link.parent.state();
            if lower && st.lower_path.is_some() {
                base = st.lower_path.clone();
                break;
            }
            cur = st.link().cloned();
            if parts.len() > 4096 {
                tracing::error!(node = node.id, "node parent chain does not end at the root");
                return Err(Errno::ELOOP);
            }
        }
        let mut path: Vec<u8> = base.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        for p in parts.iter().rev() {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(p.to_bytes());
        }
        if path.is_empty() {
            return Ok(c".".to_owned());
        }
        CString::new(path).map_err(|_| Errno::EINVAL)
    }

    /// The directory of node `dir` in layer `loc`, from the cache or opened
    /// from the layer root.
    fn dir(&self, dir: &Arc<Node>, loc: Loc) -> Result<Arc<CachedDir>> {
        if let Some(d) = self.dirs.get(dir.id, loc) {
            return Ok(d);
        }
        let path = self.path_of(dir, loc != Loc::Upper)?;
        let opened = Arc::new(CachedDir::new(self.layer(loc)?.open_dir(&path)?));
        self.dirs.insert(dir.id, loc, opened.clone());
        Ok(opened)
    }

    /// Drops cached fds of a directory node (it was removed or replaced).
    fn evict_dirs(&self, node: &Node) {
        self.dirs.remove(node.id, Loc::Upper);
        for &l in node.state().lowers.iter() {
            self.dirs.remove(node.id, Loc::Lower(l));
        }
    }

    /// The dir holding a non-directory node's real object in `loc`, and its
    /// name there.
    fn parent_dir(&self, node: &Arc<Node>, loc: Loc) -> Result<(Arc<CachedDir>, CString)> {
        let link = node.state().link().cloned().ok_or(Errno::ENOENT)?;
        Ok((self.dir(&link.parent, loc)?, link.name))
    }

    /// A handle on the real object of `node` in its top layer: the dir that
    /// holds it and its name, or for a directory the directory itself with
    /// an empty name.
    fn real(&self, node: &Arc<Node>) -> Result<Real> {
        let top = node.state().top().ok_or(Errno::ENOENT)?;
        self.real_in(node, top)
    }

    fn real_in(&self, node: &Arc<Node>, loc: Loc) -> Result<Real> {
        if node.is_dir() {
            return Ok(Real {
                dir: self.dir(node, loc)?,
                name: CString::default(),
            });
        }
        // A moved metadata-only file keeps its data where its redirect says.
        let redirected = match loc {
            Loc::Lower(_) => node.state().lower_path.clone(),
            Loc::Upper => None,
        };
        if let Some(path) = redirected {
            let bytes = path.to_bytes();
            let (dir, name) = match bytes.iter().rposition(|&b| b == b'/') {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (&b"."[..], bytes),
            };
            let dir = CString::new(dir).map_err(|_| Errno::EINVAL)?;
            let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
            return Ok(Real {
                dir: Arc::new(CachedDir::new(self.layer(loc)?.open_dir(&dir)?)),
                name,
            });
        }
        let (dir, name) = self.parent_dir(node, loc)?;
        Ok(Real { dir, name })
    }

    /// Where the lower layers hold a node (for a file: its data), as an
    /// absolute redirect value.
    fn redirect_value(&self, node: &Arc<Node>) -> Result<(Arc<CString>, Vec<u8>)> {
        let path = match node.state().lower_path.clone() {
            Some(p) => p,
            None => Arc::new(self.path_of(node, true)?),
        };
        let mut value = b"/".to_vec();
        value.extend_from_slice(path.to_bytes());
        Ok((path, value))
    }

    /// Filesystem statistics (of the upper layer, else the top lower).
    pub fn statfs(&self) -> Result<libc::statvfs64> {
        let layer = match &self.upper {
            Some(u) => &u.layer,
            None => self.lowers.first().ok_or(Errno::EIO)?,
        };
        crate::layer::sys::fstatvfs(layer.root().fd())
    }

    /// READLINK.
    pub fn readlink(&self, id: NodeId) -> Result<Vec<u8>> {
        let node = self.node(id)?;
        if node.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        let real = self.real(&node)?;
        real.dir.dir.readlink(real.name())
    }

    /// `fsync` on a directory: syncs its upper copy if there is one.
    pub fn fsyncdir(&self, id: NodeId, data_only: bool) -> Result<()> {
        let node = self.node(id)?;
        if !self.cfg.fsync || !node.state().upper {
            return Ok(());
        }
        let d = self.dir(&node, Loc::Upper)?;
        crate::layer::sys::fsync(d.dir.fd(), data_only)
    }
}

/// An object in a layer, reached as (directory, name); `name` is empty when
/// the object is the directory itself.
struct Real {
    dir: Arc<CachedDir>,
    name: CString,
}

impl Real {
    fn stat(&self) -> Result<Stat> {
        if self.name.is_empty() {
            self.dir.dir.stat_self()
        } else {
            self.dir.dir.stat(&self.name)?.ok_or(Errno::ENOENT)
        }
    }

    fn name(&self) -> &CStr {
        &self.name
    }
}
