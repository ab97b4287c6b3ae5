//! Command lines: `unionctl` (clap) and the fuse-overlayfs-compatible
//! `layerfs` (hand-parsed, since engines call it with mount(8)-style
//! arguments). The only module that parses arguments or prints for humans.

pub mod compat;
mod index;
mod run;
mod snapshotter;
mod store;
mod unionctl;

pub use unionctl::main as unionctl_main;

use tracing_subscriber::EnvFilter;

/// Logs go to stderr; `LAYERFS_LOG` (e.g. `debug`, `layerfs=trace`) picks
/// the level, `debug` raises the default to debug.
pub fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_env("LAYERFS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Prints an error the way every layerfs command does and returns the exit
/// code for it.
pub fn fail(prog: &str, err: impl std::fmt::Display) -> i32 {
    eprintln!("{prog}: error: {err}");
    1
}
