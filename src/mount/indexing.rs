//! Getting the lower stack's metadata index ready before a mount: each
//! layer indexed once (shared by every stack and mount that uses it), then
//! the stack's merged index. Runs in the command before it forks, so its
//! progress shows on the terminal and RocksDB's threads never cross a fork.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::options::IndexMode;
use super::{MountError, Prepared};
use crate::index::{self, Index};
use crate::layer::whiteout;

/// A ready merged index for a mount.
#[derive(Debug, Clone)]
pub struct IndexPlan {
    pub dir: PathBuf,
    pub stack: u64,
}

/// Prints `what: N entries` over itself on a terminal, nothing otherwise.
pub struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    pub fn show(&mut self, what: &str, n: u64, done: bool) {
        if !self.tty || (!done && self.last.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Instant::now();
        let end = if done { "\n" } else { "" };
        let _ = write!(std::io::stderr(), "\r{what}: {n} entries{end}");
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// How many lower layers the root of this stack merges: down to the first
/// opaque root, none under an opaque upper root.
fn root_layers(p: &Prepared) -> Result<usize, MountError> {
    let opaque = |d: &crate::layer::Dir| {
        whiteout::dir_marks(d, c"")
            .map(|m| m.opaque)
            .map_err(|e| MountError::Mount(format!("reading layer roots: {e}")))
    };
    if let Some((upper, _)) = &p.upper {
        if opaque(upper.root())? {
            return Ok(0);
        }
    }
    for (i, l) in p.lowers.iter().enumerate() {
        if i + 1 < p.lowers.len() && opaque(l.root())? {
            return Ok(i + 1);
        }
    }
    Ok(p.lowers.len())
}

/// The first argument that makes a layerfs binary build an index instead
/// of doing its job (see [`internal_build`]).
pub const BUILD_COMMAND: &str = "__layerfs-build-index";

/// Makes sure the index of `p`'s lower stack is complete, and returns it
/// opened for serving. A missing part is built by a child process: the
/// daemon then never holds RocksDB's write-side threads and memory.
pub fn prepare(p: &Prepared) -> Result<Option<(IndexPlan, Index)>, MountError> {
    let o = &p.spec.options;
    if o.index == IndexMode::Off {
        return Ok(None);
    }
    let dir = o.index_dir.clone().unwrap_or_else(index::default_dir);
    match ready_or_build(p, &dir) {
        Ok(r) => Ok(Some(r)),
        Err(e) if o.index == IndexMode::Auto => {
            tracing::warn!("{e}; reading the layers without an index");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn ready_or_build(p: &Prepared, dir: &Path) -> Result<(IndexPlan, Index), MountError> {
    let err = |e: index::IndexError| MountError::Mount(e.to_string());
    let ids = p
        .lowers
        .iter()
        .map(index::layer_id)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let roots = root_layers(p)?;
    let stack = index::stack_id(&ids, roots);
    if let Ok(ix) = Index::open_read_only(dir) {
        if ix.stack_ready(stack).map_err(err)? {
            return Ok((
                IndexPlan {
                    dir: dir.to_path_buf(),
                    stack,
                },
                ix.serving(stack),
            ));
        }
    }
    let exe = std::env::current_exe()
        .map_err(|e| MountError::Mount(format!("cannot find the indexer: {e}")))?;
    let status = std::process::Command::new(exe)
        .arg(BUILD_COMMAND)
        .arg(dir)
        .arg(roots.to_string())
        .args(p.lowers.iter().map(|l| l.path()))
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| MountError::Mount(format!("cannot run the indexer: {e}")))?;
    if !status.success() {
        return Err(MountError::Mount(format!(
            "building the index in {} failed ({status})",
            dir.display()
        )));
    }
    let ix = Index::open_read_only(dir).map_err(err)?;
    if !ix.stack_ready(stack).map_err(err)? {
        return Err(MountError::Mount(format!(
            "the index in {} is still incomplete after building it",
            dir.display()
        )));
    }
    Ok((
        IndexPlan {
            dir: dir.to_path_buf(),
            stack,
        },
        ix.serving(stack),
    ))
}

/// The indexer process: `BUILD_COMMAND DIR ROOT_LAYERS LAYER…` builds what
/// is missing and exits. Returns `None` when not invoked as the indexer.
pub fn internal_build(args: &[String]) -> Option<i32> {
    if args.get(1).map(String::as_str) != Some(BUILD_COMMAND) {
        return None;
    }
    let run = || -> Result<(), String> {
        let dir = PathBuf::from(args.get(2).ok_or("no index dir")?);
        let roots: usize = args
            .get(3)
            .and_then(|r| r.parse().ok())
            .ok_or("no root layer count")?;
        let layers = args[4..]
            .iter()
            .map(|p| crate::layer::Layer::open(Path::new(p)).map_err(|e| format!("layer {p}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        build(&layers, roots, &dir)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    Some(match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs indexer: {e}");
            1
        }
    })
}

fn build(layers: &[crate::layer::Layer], roots: usize, dir: &Path) -> Result<u64, MountError> {
    let err = |e: index::IndexError| MountError::Mount(e.to_string());
    let index = Index::open_for_write(dir, Duration::from_secs(600)).map_err(err)?;
    let mut progress = Progress::new();
    let mut ids = Vec::with_capacity(layers.len());
    for layer in layers {
        let id = index::layer_id(layer).map_err(err)?;
        if index.layer_ready(id).map_err(err)?.is_none() {
            let what = format!("indexing {}", layer.path().display());
            index::build_layer(&index, layer, id, &mut |n| progress.show(&what, n, false))
                .map(|n| progress.show(&what, n, true))
                .map_err(err)?;
        }
        ids.push(id);
    }
    let stack = index::stack_id(&ids, roots);
    if !index.stack_ready(stack).map_err(err)? {
        let what = format!("merging {} layers", ids.len());
        index::build_stack(&index, stack, &ids, roots, &mut |n| {
            progress.show(&what, n, false)
        })
        .map(|n| progress.show(&what, n, true))
        .map_err(err)?;
    }
    Ok(stack)
}
