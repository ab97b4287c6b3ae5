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
    /// The layer store (default: /var/lib/layerfs as root,
    /// $XDG_DATA_HOME/layerfs otherwise).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount a union of layer directories (--lower …  MOUNTPOINT), or a
    /// store container (NAME [MOUNTPOINT]).
    Mount(MountArgs),
    /// Unmount a layerfs mount (a mountpoint, or a store container's name)
    /// and wait for its daemon to exit.
    #[command(alias = "unmount")]
    Umount {
        /// Detach even if files are still open.
        #[arg(short, long)]
        lazy: bool,
        /// A container name (no '/', and a container of that name exists)
        /// or a mountpoint.
        #[arg(value_name = "NAME|MOUNTPOINT")]
        target: PathBuf,
    },
    /// Import, export and remove images in the store.
    #[command(subcommand)]
    Image(super::store::ImageCmd),
    /// List the store's images.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// List the store's layers.
    Layers {
        #[arg(long)]
        json: bool,
    },
    /// List the store's containers and where they are mounted.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Create a container: an empty writable layer on an image.
    Create {
        #[arg(long)]
        json: bool,
        image: String,
        name: String,
    },
    /// Remove a container and its writable layer.
    Rm {
        /// Unmount it first if it is mounted.
        #[arg(short, long)]
        force: bool,
        name: String,
    },
    /// What a container changed (A added, C changed, D deleted).
    Diff {
        #[arg(long)]
        json: bool,
        name: String,
    },
    /// Make a container's changes a new layer, and a new image.
    Commit {
        #[arg(long)]
        json: bool,
        name: String,
        image: String,
    },
    /// Write a container's changes as an OCI layer tar (.tar, .tar.gz,
    /// .tar.zst).
    ExportLayer {
        #[arg(long)]
        json: bool,
        name: String,
        out: PathBuf,
    },
    /// The store itself: status, cleanup.
    #[command(subcommand)]
    Store(super::store::StoreCmd),
    /// Manage the lower layers' metadata index.
    #[command(subcommand)]
    Index(super::index::IndexCmd),
    /// Run a command in a new container: an image from the store, or
    /// layer directories (--lower).
    Run(super::run::RunArgs),
    /// Run a command in a running container.
    Exec(super::run::ExecArgs),
    /// Send a signal to a running container.
    Kill(super::run::KillArgs),
    /// Containers started by `run`: running or exited.
    State(super::run::StateArgs),
    /// Serve containerd's snapshots API (a proxy snapshotter) on a unix
    /// socket, with the snapshots in the store.
    Snapshotter(super::snapshotter::SnapshotterArgs),
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
    /// Without it, the first argument names a store container.
    #[arg(long = "lower", short = 'l', value_name = "DIR")]
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
    /// With --lower: where to mount. Without: a store container's name,
    /// then optionally where to mount it (default: its own merged dir).
    #[arg(value_name = "MOUNTPOINT | NAME [MOUNTPOINT]", num_args = 1..=2, required = true)]
    targets: Vec<PathBuf>,
}

/// `unionctl mount NAME [MOUNTPOINT]`: a container of the store.
fn mount_container(root: Option<&std::path::Path>, a: MountArgs) -> Result<(), String> {
    if a.upper.is_some() || a.work.is_some() || a.index_dir.is_some() {
        return Err(
            "a store container brings its own layers: --upper, --work and --index-dir go with --lower"
                .into(),
        );
    }
    let name = a.targets[0].to_string_lossy().into_owned();
    let mut extra = a.options.clone();
    if let Some(t) = a.threads {
        extra.push(format!("threads={t}"));
    }
    if let Some(m) = &a.index {
        extra.push(format!("index={m}"));
    }
    let s = super::store::open(root)?;
    let mp = s
        .mount_container(
            &name,
            a.targets.get(1).map(PathBuf::as_path),
            &extra,
            &DaemonOptions {
                foreground: a.foreground,
                pid_file: a.pid_file,
                log_file: a.log_file,
                unmount_when_gone: None,
            },
        )
        .map_err(|e| e.to_string())?;
    if a.verbose || !a.foreground {
        println!("{}", mp.display());
    }
    Ok(())
}

/// `unionctl umount NAME|MOUNTPOINT`: a name without '/' that a store
/// container has is the container; anything else is a mountpoint.
fn umount_cmd(
    root: Option<&std::path::Path>,
    target: &std::path::Path,
    lazy: bool,
) -> Result<(), String> {
    let text = target.to_string_lossy();
    if !text.contains('/') && crate::store::check_container_name(&text).is_ok() {
        let s = super::store::open(root)?;
        if s.container_exists(&text) {
            return s
                .umount_container(&text, lazy)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
    }
    mount::umount(target, lazy).map_err(|e| e.to_string())
}

fn mount_cmd(a: MountArgs) -> Result<(), mount::MountError> {
    if a.targets.len() != 1 {
        return Err(mount::MountError::Option(
            "with --lower, give exactly one mountpoint".into(),
        ));
    }
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
        mountpoint: a.targets[0].clone(),
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
            unmount_when_gone: None,
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
    let root = cli.root.as_deref();
    use super::store::Cmd as S;
    let store_cmd = match cli.command {
        Cmd::Mount(a) if a.lowers.is_empty() => {
            return match mount_container(root, a) {
                Ok(()) => 0,
                Err(e) => super::fail("unionctl", e),
            }
        }
        Cmd::Umount { lazy, target } => {
            return match umount_cmd(root, &target, lazy) {
                Ok(()) => 0,
                Err(e) => super::fail("unionctl", e),
            }
        }
        Cmd::Run(a) => return super::run::run(root, a),
        Cmd::Exec(a) => return super::run::exec(a),
        Cmd::Kill(a) => return super::run::kill(a),
        Cmd::State(a) => return super::run::show_state(a),
        Cmd::Snapshotter(a) => return super::snapshotter::run(root, a),
        Cmd::Image(c) => Some(S::Image(c)),
        Cmd::Store(c) => Some(S::Store(c)),
        Cmd::Images { json } => Some(S::Images { json }),
        Cmd::Layers { json } => Some(S::Layers { json }),
        Cmd::Ps { json } => Some(S::Ps { json }),
        Cmd::Create { json, image, name } => Some(S::Create { image, name, json }),
        Cmd::Rm { force, name } => return super::run::rm(root, name, force),
        Cmd::Diff { json, name } => Some(S::Diff { name, json }),
        Cmd::Commit { json, name, image } => Some(S::Commit { name, image, json }),
        Cmd::ExportLayer { json, name, out } => Some(S::ExportLayer { name, out, json }),
        other => {
            return finish(other);
        }
    };
    match store_cmd.map(|c| super::store::run(root, c)) {
        Some(Ok(code)) => code,
        Some(Err(e)) => super::fail("unionctl", e),
        None => 0,
    }
}

fn finish(cmd: Cmd) -> i32 {
    let result = match cmd {
        Cmd::Mount(a) => mount_cmd(a),
        Cmd::Index(cmd) => {
            return match super::index::run(cmd) {
                Ok(code) => code,
                Err(e) => super::fail("unionctl", e),
            }
        }
        Cmd::Status { json, mountpoint } => {
            mount::query_status(&mountpoint).map(|s| print_status(&s, json))
        }
        _ => Ok(()),
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
