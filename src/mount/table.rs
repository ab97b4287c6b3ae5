//! The kernel's mount table as a process sees it (`/proc/PID/mountinfo`),
//! with mountinfo's octal escapes (`\040` for a space) undone, so callers
//! compare real paths rather than each escaping some characters.

use std::path::{Path, PathBuf};

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: PathBuf,
    pub source: String,
    /// `fuse.layerfs` for a layerfs union (the kernel's name for a
    /// `fuse3.layerfs` mount).
    pub fstype: String,
}

/// The mounts this process sees.
pub fn mounts() -> Vec<MountEntry> {
    of_process("self")
}

/// The mounts process `pid` (or `self`) sees, in its mount namespace;
/// empty when it cannot be read.
pub fn of_process(pid: &str) -> Vec<MountEntry> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Whether `p` is the root of a mount this process sees.
pub fn is_mounted(p: &Path) -> bool {
    mounts().iter().any(|m| m.target == p)
}

fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                target: PathBuf::from(unescape(target)),
                source: unescape(source),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape(r"tail\04"), r"tail\04");
    }

    #[test]
    fn lines_parse_into_target_source_and_type() {
        let t = "42 27 0:39 / /var/a\\040b ro,relatime - fuse.layerfs /s/8 ro,user_id=0\n\
                 22 1 8:1 / / rw shared:1 - ext4 /dev/vda rw\n";
        let m = parse(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, Path::new("/var/a b"));
        assert_eq!(
            (m[0].source.as_str(), m[0].fstype.as_str()),
            ("/s/8", "fuse.layerfs")
        );
        assert_eq!(
            (m[1].target.as_path(), m[1].fstype.as_str()),
            (Path::new("/"), "ext4")
        );
    }
}
