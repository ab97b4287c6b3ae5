//! Building layer directories for tests, with every whiteout and opaque
//! encoding engines and kernels produce.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How a deleted name is recorded in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// A char device 0/0 (kernel overlayfs).
    CharDev,
    /// An empty `.wh.<name>` file (OCI/AUFS, containers/storage).
    WhFile,
    /// An empty file with `trusted.overlay.whiteout`, its directory marked
    /// `trusted.overlay.opaque=x` (kernel xattr whiteouts, 6.7+).
    Xattr,
}

/// How a directory is marked opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueForm {
    Trusted,
    User,
    FuseOverlayfs,
    WhFile,
}

impl WhiteoutForm {
    pub const ALL: [WhiteoutForm; 3] = [
        WhiteoutForm::CharDev,
        WhiteoutForm::WhFile,
        WhiteoutForm::Xattr,
    ];

    /// The opaque form that goes with this whiteout form in real layers.
    pub fn opaque(self) -> OpaqueForm {
        match self {
            WhiteoutForm::CharDev | WhiteoutForm::Xattr => OpaqueForm::Trusted,
            WhiteoutForm::WhFile => OpaqueForm::WhFile,
        }
    }

    /// Whether kernel overlayfs reads this form (the reference can use it).
    pub fn kernel_reads(self) -> bool {
        !matches!(self, WhiteoutForm::WhFile)
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "lsetxattr {name} on {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sets an xattr (not following symlinks), returning the error.
pub fn try_set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads an xattr (not following symlinks).
pub fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// The xattr names of an entry (not following symlinks).
pub fn list_xattrs(p: &Path) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let r = unsafe { libc::llistxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

/// Removes an xattr (not following symlinks).
pub fn remove_xattr(p: &Path, name: &str) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe { libc::lremovexattr(c(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes entries into one layer directory.
pub struct LayerBuilder {
    pub root: PathBuf,
}

impl LayerBuilder {
    pub fn new(root: &Path) -> LayerBuilder {
        std::fs::create_dir_all(root).expect("layer root");
        LayerBuilder {
            root: root.to_path_buf(),
        }
    }

    fn at(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("parent dirs");
        }
        p
    }

    pub fn file(&self, rel: &str, content: &str) -> &Self {
        std::fs::write(self.at(rel), content).expect("write file");
        self
    }

    pub fn bytes(&self, rel: &str, content: &[u8]) -> &Self {
        std::fs::write(self.at(rel), content).expect("write file");
        self
    }

    pub fn mode(&self, rel: &str, mode: u32) -> &Self {
        std::fs::set_permissions(self.root.join(rel), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        self
    }

    pub fn owner(&self, rel: &str, uid: u32, gid: u32) -> &Self {
        std::os::unix::fs::lchown(self.root.join(rel), Some(uid), Some(gid)).expect("chown");
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.root.join(rel)).expect("mkdir");
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.at(rel)).expect("symlink");
        self
    }

    pub fn hardlink(&self, rel: &str, existing: &str) -> &Self {
        std::fs::hard_link(self.root.join(existing), self.at(rel)).expect("link");
        self
    }

    pub fn fifo(&self, rel: &str) -> &Self {
        nix::unistd::mkfifo(
            &self.at(rel),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        self
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &str) -> &Self {
        set_xattr(&self.root.join(rel), name, value.as_bytes());
        self
    }

    /// Records `rel` as deleted in this layer.
    pub fn whiteout(&self, rel: &str, form: WhiteoutForm) -> &Self {
        let p = self.at(rel);
        match form {
            WhiteoutForm::CharDev => {
                // SAFETY: valid path.
                let r = unsafe { libc::mknod(c(&p).as_ptr(), libc::S_IFCHR, 0) };
                assert_eq!(r, 0, "mknod whiteout {p:?}");
            }
            WhiteoutForm::WhFile => {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                std::fs::write(p.with_file_name(format!(".wh.{name}")), "").expect("wh file");
            }
            WhiteoutForm::Xattr => {
                std::fs::write(&p, "").expect("empty file");
                set_xattr(&p, "trusted.overlay.whiteout", b"");
                set_xattr(p.parent().unwrap(), "trusted.overlay.opaque", b"x");
            }
        }
        self
    }

    /// Marks directory `rel` opaque (creating it).
    pub fn opaque(&self, rel: &str, form: OpaqueForm) -> &Self {
        let p = self.root.join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        match form {
            OpaqueForm::Trusted => set_xattr(&p, "trusted.overlay.opaque", b"y"),
            OpaqueForm::User => set_xattr(&p, "user.overlay.opaque", b"y"),
            OpaqueForm::FuseOverlayfs => set_xattr(&p, "user.fuseoverlayfs.opaque", b"y"),
            OpaqueForm::WhFile => std::fs::write(p.join(".wh..wh..opq"), "").expect("opq marker"),
        }
        self
    }
}
