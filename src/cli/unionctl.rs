//! `unionctl`: the layerfs administration command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::mount::daemon::{self, DaemonOptions};
use crate::mount::{self, MountSpec, Options};

#[derive(Parser, Debug)]
#[command(name = "unionctl", version, about = "Manage layerfs union mounts")]
struct Cli {
    /// Log at debug level (LAYERFS_LOG overrides).
    #[arg(short, long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount a union of layer directories.
    Mount(MountArgs),
    /// Unmount a layerfs mount and wait for its daemon to exit.
    #[command(alias = "unmount")]
    Umount {
        /// Detach even if files are still open.
        #[arg(short, long)]
        lazy: bool,
        mountpoint: PathBuf,
    },
    /// Manage the lower layers' metadata index.
    #[command(subcommand)]
    Index(super::index::IndexCmd),
    /// Show what a mount's daemon serves and holds.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        mountpoint: PathBuf,
    },
}

#[derive(Args, Debug)]
struct MountArgs {
    /// A read-only layer; repeat for more. The first is the top one.
    #[arg(long = "lower", short = 'l', required = true, value_name = "DIR")]
    lowers: Vec<PathBuf>,
    /// The writable layer. Without it the mount is read-only.
    #[arg(long, short = 'u', value_name = "DIR", requires = "work")]
    upper: Option<PathBuf>,
    /// Scratch directory on the upper layer's filesystem.
    #[arg(long, short = 'w', value_name = "DIR", requires = "upper")]
    work: Option<PathBuf>,
    /// Extra mount options, as for the layerfs command (-o a,b=c).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground instead of daemonizing.
    #[arg(short, long)]
    foreground: bool,
    /// FUSE worker threads (default: number of CPUs).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Write the daemon's pid to this file.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Append the daemon's log to this file once it is detached.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Use the lower layers' metadata index: on, off, or auto (when it can
    /// be built and opened).
    #[arg(long, value_name = "MODE")]
    index: Option<String>,
    /// Where the index database lives.
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Print what was mounted and how.
    #[arg(short, long)]
    verbose: bool,
    /// Where to mount.
    mountpoint: PathBuf,
}

fn mount_cmd(a: MountArgs) -> Result<(), mount::MountError> {
    let mut options = Options::default();
    for o in &a.options {
        options.apply(o)?;
    }
    if !options.lowers.is_empty() {
        return Err(mount::MountError::Option(
            "give lower layers with --lower, not lowerdir=".into(),
        ));
    }
    options.lowers = a.lowers;
    options.upper = a.upper.or(options.upper);
    options.work = a.work.or(options.work);
    if let Some(t) = a.threads {
        options.apply(&format!("threads={t}"))?;
    }
    if let Some(m) = &a.index {
        options.apply(&format!("index={m}"))?;
    }
    if let Some(d) = a.index_dir {
        options.index_dir = Some(d);
    }
    let prepared = mount::prepare(MountSpec {
        options,
        mountpoint: a.mountpoint,
    })?;
    if a.verbose {
        eprintln!(
            "mounting {} lower layer(s){} on {} with {} thread(s); overlay xattrs in {:?}",
            prepared.lowers.len(),
            if prepared.upper.is_some() {
                " and an upper layer"
            } else {
                " read-only"
            },
            prepared.mountpoint.display(),
            prepared.threads,
            prepared.xattr_ns,
        );
        for adv in &prepared.spec.options.advisory {
            eprintln!("option {adv}: accepted, no effect");
        }
    }
    let mountpoint = prepared.mountpoint.clone();
    daemon::run(
        prepared,
        &DaemonOptions {
            foreground: a.foreground,
            pid_file: a.pid_file,
            log_file: a.log_file,
        },
    )?;
    if a.verbose {
        // The daemon knows what the kernel agreed to.
        let s = mount::query_status(&mountpoint)?;
        eprintln!(
            "mounted; daemon pid {}; passthrough {}",
            s.pid,
            if s.passthrough { "on" } else { "off" }
        );
    }
    Ok(())
}

/// Entry point of the `unionctl` binary.
pub fn main() -> i32 {
    let cli = Cli::parse();
    super::init_logging(cli.debug);
    let result = match cli.command {
        Cmd::Mount(a) => mount_cmd(a),
        Cmd::Umount { lazy, mountpoint } => mount::umount(&mountpoint, lazy),
        Cmd::Index(cmd) => {
            return match super::index::run(cmd) {
                Ok(code) => code,
                Err(e) => super::fail("unionctl", e),
            }
        }
        Cmd::Status { json, mountpoint } => {
            mount::query_status(&mountpoint).map(|s| print_status(&s, json))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => super::fail("unionctl", e),
    }
}

fn print_status(s: &mount::Status, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    println!("mountpoint:   {}", s.mountpoint.display());
    println!("daemon pid:   {}", s.pid);
    println!(
        "layers:       {} lower{}",
        s.lower_layers,
        match &s.upper {
            Some(u) => format!(", upper {}", u.display()),
            None => ", read-only".to_string(),
        }
    );
    println!("threads:      {}", s.threads);
    println!("xattrs:       {}.overlay.*", s.xattr_namespace);
    println!("passthrough:  {}", if s.passthrough { "on" } else { "off" });
    println!("index:        {}", if s.indexed { "on" } else { "off" });
    println!("nodes:        {}", s.nodes);
    println!("cached dirs:  {}", s.cached_dirs);
    println!(
        "memory:       {} KiB resident, {} KiB peak",
        s.rss_kib, s.peak_rss_kib
    );
}
