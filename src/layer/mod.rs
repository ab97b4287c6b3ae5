//! Layer access: the one module that makes syscalls on layer directories.
//!
//! A [`Layer`] is a directory tree held open by an fd; every name inside it
//! is reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from that
//! fd and then with `*at` calls on a single component ([`Dir`]). The daemon
//! runs as root, so this is what keeps a hostile layer (a symlink to `/etc`,
//! a `..` in a name) from steering it outside the layer.
//!
//! The on-disk encodings of whiteouts and opaque directories live in
//! [`whiteout`].

mod dir;
pub mod sys;
pub mod whiteout;

use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};

pub use dir::{cpath, Dir, RawEntry};
use sys::SysResult;

/// One layer directory (a lower, or the upper).
#[derive(Debug)]
pub struct Layer {
    root: Dir,
    path: PathBuf,
    dev: u64,
}

impl Layer {
    /// Opens the layer root. The path comes from the administrator, so it is
    /// resolved normally; everything below it is not.
    pub fn open(path: &Path) -> io::Result<Layer> {
        let c = cpath(path).map_err(io::Error::from)?;
        let fd = sys::openat2(at_fdcwd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0)
            .map_err(io::Error::from)?;
        let root = Dir::from_fd(fd);
        let st = root.stat_self().map_err(io::Error::from)?;
        Ok(Layer {
            root,
            path: path.to_path_buf(),
            dev: st.dev(),
        })
    }

    pub fn root(&self) -> &Dir {
        &self.root
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `st_dev` of the layer root; used to keep inode numbers from layers on
    /// different filesystems apart.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Opens the directory at `rel` (relative to the layer root, `.` for the
    /// root itself) without following any symlink and without leaving the
    /// layer.
    pub fn open_dir(&self, rel: &CStr) -> SysResult<Dir> {
        const RESOLVE: u64 =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        sys::openat2(
            self.root.fd(),
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            RESOLVE,
        )
        .map(Dir::from_fd)
    }
}

fn at_fdcwd() -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel understands, never closed.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// File type of a layer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }

    /// The `d_type` value of `getdents`.
    pub fn dtype(self) -> u8 {
        match self {
            Kind::File => libc::DT_REG,
            Kind::Dir => libc::DT_DIR,
            Kind::Symlink => libc::DT_LNK,
            Kind::Fifo => libc::DT_FIFO,
            Kind::Socket => libc::DT_SOCK,
            Kind::CharDev => libc::DT_CHR,
            Kind::BlockDev => libc::DT_BLK,
        }
    }

    pub fn from_dtype(dtype: u8) -> Option<Kind> {
        Some(match dtype {
            libc::DT_REG => Kind::File,
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_CHR => Kind::CharDev,
            libc::DT_BLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// `struct stat` of a layer entry.
#[derive(Clone, Copy)]
pub struct Stat(pub libc::stat64);

impl std::fmt::Debug for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stat")
            .field("dev", &self.0.st_dev)
            .field("ino", &self.0.st_ino)
            .field("mode", &format_args!("{:o}", self.0.st_mode))
            .field("size", &self.0.st_size)
            .finish()
    }
}

impl Stat {
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_mode(self.0.st_mode)
    }
    pub fn is_dir(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
    pub fn perm(&self) -> u32 {
        self.0.st_mode & 0o7777
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    pub fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    pub fn atime(&self) -> libc::timespec {
        libc::timespec {
            tv_sec: self.0.st_atime,
            tv_nsec: self.0.st_atime_nsec,
        }
    }
    pub fn mtime(&self) -> libc::timespec {
        libc::timespec {
            tv_sec: self.0.st_mtime,
            tv_nsec: self.0.st_mtime_nsec,
        }
    }
}
