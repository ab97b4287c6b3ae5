//! `unionctl index build|verify|rebuild|stats LAYER…` and `unionctl index gc`

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
    /// Drop the indexes of layers that are gone (or replaced) and of the
    /// stacks that merged them.
    Gc(GcArgs),
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// The index database (default: /var/lib/layerfs/index, or the XDG
    /// state directory when not root).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Report what would be dropped; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
        IndexCmd::Gc(a) => return gc(a),
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

fn gc(args: GcArgs) -> Result<i32, String> {
    let dir = args.index_dir.unwrap_or_else(index::default_dir);
    if !dir.join("CURRENT").exists() {
        return Err(format!("{}: no index database there", dir.display()));
    }
    // A dry run changes nothing, and waits for no builder.
    let db = if args.dry_run {
        Index::open_read_only(&dir)
    } else {
        Index::open_for_write(&dir, std::time::Duration::from_secs(600))
    }
    .map_err(|e| e.to_string())?;
    let r = db.gc(args.dry_run).map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        return Ok(0);
    }
    let verb = if args.dry_run {
        "would drop"
    } else {
        "dropped"
    };
    for d in &r.layers_dropped {
        let path = d
            .path
            .as_ref()
            .map_or("?".into(), |p| p.display().to_string());
        println!("{verb} layer {}  {path}  ({})", d.id, d.why);
    }
    println!(
        "layers: {} kept, {} kept unjudged, {} {verb}; stacks: {} kept, {} kept unjudged, {} {verb}",
        r.layers_kept,
        r.layers_unknown,
        r.layers_dropped.len(),
        r.stacks_kept,
        r.stacks_unknown,
        r.stacks_dropped
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "tables: {:.1} MiB before, {:.1} MiB after",
        mib(r.bytes_before),
        mib(r.bytes_after)
    );
    Ok(0)
}
