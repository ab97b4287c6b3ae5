//! Indexing one layer: a walk of its tree through layer access, written as
//! per-directory records, and checking an index against the tree.

use std::ffi::CStr;

use rocksdb::WriteBatch;

use super::record::{self, Entry, CUT_BELOW, HAS_XATTRS, LAYER, OPAQUE, WHITEOUT};
use super::{Index, IndexError, Result};
use crate::layer::whiteout;
use crate::layer::{Dir, Kind, Layer};

const BATCH: usize = 4096;

fn layer_error(layer: &Layer, e: impl ToString) -> IndexError {
    IndexError::Layer {
        path: layer.path().to_path_buf(),
        reason: e.to_string(),
    }
}

/// The records of one directory of a layer, in name order: its entries,
/// whiteouts (all forms) as entries flagged WHITEOUT, directories flagged
/// OPAQUE where they hide the layers below.
fn read_dir(dir: &Dir) -> nix::Result<Vec<(Vec<u8>, Entry)>> {
    let marks = whiteout::dir_marks(dir, c"")?;
    let mut names: Vec<Vec<u8>> = dir
        .entries()?
        .into_iter()
        .map(|e| e.name.into_bytes())
        .collect();
    names.sort_unstable();
    let wh: std::collections::HashSet<&[u8]> = names
        .iter()
        .filter_map(|n| whiteout::whiteout_target(n))
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in &names {
        if whiteout::is_whiteout_name(name) {
            continue;
        }
        let cname =
            std::ffi::CString::new(name.as_slice()).map_err(|_| nix::errno::Errno::EINVAL)?;
        let Some(st) = dir.stat(&cname)? else {
            continue;
        };
        let mut flags = 0;
        if wh.contains(name.as_slice()) {
            flags |= CUT_BELOW;
        }
        if whiteout::is_whiteout(dir, &cname, &st, marks.xwhiteouts)? {
            flags |= WHITEOUT;
        } else if st.is_dir() && whiteout::dir_marks(dir, &cname)?.opaque {
            flags |= OPAQUE;
        }
        if dir.has_xattrs(&cname)? {
            flags |= HAS_XATTRS;
        }
        let target = if st.kind() == Some(Kind::Symlink) {
            dir.readlink(&cname)?
        } else {
            Vec::new()
        };
        if let Some(e) = Entry::from_stat(&st, flags, target) {
            out.push((name.clone(), e));
        }
    }
    // `.wh.<name>` with nothing of that name: a plain whiteout.
    for t in wh {
        if out.binary_search_by(|(n, _)| n.as_slice().cmp(t)).is_err() {
            // SAFETY: stat64 is plain old data; all-zero is valid.
            let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
            st.st_mode = libc::S_IFCHR;
            if let Some(e) = Entry::from_stat(&crate::layer::Stat(st), WHITEOUT, Vec::new()) {
                out.push((t.to_vec(), e));
            }
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// Walks `layer` depth first, handing each directory's records to `f`.
fn walk(layer: &Layer, mut f: impl FnMut(&[u8], &[(Vec<u8>, Entry)]) -> Result<()>) -> Result<()> {
    let root = layer.open_dir(c".").map_err(|e| layer_error(layer, e))?;
    let mut stack: Vec<(Vec<u8>, Dir)> = vec![(Vec::new(), root)];
    while let Some((path, dir)) = stack.pop() {
        let records = read_dir(&dir)
            .map_err(|e| layer_error(layer, format!("{}: {e}", String::from_utf8_lossy(&path))))?;
        f(&path, &records)?;
        for (name, e) in records.iter().rev() {
            if e.kind == Kind::Dir && e.flags & WHITEOUT == 0 {
                let cname: &CStr =
                    &std::ffi::CString::new(name.as_slice()).map_err(|e| layer_error(layer, e))?;
                let sub = dir.open_subdir(cname).map_err(|e| layer_error(layer, e))?;
                stack.push((join(&path, name), sub));
            }
        }
    }
    Ok(())
}

/// Indexes `layer` as `id`, replacing any earlier index of it. `progress`
/// is called with the number of entries indexed so far.
pub fn build_layer(
    index: &Index,
    layer: &Layer,
    id: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    index.begin_build(LAYER, id)?;
    let mut batch = WriteBatch::default();
    // Where it is, for `gc` to find out later whether it is still there,
    // written first so that a killed build's records can be judged too. A
    // path that cannot be resolved leaves the index kept for good.
    if let (Ok(path), Ok(st)) = (
        std::fs::canonicalize(layer.path()),
        layer.root().stat_self(),
    ) {
        let place = record::Place {
            dev: st.dev(),
            ino: st.ino(),
            path: path.into_os_string().into_encoded_bytes(),
        };
        batch.put(record::path_key(id), place.encode());
        index.write(std::mem::take(&mut batch))?;
    }
    let mut value = Vec::with_capacity(128);
    let mut n: u64 = 0;
    walk(layer, |path, records| {
        let prefix = record::dir_prefix(LAYER, id, path);
        for (name, e) in records {
            let mut key = prefix.clone();
            key.extend_from_slice(name);
            value.clear();
            e.encode(&mut value);
            batch.put(&key, &value);
            n += 1;
            if batch.len() >= BATCH {
                index.write(std::mem::take(&mut batch))?;
                progress(n);
            }
        }
        Ok(())
    })?;
    index.finish_build(LAYER, id, batch, n)?;
    progress(n);
    Ok(n)
}

/// One difference between a layer and its index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    pub path: String,
    pub what: String,
}

/// Compares the index of `layer` (`id`) with a fresh walk of it.
pub fn verify_layer(index: &Index, layer: &Layer, id: u64) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    if index.layer_ready(id)?.is_none() {
        drift.push(Drift {
            path: String::new(),
            what: "no complete index for this layer".into(),
        });
        return Ok(drift);
    }
    walk(layer, |path, records| {
        let mut indexed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        index.scan_dir(LAYER, id, path, |name, v| {
            indexed.push((name.to_vec(), v.to_vec()));
            true
        })?;
        let mut on_disk = records.iter().peekable();
        let mut in_index = indexed.iter().peekable();
        loop {
            let show = |n: &[u8]| String::from_utf8_lossy(&join(path, n)).into_owned();
            match (on_disk.peek(), in_index.peek()) {
                (None, None) => break,
                (Some((n, _)), None) => {
                    drift.push(Drift {
                        path: show(n),
                        what: "not in the index".into(),
                    });
                    on_disk.next();
                }
                (None, Some((n, _))) => {
                    drift.push(Drift {
                        path: show(n),
                        what: "gone from the layer".into(),
                    });
                    in_index.next();
                }
                (Some((dn, de)), Some((inn, iv))) => match dn.as_slice().cmp(inn.as_slice()) {
                    std::cmp::Ordering::Less => {
                        drift.push(Drift {
                            path: show(dn),
                            what: "not in the index".into(),
                        });
                        on_disk.next();
                    }
                    std::cmp::Ordering::Greater => {
                        drift.push(Drift {
                            path: show(inn),
                            what: "gone from the layer".into(),
                        });
                        in_index.next();
                    }
                    std::cmp::Ordering::Equal => {
                        match Entry::decode(iv) {
                            Some(ie) if differs(&ie, de) => drift.push(Drift {
                                path: show(dn),
                                what: "changed since it was indexed".into(),
                            }),
                            Some(_) => {}
                            None => drift.push(Drift {
                                path: show(dn),
                                what: "unreadable record".into(),
                            }),
                        }
                        on_disk.next();
                        in_index.next();
                    }
                },
            }
        }
        Ok(())
    })?;
    Ok(drift)
}

/// What counts as a change (not atime, which reads move).
fn differs(a: &Entry, b: &Entry) -> bool {
    (
        a.kind, a.flags, a.mode, a.uid, a.gid, a.size, a.rdev, a.ino, a.mtime, a.ctime, &a.target,
    ) != (
        b.kind, b.flags, b.mode, b.uid, b.gid, b.size, b.rdev, b.ino, b.mtime, b.ctime, &b.target,
    )
}
