//! Ownership and permissions kept in an xattr instead of the inode
//! (`xattr_permissions=1|2`): where the daemon cannot chown (rootless, ids
//! outside its user namespace), containers/storage and fuse-overlayfs
//! record `uid:gid:mode[:type]` in `user.containers.override_stat` (2) or
//! `user.fuseoverlayfs.override_stat` (1), and the mount shows those.

use std::ffi::CStr;

use super::Result;
use crate::layer::whiteout::first_xattr;
use crate::layer::Dir;

pub const CONTAINERS: &CStr = c"user.containers.override_stat";
pub const FUSE_OVERLAYFS: &CStr = c"user.fuseoverlayfs.override_stat";

/// Owner and permission bits recorded for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`07777`).
    pub perm: u32,
}

impl Override {
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?;
        let mut f = s.trim_end_matches('\0').split(':');
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let perm = u32::from_str_radix(f.next()?, 8).ok()? & 0o7777;
        Some(Override { uid, gid, perm })
    }

    /// The form containers/storage writes (the type field is optional and
    /// only informative: the real object keeps its type).
    pub fn format(&self) -> String {
        format!("{}:{}:0{:o}", self.uid, self.gid, self.perm)
    }
}

/// The recorded override of `name` in `dir` (of `dir` itself when `name`
/// is empty), from either attribute name.
pub fn read(dir: &Dir, name: &CStr) -> Result<Option<Override>> {
    Ok(first_xattr(dir, name, &[CONTAINERS, FUSE_OVERLAYFS])?.and_then(|v| Override::parse(&v)))
}

pub fn write(dir: &Dir, name: &CStr, attr: &CStr, o: &Override) -> Result<()> {
    dir.set_xattr(name, attr, o.format().as_bytes(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_engines_write() {
        let o = Override::parse(b"1000:1000:0755").unwrap();
        assert_eq!((o.uid, o.gid, o.perm), (1000, 1000, 0o755));
        let o = Override::parse(b"0:5:4755:file").unwrap();
        assert_eq!(o.perm, 0o4755);
        assert_eq!(Override::parse(b"0:0:100644").unwrap().perm, 0o644);
        assert!(Override::parse(b"x:0:644").is_none());
        assert!(Override::parse(b"0:0").is_none());
        assert_eq!(o.format(), "0:5:04755");
    }
}
