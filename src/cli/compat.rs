//! The `layerfs` command line, compatible with fuse-overlayfs:
//!
//! ```text
//! layerfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,opts] MOUNTPOINT
//! layerfs SOURCE MOUNTPOINT -o opts        (mount.fuse3 helper form)
//! layerfs -V | --version
//! ```
//!
//! containers/storage runs the first form as its `mount_program`;
//! `mount -t fuse3.layerfs` (and so containerd) runs the second.

use std::path::PathBuf;

use crate::mount::daemon::{self, DaemonOptions};
use crate::mount::{self, MountError, MountSpec, Options};

const USAGE: &str = "usage: layerfs [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTION...] MOUNTPOINT
       layerfs SOURCE MOUNTPOINT -o OPTIONS
       layerfs -V|--version";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Mount {
        spec: Box<MountSpec>,
        foreground: bool,
    },
    Version,
    Help,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, MountError> {
    let mut options = Options::default();
    let mut positional: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut it = args.iter();
    let mut only_positional = false;
    while let Some(a) = it.next() {
        if only_positional {
            positional.push(a.clone());
            continue;
        }
        match a.as_str() {
            "--" => only_positional = true,
            "-V" | "--version" => return Ok(Command::Version),
            "-h" | "--help" => return Ok(Command::Help),
            "-f" => foreground = true,
            "-d" | "--debug" => {
                foreground = true;
                options.debug = true;
            }
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| MountError::Option("-o needs an option string".into()))?;
                options.apply(v)?;
            }
            s if s.starts_with("-o") => options.apply(&s[2..])?,
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(MountError::Option(format!("unknown flag '{s}'\n{USAGE}")))
            }
            _ => positional.push(a.clone()),
        }
    }
    let mountpoint = match positional.as_slice() {
        [mp] => mp,
        [_source, mp] => mp,
        [] => return Err(MountError::Option(format!("no mountpoint given\n{USAGE}"))),
        _ => {
            return Err(MountError::Option(format!(
                "too many arguments: {}\n{USAGE}",
                positional.join(" ")
            )))
        }
    };
    Ok(Command::Mount {
        spec: Box::new(MountSpec {
            options,
            mountpoint: PathBuf::from(mountpoint),
        }),
        foreground,
    })
}

/// Entry point of the `layerfs` binary.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse(&args) {
        Ok(c) => c,
        Err(e) => return super::fail("layerfs", e),
    };
    match cmd {
        Command::Version => {
            println!("layerfs version {}", env!("CARGO_PKG_VERSION"));
            println!("FUSE library: fuser");
            0
        }
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::Mount { spec, foreground } => {
            super::init_logging(spec.options.debug);
            let run = mount::prepare(*spec).and_then(|p| {
                daemon::run(
                    p,
                    &DaemonOptions {
                        foreground,
                        ..DaemonOptions::default()
                    },
                )
            });
            match run {
                Ok(()) => 0,
                Err(e) => super::fail("layerfs", e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn engine_form() {
        let c = parse(&args(&[
            "-o",
            "lowerdir=/a:/b,upperdir=/u,workdir=/w",
            "/mnt",
        ]))
        .unwrap();
        let Command::Mount { spec, foreground } = c else {
            panic!()
        };
        assert!(!foreground);
        assert_eq!(spec.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(spec.options.lowers.len(), 2);
    }

    #[test]
    fn helper_form() {
        let c = parse(&args(&[
            "overlay",
            "/mnt",
            "-o",
            "rw,lowerdir=/a,upperdir=/u,workdir=/w",
        ]))
        .unwrap();
        let Command::Mount { spec, .. } = c else {
            panic!()
        };
        assert_eq!(spec.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(spec.options.upper, Some(PathBuf::from("/u")));
    }

    #[test]
    fn flags() {
        assert_eq!(parse(&args(&["-V"])).unwrap(), Command::Version);
        assert_eq!(parse(&args(&["--version"])).unwrap(), Command::Version);
        let Command::Mount { foreground, spec } =
            parse(&args(&["-d", "-olowerdir=/a", "/m"])).unwrap()
        else {
            panic!()
        };
        assert!(foreground && spec.options.debug);
        assert!(parse(&args(&["-x", "/m"])).is_err());
        assert!(parse(&args(&["-o", "lowerdir=/a"])).is_err());
        assert!(parse(&args(&["a", "b", "c"])).is_err());
        assert!(parse(&args(&["-o"])).is_err());
    }
}
