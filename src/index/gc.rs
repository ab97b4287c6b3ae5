//! Dropping the indexes of layers that are gone, and of the stacks that
//! merged them: layers come and go on a node, and their records would
//! otherwise stay in the database for good.
//!
//! A layer's index is dropped when its recorded path no longer opens, or
//! opens as another layer (a different identity); an incomplete index (a
//! build that was killed) is dropped too. A stack's index is dropped when
//! one of its layers has no index left. Anything that cannot be judged (an
//! index written before paths were recorded, a path that cannot be read
//! for another reason) is kept.
//!
//! Runs with the builders' lock held, so no build is under way. A daemon
//! still serving a dropped stack reads the tables it already had; a daemon
//! whose layers are gone has nothing left to serve anyway.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::record::{self, LAYER, STACK};
use super::{layer_id, Index, Result};
use crate::layer::Layer;

/// What a collection found and did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Layer indexes whose layer is still where it was.
    pub layers_kept: usize,
    /// Layer indexes that cannot be judged, kept.
    pub layers_unknown: usize,
    /// Layer indexes dropped, with the path recorded for them (if any).
    pub layers_dropped: Vec<Dropped>,
    pub stacks_kept: usize,
    pub stacks_unknown: usize,
    pub stacks_dropped: usize,
    /// Bytes of table files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dropped {
    pub id: String,
    pub path: Option<PathBuf>,
    pub why: String,
}

enum Verdict {
    Keep,
    Unknown,
    Drop(String),
}

impl Index {
    /// Drops the indexes of layers that are gone and of stacks on them.
    /// With `dry_run`, only reports what it would drop.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport {
            bytes_before: self.table_bytes()?,
            ..GcReport::default()
        };
        let mut live = std::collections::HashSet::new();
        for id in self.ids(LAYER)? {
            let path = self
                .get(&record::path_key(id))?
                .map(|p| PathBuf::from(OsString::from_vec(p)));
            match self.judge_layer(id, path.as_ref())? {
                Verdict::Keep => {
                    live.insert(id);
                    report.layers_kept += 1;
                }
                Verdict::Unknown => {
                    live.insert(id);
                    report.layers_unknown += 1;
                }
                Verdict::Drop(why) => {
                    tracing::info!(id = %format!("{id:016x}"), ?path, %why, "dropping a layer index");
                    if !dry_run {
                        self.drop_index(LAYER, id)?;
                    }
                    report.layers_dropped.push(Dropped {
                        id: format!("{id:016x}"),
                        path,
                        why,
                    });
                }
            }
        }
        for id in self.ids(STACK)? {
            let complete = self.stack_ready(id)?;
            let layers = self
                .get(&record::layers_key(id))?
                .and_then(|v| record::decode_ids(&v));
            let verdict = match layers {
                _ if !complete => Verdict::Drop("incomplete".into()),
                None => Verdict::Unknown,
                Some(ids) if ids.iter().all(|l| live.contains(l)) => Verdict::Keep,
                Some(_) => Verdict::Drop("a layer's index was dropped".into()),
            };
            match verdict {
                Verdict::Keep => report.stacks_kept += 1,
                Verdict::Unknown => report.stacks_unknown += 1,
                Verdict::Drop(why) => {
                    tracing::info!(id = %format!("{id:016x}"), %why, "dropping a stack index");
                    if !dry_run {
                        self.drop_index(STACK, id)?;
                    }
                    report.stacks_dropped += 1;
                }
            }
        }
        report.bytes_after = self.table_bytes()?;
        Ok(report)
    }

    fn judge_layer(&self, id: u64, path: Option<&PathBuf>) -> Result<Verdict> {
        if self.layer_ready(id)?.is_none() {
            return Ok(Verdict::Drop("incomplete".into()));
        }
        let Some(path) = path else {
            return Ok(Verdict::Unknown);
        };
        Ok(match Layer::open(path) {
            Ok(layer) => match layer_id(&layer) {
                Ok(now) if now == id => Verdict::Keep,
                Ok(_) => Verdict::Drop("the layer there is another one now".into()),
                Err(_) => Verdict::Unknown,
            },
            Err(e) if gone(&e) => Verdict::Drop(format!("{}: {e}", path.display())),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot judge a layer index; keeping it");
                Verdict::Unknown
            }
        })
    }

    /// Deletes every record of one index and compacts its range, which
    /// frees its tables.
    fn drop_index(&self, space: u8, id: u64) -> Result<()> {
        self.clear(space, id)?;
        self.settle(space, id)
    }

    /// Every id with records in `space`, found by jumping from one id's
    /// keys to the next: one seek per index, not a walk of its records.
    fn ids(&self, space: u8) -> Result<Vec<u64>> {
        self.read(|db| {
            let mut ids = Vec::new();
            let mut it = db.raw_iterator();
            it.seek([space]);
            while let Some(key) = it.key() {
                let Some(id) = key
                    .strip_prefix(&[space])
                    .and_then(|k| k.get(..8))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                else {
                    break;
                };
                ids.push(id);
                it.seek(record::prefix_end(&record::index_prefix(space, id)));
            }
            it.status().map(|()| ids)
        })
    }

    fn table_bytes(&self) -> Result<u64> {
        self.read(|db| db.property_int_value("rocksdb.total-sst-files-size"))
            .map(|v| v.unwrap_or(0))
    }
}

/// The layer is not there any more (as opposed to unreadable just now).
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{build_layer, build_stack, stack_id};
    use std::path::Path;

    fn layer(dir: &Path, files: usize) -> Layer {
        std::fs::create_dir_all(dir.join("d")).expect("mkdir");
        for i in 0..files {
            std::fs::write(dir.join("d").join(format!("f{i}")), "x").expect("write");
        }
        Layer::open(dir).expect("open layer")
    }

    fn index_layers(ix: &Index, layers: &[&Layer]) -> (Vec<u64>, u64) {
        let ids: Vec<u64> = layers.iter().map(|l| layer_id(l).expect("id")).collect();
        for (l, &id) in layers.iter().zip(&ids) {
            if ix.layer_ready(id).expect("ready").is_none() {
                build_layer(ix, l, id, &mut |_| {}).expect("build layer");
            }
        }
        let stack = stack_id(&ids, ids.len());
        build_stack(ix, stack, &ids, ids.len(), &mut |_| {}).expect("build stack");
        (ids, stack)
    }

    #[test]
    fn drops_the_indexes_of_gone_layers_and_their_stacks_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ix =
            Index::open_for_write(&tmp.path().join("ix"), std::time::Duration::ZERO).expect("open");
        let (a, b, c) = (
            layer(&tmp.path().join("a"), 3000),
            layer(&tmp.path().join("b"), 10),
            layer(&tmp.path().join("c"), 10),
        );
        let (ids, ab) = index_layers(&ix, &[&a, &b]);
        let (ida, idb) = (ids[0], ids[1]);
        let (ids, bc) = index_layers(&ix, &[&b, &c]);
        let idc = ids[1];
        let (_, just_b) = index_layers(&ix, &[&b]);
        // An index written before paths were recorded cannot be judged.
        let old = 0x0123_4567_89ab_cdef;
        ix.begin_build(LAYER, old).expect("begin");
        ix.finish_build(LAYER, old, rocksdb::WriteBatch::default(), 0)
            .expect("finish");
        // A build that was killed.
        let killed = 0x0fed_cba9_8765_4321;
        ix.begin_build(STACK, killed).expect("begin");

        drop((a, c));
        std::fs::remove_dir_all(tmp.path().join("a")).expect("rm a");
        // Another layer where c was.
        std::fs::remove_dir_all(tmp.path().join("c")).expect("rm c");
        layer(&tmp.path().join("c"), 1);

        let dry = ix.gc(true).expect("dry run");
        assert_eq!(dry.layers_dropped.len(), 2, "{dry:?}");
        assert!(
            ix.layer_ready(ida).expect("ready").is_some(),
            "a dry run dropped"
        );

        let r = ix.gc(false).expect("gc");
        let dropped: std::collections::BTreeSet<String> =
            r.layers_dropped.iter().map(|d| d.id.clone()).collect();
        let expected = [format!("{ida:016x}"), format!("{idc:016x}")];
        assert_eq!(dropped, expected.into_iter().collect(), "{r:?}");
        assert_eq!(
            (
                r.layers_kept,
                r.layers_unknown,
                r.stacks_kept,
                r.stacks_dropped
            ),
            (1, 1, 1, 3),
            "{r:?}"
        );
        assert!(
            r.bytes_after < r.bytes_before,
            "no table space freed: {r:?}"
        );
        for (space, id) in [
            (LAYER, ida),
            (LAYER, idc),
            (STACK, ab),
            (STACK, bc),
            (STACK, killed),
        ] {
            assert_eq!(ix.meta(space, id).expect("meta"), None);
            assert_eq!(ix.count(space, id).expect("count"), 0);
            assert!(ix.ids(space).expect("ids").iter().all(|&i| i != id));
        }
        assert!(ix.layer_ready(idb).expect("ready").is_some());
        assert!(ix.layer_ready(old).expect("ready").is_some());
        assert!(ix.stack_ready(just_b).expect("ready"));
        assert_eq!(ix.count(LAYER, idb).expect("count"), 11);

        let again = ix.gc(false).expect("gc again");
        assert!(
            again.layers_dropped.is_empty() && again.stacks_dropped == 0,
            "{again:?}"
        );
    }
}
