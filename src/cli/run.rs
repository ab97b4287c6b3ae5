//! The runtime's commands: `run`, `exec`, `kill`, `state`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::runtime::bundle;
use crate::runtime::join::{self, ExecSpec};
use crate::runtime::spec::{self, Limits, NetworkMode, RootfsSource, RunSpec};
use crate::runtime::state::{self, Status};
use crate::runtime::RunError;

/// Exit status for a failure of the runtime itself (Docker uses the same).
const EXIT_RUNTIME: i32 = 125;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The container's name (default: generated). An existing store
    /// container of this name is started again, with its layer.
    #[arg(long)]
    name: Option<String>,
    /// Remove the container and its writable layer when it exits.
    #[arg(long)]
    rm: bool,
    /// Hostname (default: the container's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit: bytes, or with k, m, g (e.g. 256M).
    #[arg(long, short = 'm', value_name = "SIZE")]
    memory: Option<String>,
    /// CPU limit in CPUs (e.g. 0.5).
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pids: Option<String>,
    /// Set an environment variable (K=V, or K to pass ours); repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// UID[:GID] or NAME[:GROUP], resolved in the container's /etc/passwd.
    #[arg(long, short = 'u', value_name = "USER")]
    user: Option<String>,
    /// none (a network namespace with only lo; the default) or host.
    #[arg(long, value_name = "MODE")]
    network: Option<String>,
    /// Bind mount SRC:DST[:ro]; repeatable.
    #[arg(long = "volume", short = 'v', value_name = "SRC:DST[:ro]")]
    volumes: Vec<String>,
    /// Run on these layer directories (top first) instead of an image.
    #[arg(long = "lower", short = 'l', value_name = "DIR")]
    lowers: Vec<PathBuf>,
    /// Run an OCI runtime bundle: DIR/config.json's process, hostname,
    /// namespaces, resources and bind mounts, on its root as the lower
    /// layer. Options given here override the config.
    #[arg(long, value_name = "DIR", conflicts_with = "lowers")]
    bundle: Option<PathBuf>,
    /// IMAGE (unless --lower is given), then the command and its arguments
    /// (after --; default: the image's Entrypoint and Cmd).
    #[arg(
        value_name = "IMAGE [-- CMD ARGS…]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Set an environment variable (K=V); repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory (default: the container's).
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    name: String,
    /// The command (default: the container's own).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    name: String,
    /// TERM, SIGKILL, 9… (default TERM).
    #[arg(default_value = "TERM")]
    signal: String,
}

#[derive(Args, Debug)]
pub struct StateArgs {
    #[arg(long)]
    json: bool,
    /// One container (default: all).
    name: Option<String>,
}

fn generated_name() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{:x}{:05x}", std::process::id(), t & 0xfffff)
}

fn spec_of(a: RunArgs) -> Result<RunSpec, RunError> {
    let bundle = a.bundle.as_deref().map(bundle::load).transpose()?;
    let mut args = a.args.into_iter().peekable();
    let rootfs = if let Some(b) = &bundle {
        RootfsSource::Lowers(vec![b.rootfs.clone()])
    } else if a.lowers.is_empty() {
        let image = args.next().filter(|i| i != "--").ok_or_else(|| {
            RunError::Invalid("give an IMAGE, or layer directories with --lower".into())
        })?;
        RootfsSource::Image(image)
    } else {
        RootfsSource::Lowers(a.lowers)
    };
    // clap keeps the `--` that follows a positional IMAGE.
    if args.peek().is_some_and(|a| a == "--") {
        args.next();
    }
    let mut spec = RunSpec {
        name: a.name.unwrap_or_else(generated_name),
        rootfs,
        remove: a.rm,
        hostname: a.hostname,
        limits: Limits {
            memory_bytes: a.memory.as_deref().map(spec::parse_size).transpose()?,
            cpu_quota_us: a.cpus.as_deref().map(spec::parse_cpus).transpose()?,
            pids: a.pids.as_deref().map(spec::parse_pids).transpose()?,
        },
        env: a.env,
        workdir: a.workdir,
        user: a.user.as_deref().map(spec::parse_user).transpose()?,
        network: a
            .network
            .as_deref()
            .map(spec::parse_network)
            .transpose()?
            .unwrap_or(NetworkMode::None),
        volumes: a
            .volumes
            .iter()
            .map(|v| spec::parse_volume(v))
            .collect::<Result<_, _>>()?,
        daemon_log: None,
        command: args.collect(),
    };
    if let Some(b) = bundle {
        // The command line wins over the config, field by field.
        if spec.command.is_empty() {
            spec.command = b.command;
        }
        spec.env = b.env.into_iter().chain(spec.env).collect();
        spec.workdir = spec.workdir.or(Some(b.cwd));
        spec.user = spec.user.or(Some(b.user));
        spec.hostname = spec.hostname.or(b.hostname);
        if a.network.is_none() {
            spec.network = b.network;
        }
        let l = &mut spec.limits;
        l.memory_bytes = l.memory_bytes.or(b.limits.memory_bytes);
        l.cpu_quota_us = l.cpu_quota_us.or(b.limits.cpu_quota_us);
        l.pids = l.pids.or(b.limits.pids);
        spec.volumes = b.volumes.into_iter().chain(spec.volumes).collect();
    }
    Ok(spec)
}

fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}

/// `unionctl run`: returns the container's exit status.
pub fn run(root: Option<&Path>, a: RunArgs) -> i32 {
    let result = spec_of(a).and_then(|spec| {
        let store = match &spec.rootfs {
            RootfsSource::Image(_) => Some(super::store::open(root).map_err(RunError::Invalid)?),
            RootfsSource::Lowers(_) => None,
        };
        let name = spec.name.clone();
        crate::runtime::run(spec, store.as_ref()).map(|o| (name, o))
    });
    match result {
        Ok((name, o)) => {
            if o.oom_killed {
                eprintln!(
                    "unionctl: container {name} was killed by the OOM killer (memory limit {}); exit status {}",
                    o.memory_limit.map(mib).unwrap_or_else(|| "none".into()),
                    o.code
                );
            }
            o.code
        }
        Err(RunError::Start { code, message }) => {
            eprintln!("unionctl: error: {message}");
            code
        }
        Err(e) => {
            eprintln!("unionctl: error: {e}");
            EXIT_RUNTIME
        }
    }
}

pub fn exec(a: ExecArgs) -> i32 {
    let spec = ExecSpec {
        command: a.command,
        env: a.env,
        workdir: a.workdir,
    };
    match join::exec(&a.name, &spec) {
        Ok(code) => code,
        Err(RunError::Start { code, message }) => {
            eprintln!("unionctl: error: {message}");
            code
        }
        Err(e) => {
            eprintln!("unionctl: error: {e}");
            EXIT_RUNTIME
        }
    }
}

pub fn kill(a: KillArgs) -> i32 {
    match spec::parse_signal(&a.signal).and_then(|s| join::kill(&a.name, s)) {
        Ok(()) => 0,
        Err(e) => super::fail("unionctl", e),
    }
}

pub fn show_state(a: StateArgs) -> i32 {
    let list = match &a.name {
        Some(n) => state::load(n).map(|s| vec![s]),
        None => state::list(),
    };
    let list = match list {
        Ok(l) => l,
        Err(e) => return super::fail("unionctl", e),
    };
    let rows: Vec<(state::ContainerState, Status)> = list
        .into_iter()
        .map(|s| {
            let live = s.live_status();
            (s, live)
        })
        .collect();
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(s, live)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "status".into(),
                        serde_json::to_value(live).unwrap_or_default(),
                    );
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    println!(
        "{:<24}{:<13}{:<9}{:<24}COMMAND",
        "NAME", "STATUS", "PID", "IMAGE"
    );
    for (s, live) in rows {
        // Worded as `ps` words it.
        let status = s.status_text_as(live);
        let pid = if live == Status::Running {
            s.pid.to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<24}{:<13}{:<9}{:<24}{}",
            s.name,
            status,
            pid,
            s.image.as_deref().unwrap_or("(--lower)"),
            s.command.join(" ")
        );
    }
    0
}

/// `unionctl rm NAME`: refused while the container runs (even with
/// --force, which would unmount the rootfs under it); removes the store
/// container, then the runtime record. A `--lower` container has only the
/// runtime record (and its upper layer in it).
pub fn rm(root: Option<&Path>, name: String, force: bool) -> i32 {
    let recorded = state::load(&name).ok();
    if let Some(st) = &recorded {
        if st.live_status() != Status::Exited {
            return super::fail(
                "unionctl",
                format!("container {name} is running; stop it first (unionctl kill {name})"),
            );
        }
        if st.image.is_none() {
            return match state::remove_dir(&name) {
                Ok(()) => 0,
                Err(e) => super::fail("unionctl", e),
            };
        }
    }
    let code = match super::store::run(
        root,
        super::store::Cmd::Rm {
            name: name.clone(),
            force,
        },
    ) {
        Ok(c) => c,
        Err(e) => return super::fail("unionctl", e),
    };
    if code == 0 && recorded.is_some() {
        if let Err(e) = state::remove_dir(&name) {
            return super::fail("unionctl", e);
        }
    }
    code
}
