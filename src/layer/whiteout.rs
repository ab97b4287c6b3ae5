//! The on-disk encodings shared with kernel overlayfs, fuse-overlayfs and
//! OCI image layers, all in one place.
//!
//! Read, in every layer:
//! - whiteout: a char device 0/0; an empty `.wh.<name>` entry (OCI/AUFS);
//!   an empty regular file with `*.overlay.whiteout` in a directory marked
//!   `*.overlay.opaque=x` (the kernel's xattr whiteouts);
//! - opaque directory: `*.overlay.opaque=y`, `user.fuseoverlayfs.opaque=y`,
//!   or a `.wh..wh..opq` entry inside it.
//!
//! Written, in the upper layer: char 0/0 whiteouts (an empty `.wh.` file
//! where mknod is refused) and `<ns>.overlay.opaque=y`, where `<ns>` is
//! `trusted` when the daemon may write trusted xattrs and `user` otherwise.

use std::ffi::{CStr, CString};

use nix::errno::Errno;

use super::sys::SysResult;
use super::{Dir, Stat};

/// Name prefix of OCI/AUFS whiteouts.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI/AUFS marker of an opaque directory.
pub const OPAQUE_MARKER: &CStr = c".wh..wh..opq";

/// Which xattr namespace overlay metadata is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    pub fn opaque(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.opaque",
            XattrNs::User => c"user.overlay.opaque",
        }
    }

    /// Our own record of the inode number a copied-up file had. It lives
    /// under the overlay prefix so that kernel overlayfs hides it too when
    /// it mounts the same layers (and engines that tar an upper layer skip
    /// it with the other overlay xattrs).
    pub fn origin(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.layerfs.origin",
            XattrNs::User => c"user.overlay.layerfs.origin",
        }
    }

    /// Where a moved directory's lower layers are (`redirect_dir`): an
    /// absolute path from the layer roots, or a name in the parent's lower
    /// directories.
    pub fn redirect(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.redirect",
            XattrNs::User => c"user.overlay.redirect",
        }
    }

    /// On an indexed copy of a lower hard-linked file: how many names the
    /// lower file had (what `stat` keeps reporting as the link count).
    pub fn nlink(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.layerfs.nlink",
            XattrNs::User => c"user.overlay.layerfs.nlink",
        }
    }

    /// The kernel's mark on an upper file that holds metadata only: its data
    /// is still the lower file's (metadata-only copy-up, `metacopy=on`).
    pub fn metacopy(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.metacopy",
            XattrNs::User => c"user.overlay.metacopy",
        }
    }

    /// The kernel's mark on an upper directory holding entries whose inode
    /// numbers come from elsewhere (copied up or moved in), so `readdir`
    /// must look them up to report `d_ino`.
    pub fn impure(self) -> &'static CStr {
        match self {
            XattrNs::Trusted => c"trusted.overlay.impure",
            XattrNs::User => c"user.overlay.impure",
        }
    }
}

const OPAQUE_ATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];
const WHITEOUT_ATTRS: [&CStr; 2] = [c"trusted.overlay.whiteout", c"user.overlay.whiteout"];
const XWHITEOUTS_ATTRS: [&CStr; 2] = [c"trusted.overlay.xwhiteouts", c"user.overlay.xwhiteouts"];
const IMPURE_ATTRS: [&CStr; 2] = [c"trusted.overlay.impure", c"user.overlay.impure"];
/// Where [`XattrNs::redirect`] is read from, in either namespace.
pub const REDIRECT_ATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];
/// Where [`XattrNs::nlink`] is read from, in either namespace.
pub const NLINK_ATTRS: [&CStr; 2] = [
    c"trusted.overlay.layerfs.nlink",
    c"user.overlay.layerfs.nlink",
];
/// Where [`XattrNs::metacopy`] is read from, in either namespace.
pub const METACOPY_ATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];
/// Where [`XattrNs::origin`] is read from, in either namespace.
pub const ORIGIN_ATTRS: [&CStr; 2] = [
    c"trusted.overlay.layerfs.origin",
    c"user.overlay.layerfs.origin",
];

/// xattr names that belong to the union and are never shown to clients nor
/// settable by them.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 5] = [
        b"trusted.overlay.",
        b"user.overlay.",
        b"user.fuseoverlayfs.",
        b"trusted.layerfs.",
        b"user.layerfs.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Names that are whiteout markers rather than entries.
pub fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// For `.wh.<x>` returns `<x>`; `None` for other names and for the opaque
/// marker.
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_MARKER.to_bytes() {
        return None;
    }
    name.strip_prefix(WH_PREFIX).filter(|t| !t.is_empty())
}

/// `.wh.<name>`.
pub fn whiteout_name(name: &CStr) -> CString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.to_bytes());
    // A CStr has no interior NUL, so neither has the result.
    CString::new(v).unwrap_or_default()
}

/// A char device 0/0.
pub fn is_whiteout_dev(st: &Stat) -> bool {
    st.mode() & libc::S_IFMT == libc::S_IFCHR && st.rdev() == 0
}

/// What a directory's own xattrs say about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirMarks {
    /// Hides everything below it in lower layers.
    pub opaque: bool,
    /// May contain xattr whiteouts (`opaque=x`, or the `xwhiteouts` xattr).
    pub xwhiteouts: bool,
    /// Holds entries with borrowed inode numbers (`impure`).
    pub impure: bool,
    /// Its lower layers are elsewhere (`redirect`): the raw xattr value.
    pub redirect: Option<Vec<u8>>,
}

/// Reads the marks of directory `name` in `parent` (or of `parent` itself
/// when `name` is empty): its xattrs, and the `.wh..wh..opq` marker inside.
pub fn dir_marks(parent: &Dir, name: &CStr) -> SysResult<DirMarks> {
    let mut marks = DirMarks::default();
    let list = match parent.list_xattr(name) {
        Ok(list) => list,
        Err(Errno::ENOTSUP) => Vec::new(),
        Err(e) => return Err(e),
    };
    for attr in list.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        if OPAQUE_ATTRS.iter().any(|o| o.to_bytes() == attr) {
            let attr = CString::new(attr).map_err(|_| Errno::EINVAL)?;
            match parent.get_xattr(name, &attr)?.as_deref() {
                Some(b"y") => marks.opaque = true,
                Some(b"x") => marks.xwhiteouts = true,
                _ => {}
            }
        } else if XWHITEOUTS_ATTRS.iter().any(|o| o.to_bytes() == attr) {
            marks.xwhiteouts = true;
        } else if IMPURE_ATTRS.iter().any(|o| o.to_bytes() == attr) {
            marks.impure = true;
        } else if REDIRECT_ATTRS.iter().any(|o| o.to_bytes() == attr) {
            let attr = CString::new(attr).map_err(|_| Errno::EINVAL)?;
            marks.redirect = parent.get_xattr(name, &attr)?.filter(|v| !v.is_empty());
        }
    }
    if !marks.opaque {
        let marker = if name.is_empty() {
            parent.stat(OPAQUE_MARKER)?
        } else {
            parent.stat_child_of(name, OPAQUE_MARKER)?
        };
        marks.opaque = marker.is_some();
    }
    Ok(marks)
}

/// The value of the first of `attrs` that entry `name` of `parent` carries.
/// Filesystems without xattrs, and entries that cannot carry them (user.*
/// on a symlink), simply have none.
pub fn first_xattr(parent: &Dir, name: &CStr, attrs: &[&CStr]) -> SysResult<Option<Vec<u8>>> {
    for attr in attrs {
        match parent.get_xattr(name, attr) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) | Err(Errno::ENOTSUP | Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether entry `name` (already stat'ed as `st`) of `parent` is a whiteout.
/// `xwhiteouts` is the parent's mark that allows xattr whiteouts.
pub fn is_whiteout(parent: &Dir, name: &CStr, st: &Stat, xwhiteouts: bool) -> SysResult<bool> {
    if is_whiteout_dev(st) {
        return Ok(true);
    }
    if xwhiteouts && st.mode() & libc::S_IFMT == libc::S_IFREG && st.size() == 0 {
        return Ok(first_xattr(parent, name, &WHITEOUT_ATTRS)?.is_some());
    }
    Ok(false)
}

/// How a whiteout was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    CharDev,
    WhFile,
}

/// Writes a whiteout for `name` in `dir`: a char device 0/0, or an empty
/// `.wh.<name>` file where mknod is not permitted (some user namespaces).
pub fn create_whiteout(dir: &Dir, name: &CStr) -> SysResult<WhiteoutForm> {
    match dir.mknod(name, libc::S_IFCHR, 0) {
        Ok(()) => Ok(WhiteoutForm::CharDev),
        Err(Errno::EPERM) => create_wh_file(dir, name).map(|()| WhiteoutForm::WhFile),
        Err(e) => Err(e),
    }
}

/// Writes the OCI form of a whiteout, an empty `.wh.<name>` file.
pub fn create_wh_file(dir: &Dir, name: &CStr) -> SysResult<()> {
    match dir.create(&whiteout_name(name), libc::O_WRONLY, 0) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether upper file `name` of `parent` holds metadata only.
pub fn is_metacopy(parent: &Dir, name: &CStr) -> SysResult<bool> {
    Ok(first_xattr(parent, name, &METACOPY_ATTRS)?.is_some())
}

/// The redirect xattr of entry `name` of `parent`, if any.
pub fn redirect_of(parent: &Dir, name: &CStr) -> SysResult<Option<Vec<u8>>> {
    Ok(first_xattr(parent, name, &REDIRECT_ATTRS)?.filter(|v| !v.is_empty()))
}

/// Marks directory `name` of `parent` opaque.
pub fn set_opaque(parent: &Dir, name: &CStr, ns: XattrNs) -> SysResult<()> {
    parent.set_xattr(name, ns.opaque(), b"y", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(whiteout_target(b".wh."), None);
        assert_eq!(whiteout_target(b"foo"), None);
        assert_eq!(whiteout_name(c"a b").as_bytes(), b".wh.a b");
        assert!(is_whiteout_name(b".wh..wh..opq"));
        assert!(!is_whiteout_name(b"x.wh.y"));
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(is_internal_xattr(b"user.fuseoverlayfs.opaque"));
        assert!(is_internal_xattr(b"trusted.layerfs.origin"));
        assert!(is_internal_xattr(XattrNs::User.origin().to_bytes()));
        assert!(is_internal_xattr(XattrNs::Trusted.impure().to_bytes()));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(!is_internal_xattr(b"security.capability"));
        assert!(!is_internal_xattr(b"system.posix_acl_access"));
    }
}
