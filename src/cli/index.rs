//! `unionctl index build|verify|rebuild|stats LAYER…`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::index::{self, Index};
use crate::layer::Layer;
use crate::mount::indexing::Progress;

#[derive(Subcommand, Debug)]
pub enum IndexCmd {
    /// Index layers not indexed yet (or whose index is incomplete).
    Build(IndexArgs),
    /// Compare each layer's index with a walk of the layer; exit 1 on drift.
    Verify(IndexArgs),
    /// Index layers again from scratch.
    Rebuild(IndexArgs),
    /// Show what the index holds for each layer.
    Stats(IndexArgs),
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// The index database (default: /var/lib/layerfs/index, or the XDG
    /// state directory when not root).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Layer directories.
    #[arg(required = true, value_name = "LAYER")]
    layers: Vec<PathBuf>,
}

#[derive(serde::Serialize)]
struct LayerReport {
    layer: PathBuf,
    id: String,
    indexed: bool,
    entries: u64,
    built: bool,
    drift: Vec<index::Drift>,
}

/// Runs an index command; returns the exit code.
pub fn run(cmd: IndexCmd) -> Result<i32, String> {
    let (args, verb) = match cmd {
        IndexCmd::Build(a) => (a, "build"),
        IndexCmd::Verify(a) => (a, "verify"),
        IndexCmd::Rebuild(a) => (a, "rebuild"),
        IndexCmd::Stats(a) => (a, "stats"),
    };
    let dir = args.index_dir.clone().unwrap_or_else(index::default_dir);
    let db = if verb == "build" || verb == "rebuild" {
        Index::open_for_write(&dir, std::time::Duration::from_secs(600))
    } else {
        Index::open_read_only(&dir)
    }
    .map_err(|e| e.to_string())?;
    let mut progress = Progress::new();
    let mut reports = Vec::new();
    let mut code = 0;
    for path in &args.layers {
        let layer = Layer::open(path).map_err(|e| format!("layer {}: {e}", path.display()))?;
        let id = index::layer_id(&layer).map_err(|e| e.to_string())?;
        let ready = db.layer_ready(id).map_err(|e| e.to_string())?;
        let mut report = LayerReport {
            layer: path.clone(),
            id: format!("{id:016x}"),
            indexed: ready.is_some(),
            entries: ready.as_ref().map_or(0, |m| m.entries),
            built: false,
            drift: Vec::new(),
        };
        match verb {
            "build" | "rebuild" if verb == "rebuild" || ready.is_none() => {
                let what = format!("indexing {}", path.display());
                let n =
                    index::build_layer(&db, &layer, id, &mut |n| progress.show(&what, n, false))
                        .map_err(|e| e.to_string())?;
                progress.show(&what, n, true);
                report.indexed = true;
                report.entries = n;
                report.built = true;
            }
            "verify" => {
                report.drift = index::verify_layer(&db, &layer, id).map_err(|e| e.to_string())?;
                if !report.drift.is_empty() {
                    code = 1;
                }
            }
            _ => {}
        }
        reports.push(report);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
        );
        return Ok(code);
    }
    for r in &reports {
        let state = match (r.indexed, r.built) {
            (_, true) => "indexed now",
            (true, false) => "indexed",
            (false, false) => "not indexed",
        };
        println!(
            "{}  {}  {state}, {} entries",
            r.id,
            r.layer.display(),
            r.entries
        );
        for d in &r.drift {
            println!(
                "  {}: {}",
                if d.path.is_empty() { "/" } else { &d.path },
                d.what
            );
        }
    }
    Ok(code)
}
