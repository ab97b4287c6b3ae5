//! Where an image is imported from: a directory (an OCI layout, or an
//! unpacked docker-archive) or a tar of one (an OCI archive or a
//! docker-archive), read in place: members of a tar are found once by
//! offset and then read straight from the file, never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::{io_err, Result, StoreError};

/// Largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub(crate) enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link, already resolved to an archive name.
    Link(String),
}

#[derive(Debug)]
pub(crate) enum Source {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// `name` as a clean relative path inside the image, or an error for
/// anything that would leave it.
pub fn clean_name(name: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                StoreError::Invalid(format!("member name {name:?} is not UTF-8"))
            })?),
            Component::ParentDir if !parts.is_empty() => {
                parts.pop();
            }
            _ => {
                return Err(StoreError::Invalid(format!(
                    "member name {name:?} points outside the image"
                )))
            }
        }
    }
    if parts.is_empty() {
        return Err(StoreError::Invalid(format!(
            "member name {name:?} is empty"
        )));
    }
    Ok(parts.join("/"))
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(|e| io_err(path, e))?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(io_err(
                path,
                "is a compressed archive; decompress it first (gunzip/unzstd) and import the tar",
            ));
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| io_err(path, e))?;
        let members =
            index_tar(file).map_err(|e| io_err(path, format!("not a readable tar: {e}")))?;
        if members.is_empty() {
            return Err(io_err(path, "is an empty archive"));
        }
        Ok(Source::Archive {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Archive { path, .. } => path.display().to_string(),
        }
    }

    /// The source's file or directory name without archive extensions:
    /// `multi` for `/x/multi.oci.tar`.
    pub fn stem(&self) -> String {
        let path = match self {
            Source::Dir(p) => p,
            Source::Archive { path, .. } => path,
        };
        let mut name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".to_string());
        for ext in [".tar", ".oci", ".docker"] {
            if let Some(s) = name.strip_suffix(ext) {
                name = s.to_string();
            }
        }
        name.to_ascii_lowercase()
    }

    pub fn has(&self, name: &str) -> bool {
        let Ok(name) = clean_name(name) else {
            return false;
        };
        match self {
            Source::Dir(root) => root.join(&name).is_file(),
            Source::Archive { members, .. } => resolve(members, &name).is_ok(),
        }
    }

    /// Opens member `name`; returns it and its size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let clean = clean_name(name)?;
        match self {
            Source::Dir(root) => {
                let p = root.join(&clean);
                let f = File::open(&p).map_err(|e| io_err(&p, e))?;
                let size = f.metadata().map_err(|e| io_err(&p, e))?.len();
                Ok((Box::new(f), size))
            }
            Source::Archive { path, members } => {
                let (offset, size) = resolve(members, &clean).map_err(|e| {
                    StoreError::Invalid(format!("{}: member {name:?}: {e}", path.display()))
                })?;
                let mut f = File::open(path).map_err(|e| io_err(path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| io_err(path, e))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Reads a small member (JSON) whole.
    pub fn read_member(&self, name: &str) -> Result<Vec<u8>> {
        let (r, size) = self.open_member(name)?;
        if size > MAX_JSON {
            return Err(StoreError::Invalid(format!(
                "{}: {name} is {size} bytes; documents over {MAX_JSON} are refused",
                self.describe()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::Invalid(format!("{}: {name}: {e}", self.describe())))?;
        Ok(buf)
    }
}

fn resolve(
    members: &HashMap<String, Member>,
    name: &str,
) -> std::result::Result<(u64, u64), String> {
    let mut cur = name.to_string();
    for _ in 0..16 {
        match members.get(&cur) {
            None => return Err("not in the archive".into()),
            Some(Member::File { offset, size }) => return Ok((*offset, *size)),
            Some(Member::Link(to)) => cur = to.clone(),
        }
    }
    Err("too many levels of links".into())
}

fn index_tar(file: File) -> io::Result<HashMap<String, Member>> {
    let mut ar = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in ar.entries()? {
        let entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Ok(name) = clean_name(&raw) else {
            // Never read: members are looked up by the names the image's
            // own documents give, which are cleaned the same way.
            continue;
        };
        let kind = entry.header().entry_type();
        let member = if kind.is_file() {
            Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name()? else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            // Symlinks are relative to their directory; hard links to the
            // archive root.
            let joined = if kind.is_symlink() {
                match name.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target,
                }
            } else {
                target
            };
            match clean_name(&joined) {
                Ok(t) => Member::Link(t),
                Err(_) => continue,
            }
        } else {
            continue;
        };
        // Later members replace earlier ones, as tar extraction would.
        members.insert(name, member);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(clean_name("./blobs/sha256/ab").unwrap(), "blobs/sha256/ab");
        assert_eq!(clean_name("a/../b").unwrap(), "b");
        assert!(clean_name("../x").is_err());
        assert!(clean_name("/etc/passwd").is_err());
        assert!(clean_name(".").is_err());
    }
}
