//! The `-o` option language engines use (fuse-overlayfs's, which follows
//! kernel overlayfs's): `lowerdir=A:B,upperdir=U,workdir=W,opt,opt=value`.
//!
//! Every option is either applied, accepted as advisory (it asks for
//! something we do anyway, or only tunes performance), or refused with a
//! message saying so. Nothing is silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use super::MountError;
use crate::union::idmap::{IdMap, IdRange};

/// Mount options after parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub read_only: bool,
    /// Sync copy-ups and honour fsync (`fsync=0` and `volatile` turn it off).
    pub fsync: bool,
    pub acl: bool,
    pub timeout: Option<Duration>,
    pub threads: Option<usize>,
    /// Write overlay xattrs in `user.` (`userxattr`).
    pub userxattr: bool,
    pub static_nlink: bool,
    /// Use FUSE passthrough where possible (`passthrough=0` turns it off).
    pub passthrough: bool,
    /// Kernel writeback cache when passthrough is off (`writeback=0`).
    pub writeback: bool,
    /// Metadata-only copy-up (`metacopy=off` copies data every time).
    pub metacopy: bool,
    /// Directory renames with redirects (`redirect_dir=off`: EXDEV).
    pub redirect_dir: bool,
    /// `uidmapping=`, `gidmapping=`: stored:shown:count ranges.
    pub uid_ranges: Vec<IdRange>,
    pub gid_ranges: Vec<IdRange>,
    /// `squash_to_uid=` / `squash_to_gid=` / `squash_to_root`.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub squash_to_root: bool,
    /// `xattr_permissions=1|2`: owner and mode kept in an override xattr.
    pub xattr_permissions: u8,
    /// The metadata index of the lower layers (`index=on|off|auto`).
    pub index: IndexMode,
    /// Where the index database lives (`index_dir=`).
    pub index_dir: Option<PathBuf>,
    pub allow_other: bool,
    pub allow_root: bool,
    pub suid: bool,
    pub dev: bool,
    pub exec: bool,
    pub noatime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub fsname: Option<String>,
    /// SELinux context, passed to the kernel where SELinux is on.
    pub context: Option<String>,
    /// Advisory options seen, kept for `--verbose`.
    pub advisory: Vec<String>,
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lowers: Vec::new(),
            upper: None,
            work: None,
            read_only: false,
            fsync: true,
            acl: true,
            timeout: None,
            threads: None,
            userxattr: false,
            static_nlink: false,
            passthrough: true,
            writeback: true,
            metacopy: true,
            redirect_dir: true,
            uid_ranges: Vec::new(),
            gid_ranges: Vec::new(),
            squash_uid: None,
            squash_gid: None,
            squash_to_root: false,
            xattr_permissions: 0,
            index: IndexMode::Auto,
            index_dir: None,
            allow_other: true,
            allow_root: false,
            suid: true,
            dev: true,
            exec: true,
            noatime: false,
            sync: false,
            dirsync: false,
            fsname: None,
            context: None,
            advisory: Vec::new(),
            debug: false,
        }
    }
}

/// Whether the lower layers' metadata index is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMode {
    /// Always: failing to build or open it is a mount error.
    On,
    Off,
    /// When it can be built and opened; otherwise layers are read directly.
    Auto,
}

/// Options accepted but without effect, and why.
pub const ADVISORY: &[(&str, &str)] = &[
    (
        "default_permissions",
        "always on: the kernel checks permissions",
    ),
    (
        "max_write",
        "transfer size tuning; layerfs negotiates its own",
    ),
    (
        "max_read",
        "transfer size tuning; layerfs negotiates its own",
    ),
    (
        "max_readahead",
        "transfer size tuning; layerfs negotiates its own",
    ),
    (
        "kernel_cache",
        "cache tuning; layerfs picks its own cache policy",
    ),
    (
        "auto_cache",
        "cache tuning; layerfs picks its own cache policy",
    ),
    ("splice_read", "transfer tuning"),
    ("splice_write", "transfer tuning"),
    ("splice_move", "transfer tuning"),
    ("fast_ino", "inode numbers are always stable"),
    (
        "xino",
        "layers on different filesystems always get distinct inode numbers",
    ),
    ("rw", "the default"),
    ("relatime", "atime handling is the layers' own"),
    ("strictatime", "atime handling is the layers' own"),
    ("async", "the default"),
    ("auto_unmount", "layerfs unmounts itself on SIGTERM/SIGINT"),
    ("threaded", "always multi-threaded; see threads="),
    (
        "nonempty",
        "mounting over a non-empty directory is always allowed",
    ),
    ("noxattrs", "only noxattrs=0 (the default) is supported"),
];

/// Options we know and refuse for now, with the reason.
const REFUSED: &[(&str, &str)] = &[("plugins", "layer plugins are not supported")];

/// Splits a comma-separated option string. Empty items (`a,,b`) are
/// skipped; a comma can be escaped as `\,` or sit inside double quotes
/// (`context="system_u:object_r:container_file_t:s0:c1,c2"`, as podman
/// passes SELinux contexts).
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `lowerdir=` on `:`; `\:` is a literal colon and `\\` a
/// backslash.
pub fn split_lowerdir(s: &str) -> Result<Vec<PathBuf>, MountError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => out.push(PathBuf::from(std::mem::take(&mut cur))),
            _ => cur.push(c),
        }
    }
    out.push(PathBuf::from(cur));
    if out.iter().any(|p| p.as_os_str().is_empty()) {
        return Err(MountError::Option(format!(
            "lowerdir={s}: empty layer path (two colons in a row, or a leading/trailing colon)"
        )));
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn flag(value: Option<&str>, name: &str) -> Result<bool, MountError> {
    match value {
        None => Ok(true),
        Some("1" | "on" | "true" | "yes") => Ok(true),
        Some("0" | "off" | "false" | "no") => Ok(false),
        Some(v) => Err(MountError::Option(format!("{name}={v}: expected 0 or 1"))),
    }
}

impl Options {
    /// Applies one `-o` string (may be given several times).
    pub fn apply(&mut self, s: &str) -> Result<(), MountError> {
        for item in split_options(s) {
            self.apply_one(&item)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, item: &str) -> Result<(), MountError> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, MountError> {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| MountError::Option(format!("{key} needs a value ({key}=...)")))
        }
        match key {
            "lowerdir" => self.lowers = split_lowerdir(need(key, value)?)?,
            "upperdir" => self.upper = Some(PathBuf::from(unescape(need(key, value)?))),
            "workdir" => self.work = Some(PathBuf::from(unescape(need(key, value)?))),
            "ro" => self.read_only = true,
            "fsync" => self.fsync = flag(value, key)?,
            "volatile" => self.fsync = false,
            "noacl" => self.acl = false,
            "acl" => self.acl = true,
            "userxattr" => self.userxattr = true,
            "static_nlink" => self.static_nlink = true,
            "passthrough" => self.passthrough = flag(value, key)?,
            "writeback" => self.writeback = flag(value, key)?,
            "metacopy" => self.metacopy = flag(value, key)?,
            "uidmapping" => {
                self.uid_ranges = IdMap::parse(need(key, value)?)
                    .map_err(|e| MountError::Option(format!("uidmapping={e}")))?
            }
            "gidmapping" => {
                self.gid_ranges = IdMap::parse(need(key, value)?)
                    .map_err(|e| MountError::Option(format!("gidmapping={e}")))?
            }
            "squash_to_root" => self.squash_to_root = true,
            "index" => {
                self.index = match value {
                    None | Some("on") => IndexMode::On,
                    Some("off") => IndexMode::Off,
                    Some("auto") => IndexMode::Auto,
                    Some(v) => {
                        return Err(MountError::Option(format!(
                            "index={v}: expected on, off or auto"
                        )))
                    }
                }
            }
            "index_dir" => self.index_dir = Some(PathBuf::from(unescape(need(key, value)?))),
            "xattr_permissions" => {
                self.xattr_permissions = match need(key, value)? {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    v => {
                        return Err(MountError::Option(format!(
                            "xattr_permissions={v}: expected 0, 1 or 2"
                        )))
                    }
                }
            }
            "squash_to_uid" | "squash_to_gid" => {
                let v = need(key, value)?;
                let id: u32 = v
                    .parse()
                    .map_err(|_| MountError::Option(format!("{key}={v}: not an id")))?;
                if key == "squash_to_uid" {
                    self.squash_uid = Some(id);
                } else {
                    self.squash_gid = Some(id);
                }
            }
            "redirect_dir" => {
                self.redirect_dir = match value {
                    None | Some("on" | "follow") => true,
                    Some("off" | "nofollow") => false,
                    Some(v) => {
                        return Err(MountError::Option(format!(
                            "redirect_dir={v}: expected on, follow, nofollow or off"
                        )))
                    }
                }
            }
            "timeout" => {
                let v = need(key, value)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        MountError::Option(format!("timeout={v}: not a number of seconds"))
                    })?;
                self.timeout = Some(Duration::from_secs_f64(secs.min(1e9)));
            }
            "threads" => {
                let v = need(key, value)?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| MountError::Option(format!("threads={v}: expected 1 to 256")))?;
                self.threads = Some(n);
            }
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "suid" => self.suid = true,
            "nosuid" => self.suid = false,
            "dev" => self.dev = true,
            "nodev" => self.dev = false,
            "exec" => self.exec = true,
            "noexec" => self.exec = false,
            "atime" => self.noatime = false,
            "noatime" => self.noatime = true,
            "sync" => self.sync = true,
            "dirsync" => self.dirsync = true,
            "fsname" => self.fsname = Some(need(key, value)?.to_string()),
            "subtype" => self.advisory.push(item.to_string()),
            "context" | "fscontext" | "defcontext" | "rootcontext" => {
                self.context = Some(format!("{key}={}", need(key, value)?));
            }
            "debug" => self.debug = true,
            "noxattrs" => {
                if flag(value, key)? {
                    return Err(MountError::Option(
                        "noxattrs=1: running without xattrs is not supported; the layers' filesystem must support xattrs".into(),
                    ));
                }
            }
            _ => {
                if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key) {
                    return Err(MountError::Option(format!("{item}: not supported: {why}")));
                }
                if ADVISORY.iter().any(|(k, _)| *k == key) {
                    self.advisory.push(item.to_string());
                } else {
                    return Err(MountError::Option(format!("unknown option '{item}'")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_options_and_skips_empty_ones() {
        assert_eq!(split_options("a,,b,"), vec!["a", "b"]);
        assert_eq!(split_options(",,"), Vec::<String>::new());
        assert_eq!(split_options(r"x=a\,b,c"), vec![r"x=a\,b", "c"]);
        assert_eq!(
            split_options(r#"ro,context="u:r:t:s0:c1,c2",fsync=0"#),
            vec!["ro", r#"context="u:r:t:s0:c1,c2""#, "fsync=0"]
        );
    }

    #[test]
    fn lowerdir_escapes() {
        let l = split_lowerdir(r"/a\:b:/c:/d\\e").unwrap();
        assert_eq!(
            l,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c"),
                PathBuf::from(r"/d\e")
            ]
        );
        assert!(split_lowerdir("/a::/b").is_err());
        assert!(split_lowerdir(":/b").is_err());
    }

    #[test]
    fn engine_option_string() {
        let mut o = Options::default();
        o.apply("lowerdir=/l1:/l2,upperdir=/u,workdir=/w,,fsync=0,timeout=2.5,nodev,context=\"system_u:object_r:container_file_t:s0\"")
            .unwrap();
        assert_eq!(o.lowers.len(), 2);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
        assert!(!o.fsync);
        assert!(!o.dev);
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert!(o.context.is_some());
    }

    #[test]
    fn many_lowers() {
        let s: Vec<String> = (0..500).map(|i| format!("/l{i}")).collect();
        let mut o = Options::default();
        o.apply(&format!("lowerdir={}", s.join(":"))).unwrap();
        assert_eq!(o.lowers.len(), 500);
    }

    #[test]
    fn unknown_and_refused_options_are_errors() {
        let mut o = Options::default();
        let e = o.apply("lowerdir=/a,bogus").unwrap_err().to_string();
        assert!(e.contains("unknown option 'bogus'"), "{e}");
        let e = o.apply("plugins=x").unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
        o.apply("xattr_permissions=2").unwrap();
        assert!(o.apply("xattr_permissions=3").is_err());
        o.apply("uidmapping=:0:100000:65536,gidmapping=0:100000:65536,squash_to_uid=5")
            .unwrap();
        assert_eq!((o.uid_ranges.len(), o.squash_uid), (1, Some(5)));
        assert!(o.apply("uidmapping=1:2").is_err());
        assert!(o.apply("timeout=abc").is_err());
        assert!(o.apply("upperdir=").is_err());
        assert!(o.apply("noxattrs=1").is_err());
        o.apply("noxattrs=0,writeback=1,max_write=131072,default_permissions")
            .unwrap();
        assert_eq!(o.advisory.len(), 2);
        o.apply("writeback=0").unwrap();
        assert!(!o.writeback);
    }
}
