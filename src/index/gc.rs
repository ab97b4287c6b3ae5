//! Dropping the indexes of layers that are gone, and of the stacks that
//! merged them: layers come and go on a node, and their records would
//! otherwise stay in the database for good.
//!
//! A layer's index is dropped when its recorded path no longer exists, or
//! holds another directory now. A stack's index is dropped when one of its
//! layers was (now, or by an earlier collection), or when it is incomplete
//! (a killed build: never served). Everything else is kept:
//! a layer changed in place (its identity is its root's inode and times,
//! so a chmod of the root makes new mounts index it afresh, while unions
//! mounted before may still serve the old stack), an index without a
//! recorded place, a path that fails for another reason, a record that
//! cannot be read.
//!
//! Runs with the builders' lock held, so no build is under way. A daemon
//! that serves a stack dropped here fails its reads with EIO instead of
//! showing an empty tree (see `Index::reopen`); it only happens when the
//! daemon's layers are gone from under it.

use std::collections::HashSet;
use std::io;
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
    /// With `dry_run`, only reports what it would drop (and works on an
    /// index opened read-only).
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport {
            bytes_before: self.table_bytes()?,
            ..GcReport::default()
        };
        let layers = self.ids(LAYER)?;
        let mut gone = HashSet::new();
        for &id in &layers {
            let place = self
                .get(&record::path_key(id))?
                .and_then(|v| record::Place::decode(&v));
            match self.judge_layer(id, place.as_ref()) {
                Verdict::Keep => report.layers_kept += 1,
                Verdict::Unknown => report.layers_unknown += 1,
                Verdict::Drop(why) => {
                    let path = place.map(|p| p.path_buf());
                    tracing::info!(id = %format!("{id:016x}"), ?path, %why, "dropping a layer index");
                    if !dry_run {
                        self.drop_index(LAYER, id)?;
                    }
                    gone.insert(id);
                    report.layers_dropped.push(Dropped {
                        id: format!("{id:016x}"),
                        path,
                        why,
                    });
                }
            }
        }
        let indexed: HashSet<u64> = layers.into_iter().collect();
        for id in self.ids(STACK)? {
            match self.judge_stack(id, &indexed, &gone) {
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

    /// Complete or not (a killed build, which the next mount of the layer
    /// redoes), a layer's index goes with its layer, and only then.
    fn judge_layer(&self, id: u64, place: Option<&record::Place>) -> Verdict {
        let Some(place) = place else {
            return Verdict::Unknown;
        };
        let path = place.path_buf();
        let layer = match Layer::open(&path) {
            Ok(layer) => layer,
            Err(e) if gone(&e) => return Verdict::Drop(format!("{}: {e}", path.display())),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot judge a layer index; keeping it");
                return Verdict::Unknown;
            }
        };
        match layer.root().stat_self() {
            Ok(st) if (st.dev(), st.ino()) != (place.dev, place.ino) => Verdict::Drop(format!(
                "{}: another directory is there now",
                path.display()
            )),
            Ok(_) if layer_id(&layer).is_ok_and(|now| now == id) => Verdict::Keep,
            // The same directory, changed in place: unions mounted before
            // may still use stacks on it.
            _ => Verdict::Unknown,
        }
    }

    fn judge_stack(&self, id: u64, indexed: &HashSet<u64>, gone: &HashSet<u64>) -> Verdict {
        match self.stack_ready(id) {
            Ok(true) => {}
            Ok(false) => return Verdict::Drop("incomplete".into()),
            Err(e) => {
                tracing::warn!(id = %format!("{id:016x}"), error = %e, "cannot judge a stack index; keeping it");
                return Verdict::Unknown;
            }
        }
        let layers = match self.get(&record::layers_key(id)) {
            Ok(Some(v)) => record::decode_ids(&v),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(id = %format!("{id:016x}"), error = %e, "cannot judge a stack index; keeping it");
                None
            }
        };
        match layers {
            None => Verdict::Unknown,
            Some(ids) if ids.iter().any(|l| gone.contains(l) || !indexed.contains(l)) => {
                Verdict::Drop("a layer of it is gone".into())
            }
            Some(_) => Verdict::Keep,
        }
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
    use std::os::unix::fs::PermissionsExt;
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
        // An index written before places were recorded cannot be judged,
        // nor a layer's build killed before it recorded one.
        let old = 0x0123_4567_89ab_cdef;
        ix.begin_build(LAYER, old).expect("begin");
        ix.finish_build(LAYER, old, rocksdb::WriteBatch::default(), 0)
            .expect("finish");
        ix.begin_build(LAYER, old + 1).expect("begin");
        // A stack's build that was killed: never served, dropped.
        let killed = 0x0fed_cba9_8765_4321;
        ix.begin_build(STACK, killed).expect("begin");
        // A layer changed in place (a chmod of its root): new mounts index
        // it afresh, but unions mounted before may still serve the old
        // stack, which is kept.
        let d = layer(&tmp.path().join("d"), 10);
        let (ids, just_d) = index_layers(&ix, &[&d]);
        std::fs::set_permissions(tmp.path().join("d"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        assert_ne!(layer_id(&d).expect("id"), ids[0]);

        drop((a, c));
        std::fs::remove_dir_all(tmp.path().join("a")).expect("rm a");
        // Another directory where c was (the old one kept aside, so that
        // the new one cannot reuse its inode).
        std::fs::rename(tmp.path().join("c"), tmp.path().join("c.old")).expect("mv c");
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
            (1, 3, 2, 3),
            "{r:?}"
        );
        assert!(ix.stack_ready(just_d).expect("ready"));
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

    /// A daemon whose stack was dropped under it (its layers went) fails
    /// the reads that need a deleted table instead of showing an empty
    /// tree; a daemon whose stack is kept carries on.
    #[test]
    fn a_reader_of_a_dropped_stack_refuses_the_database_without_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ix");
        let ix = Index::open_for_write(&dir, std::time::Duration::ZERO).expect("open");
        let (a, b) = (
            layer(&tmp.path().join("a"), 50),
            layer(&tmp.path().join("b"), 50),
        );
        let (_, gone) = index_layers(&ix, &[&a]);
        let (_, kept) = index_layers(&ix, &[&b]);
        let gone_reader = Index::open_read_only(&dir).expect("reader").serving(gone);
        let kept_reader = Index::open_read_only(&dir).expect("reader").serving(kept);
        drop(a);
        std::fs::remove_dir_all(tmp.path().join("a")).expect("rm a");
        let r = ix.gc(false).expect("gc");
        assert_eq!((r.layers_dropped.len(), r.stacks_dropped), (1, 1), "{r:?}");

        // What a read does when a table it needs went (see Index::read).
        let refused = gone_reader.reopen(&gone_reader.current());
        assert!(refused.is_err(), "reopened without its stack");
        assert_eq!(gone_reader.reopens(), 0);
        kept_reader
            .reopen(&kept_reader.current())
            .expect("reopen with the stack there");
        assert_eq!(kept_reader.reopens(), 1);
        assert!(kept_reader
            .lookup(kept, b"d", b"f1")
            .expect("lookup")
            .is_some());
    }
}
