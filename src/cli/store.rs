//! The store's commands: `image import|export|rm`, `images`, `layers`,
//! `create`, `ps`, `rm`, `diff`, `commit`, `export-layer`, `store
//! status|cleanup`, and the store forms of `mount` and `umount`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::Serialize;

use crate::store::driver::Driver;
use crate::store::{self, rfc3339, Progress, Store};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an OCI layout directory, OCI archive or docker-archive.
    Import {
        /// Name for the image (when the source holds one image).
        #[arg(long)]
        name: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        path: PathBuf,
    },
    /// Write an image as an OCI layout directory.
    Export {
        #[arg(long)]
        json: bool,
        image: String,
        dir: PathBuf,
    },
    /// Remove an image and the layers no other image uses.
    Rm {
        #[arg(long)]
        json: bool,
        image: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Where the store is and what it holds.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove layers no image uses, forget mounts that have gone and drop
    /// the index records of removed layers.
    Cleanup {
        #[arg(long)]
        json: bool,
    },
}

/// The store commands that are not a subcommand group.
#[derive(Debug)]
pub enum Cmd {
    Image(ImageCmd),
    Store(StoreCmd),
    Images {
        json: bool,
    },
    Layers {
        json: bool,
    },
    Ps {
        json: bool,
    },
    Create {
        image: String,
        name: String,
        json: bool,
    },
    Rm {
        name: String,
        force: bool,
    },
    Diff {
        name: String,
        json: bool,
    },
    Commit {
        name: String,
        image: String,
        json: bool,
    },
    ExportLayer {
        name: String,
        out: PathBuf,
        json: bool,
    },
}

pub fn open(root: Option<&Path>) -> Result<Store, String> {
    let root = root
        .map(Path::to_path_buf)
        .unwrap_or_else(store::default_root);
    Store::open(&root).map_err(|e| e.to_string())
}

fn print_json<T: Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn first_name(names: &[String]) -> &str {
    names.first().map(String::as_str).unwrap_or("<none>")
}

/// Import progress on a terminal: one line rewritten in place.
struct Meter {
    tty: bool,
    last: Instant,
}

impl Meter {
    fn show(&mut self, p: &Progress) {
        if !self.tty {
            return;
        }
        let line = match p {
            Progress::Unpacking {
                layer,
                layers,
                bytes,
                total,
            } => format!(
                "unpacking layer {layer}/{layers}: {} of {}",
                mib(*bytes),
                mib(*total)
            ),
            Progress::Indexing { layer, entries } => {
                format!("indexing new layer {layer}: {entries} entries")
            }
            Progress::Done => {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
                return;
            }
        };
        if self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        let _ = write!(std::io::stderr(), "\r\x1b[K{line}");
    }
}

/// Runs a store command; returns the exit code.
pub fn run(root: Option<&Path>, cmd: Cmd) -> Result<i32, String> {
    let s = open(root)?;
    let e = |e: store::StoreError| e.to_string();
    match cmd {
        Cmd::Image(ImageCmd::Import { name, json, path }) => {
            let mut meter = Meter {
                tty: !json && std::io::stderr().is_terminal(),
                last: Instant::now() - Duration::from_secs(1),
            };
            let report = s
                .import(
                    &path,
                    store::ImportOptions {
                        name,
                        progress: &mut |p| meter.show(p),
                    },
                )
                .map_err(e)?;
            if json {
                return print_json(&report).map(|()| 0);
            }
            for img in &report.images {
                let new = img.layers.iter().filter(|l| l.status == "unpacked").count();
                println!(
                    "{} {}  {} layers ({new} new){}",
                    img.id.short(),
                    first_name(&img.names),
                    img.layers.len(),
                    if img.new { "" } else { ", image was present" }
                );
            }
            println!(
                "imported from {} ({}) in {:.1}s",
                report.source, report.format, report.seconds
            );
        }
        Cmd::Image(ImageCmd::Export { json, image, dir }) => {
            let r = s.export_image(&image, &dir).map_err(e)?;
            if json {
                return print_json(&r).map(|()| 0);
            }
            println!(
                "wrote {} ({} layers) in {:.1}s",
                r.path.display(),
                r.layers.len(),
                r.seconds
            );
        }
        Cmd::Image(ImageCmd::Rm { json, image }) => {
            let removed = s.remove_image(&image).map_err(e)?;
            if json {
                return print_json(&removed).map(|()| 0);
            }
            for d in removed {
                println!("removed layer {d}");
            }
        }
        Cmd::Store(StoreCmd::Status { json }) => {
            let st = s.status().map_err(e)?;
            if json {
                let m: serde_json::Map<String, serde_json::Value> = st
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                return print_json(&m).map(|()| 0);
            }
            for (k, v) in st {
                println!("{:<12}{v}", format!("{k}:"));
            }
        }
        Cmd::Store(StoreCmd::Cleanup { json }) => {
            let c = s.cleanup().map_err(e)?;
            if json {
                return print_json(&c).map(|()| 0);
            }
            for d in &c.layers {
                println!("removed unused layer {d}");
            }
            for n in &c.stale_mounts {
                println!("container {n}: forgot a mount that had gone");
            }
            if c.indexes > 0 {
                println!("dropped {} indexes of removed layers", c.indexes);
            }
        }
        Cmd::Images { json } => {
            let images = s.images().map_err(e)?;
            if json {
                return print_json(&images).map(|()| 0);
            }
            println!("{:<14}{:<8}{:<22}NAMES", "ID", "LAYERS", "CREATED");
            for i in images {
                println!(
                    "{:<14}{:<8}{:<22}{}",
                    i.id.short(),
                    i.layers.len(),
                    rfc3339(i.created),
                    i.names.join(", ")
                );
            }
        }
        Cmd::Layers { json } => {
            let layers = s.layers().map_err(e)?;
            if json {
                return print_json(&layers).map(|()| 0);
            }
            println!(
                "{:<14}{:<12}{:<10}{:<8}{:<8}PARENT",
                "DIFF ID", "SIZE", "ENTRIES", "IMAGES", "SOURCE"
            );
            for l in layers {
                println!(
                    "{:<14}{:<12}{:<10}{:<8}{:<8}{}",
                    l.record.diff_id.short(),
                    mib(l.record.size),
                    l.record.entries,
                    l.images,
                    l.record.source,
                    l.record.parent.as_ref().map(|p| p.short()).unwrap_or("-")
                );
            }
        }
        Cmd::Ps { json } => {
            let cs = s.containers().map_err(e)?;
            let statuses: Vec<String> = cs
                .iter()
                .map(|c| crate::runtime::state::status_text(&c.record.name))
                .collect();
            if json {
                let mut v = serde_json::to_value(&cs).map_err(|e| e.to_string())?;
                if let Some(rows) = v.as_array_mut() {
                    for (row, status) in rows.iter_mut().zip(&statuses) {
                        if let Some(o) = row.as_object_mut() {
                            o.insert("status".into(), status.clone().into());
                        }
                    }
                }
                return print_json(&v).map(|()| 0);
            }
            println!(
                "{:<20}{:<30}{:<13}{:<22}MOUNTED AT",
                "NAME", "IMAGE", "STATUS", "CREATED"
            );
            for (c, status) in cs.into_iter().zip(statuses) {
                let image = c
                    .image_names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| c.record.image.short().to_string());
                println!(
                    "{:<20}{:<30}{:<13}{:<22}{}",
                    c.record.name,
                    image,
                    status,
                    rfc3339(c.record.created),
                    c.mounted_at
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        Cmd::Create { image, name, json } => {
            let rec = s.create_container(&image, &name).map_err(e)?;
            if json {
                return print_json(&rec).map(|()| 0);
            }
            println!("{}", rec.name);
        }
        Cmd::Rm { name, force } => s.remove_container(&name, force).map_err(e)?,
        Cmd::Diff { name, json } => {
            let changes = s.changes(&name).map_err(e)?;
            if json {
                return print_json(&changes).map(|()| 0);
            }
            for c in changes {
                println!("{} {}", c.kind.letter(), c.path);
            }
        }
        Cmd::Commit { name, image, json } => {
            let r = s.commit(&name, &image).map_err(e)?;
            if json {
                return print_json(&r).map(|()| 0);
            }
            if let Some(id) = &r.image {
                println!("{} {image}", id.short());
            }
        }
        Cmd::ExportLayer { name, out, json } => {
            let r = s.export_layer(&name, &out).map_err(e)?;
            if json {
                return print_json(&r).map(|()| 0);
            }
            for b in &r.layers {
                println!(
                    "wrote {}: {} entries, {} ({} compressed), diff id {}",
                    r.path.display(),
                    b.entries,
                    mib(b.size),
                    mib(b.compressed_size),
                    b.diff_id
                );
            }
        }
    }
    Ok(0)
}
