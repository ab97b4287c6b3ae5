//! `exec` and `kill` on a running container.
//!
//! `exec` enters the container the way its own processes live: the
//! supervisor joins the container's user namespace when it has its own (a
//! rootless container: every other namespace belongs to it, so joining it
//! first is what makes joining them permitted), then only the pid
//! namespace (which affects its children, not itself) and forks; the child
//! moves itself into the container's cgroup, joins the cgroup, ipc, uts,
//! net and mount namespaces, and execs with the container's environment,
//! user and capabilities.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult};

use super::cgroup::Cgroup;
use super::image::{self, Ids};
use super::init::{self, ChildError, Process};
use super::state::{self, ContainerState};
use super::supervise::{read_report, supervised_signals, wait_forwarding};
use super::{io_err, setup_err, Result, RunError};

/// A running container's record, or why not.
fn running(name: &str) -> Result<ContainerState> {
    let st = state::load(name)?;
    if !st.is_running() {
        return Err(RunError::NotRunning(name.to_string()));
    }
    Ok(st)
}

/// Sends `sig` to the container's init.
pub fn kill(name: &str, sig: Signal) -> Result<()> {
    let st = running(name)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.pid), sig)
        .map_err(|e| setup_err(format!("signalling container {name} (pid {})", st.pid), e))
}

/// What to run in the container.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// Runs a command in container `name`; returns its exit status
/// (128+signal when killed).
pub fn exec(name: &str, spec: &ExecSpec) -> Result<i32> {
    let st = running(name)?;
    let ns_order = ["cgroup", "ipc", "uts", "net", "mnt"];
    let open_ns = |ns: &str| -> Result<OwnedFd> {
        let p = format!("/proc/{}/ns/{ns}", st.pid);
        File::open(&p)
            .map(OwnedFd::from)
            .map_err(|e| io_err(std::path::Path::new(&p), e))
    };
    let userns = match super::rootless::other_user_ns(st.pid) {
        Ok(true) => Some(open_ns("user")?),
        Ok(false) => None,
        Err(e) => {
            return Err(io_err(
                std::path::Path::new(&format!("/proc/{}/ns/user", st.pid)),
                e,
            ))
        }
    };
    let pidns = open_ns("pid")?;
    let others = ns_order
        .iter()
        .map(|ns| open_ns(ns).map(|fd| (*ns, fd)))
        .collect::<Result<Vec<_>>>()?;
    // The fds now pin the namespaces; make sure they are the container's
    // and not those of a process that reused its pid.
    if !st.is_running() {
        return Err(RunError::NotRunning(name.to_string()));
    }
    let command = if spec.command.is_empty() {
        st.command.clone()
    } else {
        spec.command.clone()
    };
    let env = image::merge_env(&st.env, &spec.env, "/", "");
    // merge_env sets HOSTNAME= from its argument; keep the container's.
    let env: Vec<String> = env
        .into_iter()
        .filter(|e| e != "HOSTNAME=")
        .chain(
            st.env
                .iter()
                .filter(|e| e.starts_with("HOSTNAME="))
                .cloned(),
        )
        .fold(Vec::new(), |mut v, e| {
            let k = e.split('=').next().unwrap_or("").to_string();
            v.retain(|x: &String| x.split('=').next() != Some(k.as_str()));
            v.push(e);
            v
        });
    let ids = Ids {
        uid: st.uid,
        gid: st.gid,
        groups: st.groups.clone(),
        home: String::new(),
    };
    let cwd = spec.workdir.clone().unwrap_or_else(|| st.cwd.clone());
    let mut process =
        Process::new(&command, &env, &cwd, &ids).map_err(|e| RunError::Invalid(e.to_string()))?;
    process.set_groups = !super::rootless::setgroups_denied(st.pid);
    let cgroup = Cgroup::from_dirs(st.cgroup_v2, st.cgroups.clone());

    if let Some(fd) = &userns {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(|e| {
            setup_err(
                "joining the container's user namespace",
                match e {
                    nix::errno::Errno::EPERM => {
                        format!("{e}: only the user who ran the container may exec in it")
                    }
                    e => e.to_string(),
                },
            )
        })?;
    }
    setns(pidns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(|e| setup_err("joining the container's pid namespace", e))?;
    let (rep_rd, rep_wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_err("pipe", e))?;
    let signals = supervised_signals();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| setup_err("blocking signals", e))?;
    // SAFETY: single-threaded; the child only makes syscalls and execs.
    match unsafe { fork() }.map_err(|e| setup_err("fork", e))? {
        ForkResult::Child => {
            drop(rep_rd);
            let r = enter(&cgroup, &others, &process);
            let ChildError(code, msg) = match r {
                Ok(never) => match never {},
                Err(e) => e,
            };
            super::sys::write_all_raw(rep_wr.as_raw_fd(), format!("{code}\n{msg}").as_bytes());
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(rep_wr);
            drop(others);
            if let Some(err) = read_report(rep_rd) {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(err);
            }
            wait_forwarding(child, &signals).map(|(code, _)| code)
        }
    }
}

fn enter(
    cgroup: &Cgroup,
    namespaces: &[(&str, OwnedFd)],
    process: &Process,
) -> std::result::Result<init::Never, ChildError> {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    for d in &cgroup.dirs {
        std::fs::write(d.join("cgroup.procs"), "0").map_err(|e| {
            ChildError(
                init::CODE_SETUP,
                format!("joining cgroup {}: {e}", d.display()),
            )
        })?;
    }
    for (ns, fd) in namespaces {
        setns(fd.as_fd(), CloneFlags::empty()).map_err(|e| {
            ChildError(
                init::CODE_SETUP,
                format!("joining the container's {ns} namespace: {e}"),
            )
        })?;
    }
    std::env::set_current_dir(&process.cwd).map_err(|e| {
        ChildError(
            init::CODE_SETUP,
            format!("working directory {}: {e}", process.cwd.display()),
        )
    })?;
    init::exec(process)
}
