//! The merged index of a lower stack, built from its layers' indexes.
//!
//! Directories are merged top to bottom with overlayfs's rules (a whiteout
//! ends a name, a non-directory ends a merge, an opaque directory hides the
//! layers below it), one directory at a time, depth first: memory holds one
//! directory's entries, never the image.

use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use super::record::{self, Entry, Merged, CUT_BELOW, LAYER, OPAQUE, STACK, WHITEOUT};
use super::{Index, IndexError, Result};
use crate::layer::Kind;

/// Builds the merged index `stack` of the layers `layers` (top first),
/// whose root merges the first `root_layers` of them. Every layer must be
/// indexed already.
pub fn build_stack(
    index: &Index,
    stack: u64,
    layers: &[u64],
    root_layers: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    index.begin_build(STACK, stack)?;
    let mut batch = WriteBatch::default();
    let mut n: u64 = 0;
    let root: Vec<u16> = (0..root_layers.min(layers.len()) as u16).collect();
    let mut todo: Vec<(Vec<u8>, Vec<u16>)> = vec![(Vec::new(), root)];
    while let Some((path, dir_layers)) = todo.pop() {
        // name → (layer, record) for every layer merged here, top first.
        let mut names: BTreeMap<Vec<u8>, Vec<(u16, Entry)>> = BTreeMap::new();
        for &l in &dir_layers {
            let id = layers[l as usize];
            let mut bad = false;
            index.scan_dir(LAYER, id, &path, |name, v| match Entry::decode(v) {
                Some(e) => {
                    names.entry(name.to_vec()).or_default().push((l, e));
                    true
                }
                None => {
                    bad = true;
                    false
                }
            })?;
            if bad {
                return Err(IndexError::Corrupt {
                    what: format!("layer {id:016x} {}", String::from_utf8_lossy(&path)),
                });
            }
        }
        let prefix = record::dir_prefix(STACK, stack, &path);
        for (name, found) in names {
            let Some(m) = resolve(&found) else { continue };
            if m.entry.kind == Kind::Dir {
                let mut child = path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                todo.push((child, m.layers.clone()));
            }
            let mut key = prefix.clone();
            key.extend_from_slice(&name);
            batch.put(&key, m.encode());
            n += 1;
            if batch.len() >= 4096 {
                index.write(std::mem::take(&mut batch))?;
                progress(n);
            }
        }
    }
    batch.put(record::layers_key(stack), record::encode_ids(layers));
    index.finish_build(STACK, stack, batch, n)?;
    progress(n);
    Ok(n)
}

/// What one name resolves to, given its records in the merged layers of
/// its directory (top first).
fn resolve(found: &[(u16, Entry)]) -> Option<Merged> {
    let mut out: Option<Merged> = None;
    for (l, e) in found {
        if e.flags & WHITEOUT != 0 {
            break;
        }
        match &mut out {
            None => {
                out = Some(Merged {
                    entry: e.clone(),
                    layers: vec![*l],
                });
                if e.kind != Kind::Dir {
                    break;
                }
            }
            Some(m) => {
                if e.kind != Kind::Dir {
                    break;
                }
                m.layers.push(*l);
            }
        }
        if e.flags & (OPAQUE | CUT_BELOW) != 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Stat;

    fn entry(kind: Kind, flags: u8) -> Entry {
        // SAFETY: plain old data.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = match kind {
            Kind::Dir => libc::S_IFDIR,
            Kind::CharDev => libc::S_IFCHR,
            _ => libc::S_IFREG,
        } | 0o755;
        Entry::from_stat(&Stat(st), flags, Vec::new()).unwrap()
    }

    #[test]
    fn overlay_rules() {
        let d = |f| entry(Kind::Dir, f);
        let f = || entry(Kind::File, 0);
        let wh = || entry(Kind::CharDev, WHITEOUT);
        assert_eq!(
            resolve(&[(0, d(0)), (1, d(0)), (2, d(0))]).unwrap().layers,
            [0, 1, 2]
        );
        assert_eq!(
            resolve(&[(0, d(0)), (1, d(OPAQUE)), (2, d(0))])
                .unwrap()
                .layers,
            [0, 1]
        );
        assert_eq!(
            resolve(&[(0, d(0)), (1, f()), (2, d(0))]).unwrap().layers,
            [0]
        );
        assert_eq!(resolve(&[(1, f()), (2, d(0))]).unwrap().layers, [1]);
        assert!(resolve(&[(0, wh()), (1, f())]).is_none());
        assert_eq!(
            resolve(&[(0, d(0)), (1, wh()), (2, d(0))]).unwrap().layers,
            [0]
        );
        assert_eq!(
            resolve(&[(0, d(CUT_BELOW)), (1, d(0))]).unwrap().layers,
            [0]
        );
    }
}
