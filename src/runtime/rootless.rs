//! Rootless runs: the supervisor's own user namespace.
//!
//! An unprivileged `run` first moves the supervisor itself into a new user
//! namespace, and a mount namespace that namespace owns, before anything
//! is mounted. Container root is the caller's uid; container ids 1..N are
//! the caller's range in /etc/subuid and /etc/subgid, written with the
//! setuid helpers `newuidmap`/`newgidmap` (package `uidmap`), as podman
//! does. Without a range only the caller's own uid and gid are mapped (to
//! 0), with a warning: other users of the image cannot be switched to and
//! `setgroups` is denied.
//!
//! From there the supervisor is uid 0 with every capability over its own
//! namespaces: the union's daemon (forked from it) mounts FUSE in the
//! supervisor's mount namespace, where only the supervisor and the
//! container see it, and the container is cloned into its remaining
//! namespaces as in a rootful run. The helper that writes the maps must
//! stay in the caller's namespace, so it is forked before the unshare.
//!
//! Files the union creates are owned by the caller on the host; the ids
//! the container gives them live in `user.containers.override_stat`, the
//! same form the store's rootless import uses for the image's layers.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{fork, ForkResult};

use super::{setup_err, Result, RunError};

/// A subordinate id range: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// How the container's user namespace maps ids to the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub user: String,
    pub host_uid: u32,
    pub host_gid: u32,
    /// None: the caller has no range (then only uid/gid 0 are mapped).
    pub subuids: Option<IdRange>,
    pub subgids: Option<IdRange>,
}

const SUBUID: &str = "/etc/subuid";
const SUBGID: &str = "/etc/subgid";

/// The first range of `user` (or of its numeric `uid`) in a subuid/subgid
/// file's text (`name:start:count` per line).
pub fn find_range(text: &str, user: &str, uid: u32) -> Option<IdRange> {
    let uid = uid.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who != uid {
            return None;
        }
        let r = IdRange {
            start: start.trim().parse().ok()?,
            count: count.trim().parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

impl Mapping {
    /// The caller's mapping, from /etc/subuid and /etc/subgid.
    pub fn for_caller() -> Result<Mapping> {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let read = |p: &str| match std::fs::read_to_string(p) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(super::io_err(Path::new(p), e)),
        };
        let subuids = find_range(&read(SUBUID)?, &user, uid.as_raw());
        let subgids = find_range(&read(SUBGID)?, &user, uid.as_raw());
        let mut m = Mapping {
            user,
            host_uid: uid.as_raw(),
            host_gid: gid.as_raw(),
            subuids,
            subgids,
        };
        if !m.full() {
            let missing = match (subuids.is_some(), subgids.is_some()) {
                (false, false) => format!("{SUBUID} and {SUBGID}"),
                (false, true) => SUBUID.to_string(),
                _ => SUBGID.to_string(),
            };
            tracing::warn!(
                "rootless: user {} (uid {}) has no subordinate id range in {missing}: only uid {} \
                 and gid {} are mapped (to root) in the container; other users and groups of \
                 the image are unavailable (give the user a range, e.g. `usermod --add-subuids \
                 100000-165535 --add-subgids 100000-165535 {}`)",
                m.user,
                m.host_uid,
                m.host_uid,
                m.host_gid,
                m.user
            );
            m.subuids = None;
            m.subgids = None;
        }
        Ok(m)
    }

    /// Both ranges exist: ids 1..N are mapped with newuidmap/newgidmap.
    pub fn full(&self) -> bool {
        self.subuids.is_some() && self.subgids.is_some()
    }

    fn args(own: u32, range: Option<IdRange>) -> Vec<String> {
        let mut a = vec!["0".to_string(), own.to_string(), "1".to_string()];
        if let Some(r) = range {
            a.extend(["1".to_string(), r.start.to_string(), r.count.to_string()]);
        }
        a
    }
}

/// `name` in $PATH (or the usual sbin/bin dirs), for the setuid helpers.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn unshare_err(e: nix::errno::Errno) -> RunError {
    setup_err(
        "rootless: creating a user namespace (unshare)",
        match e {
            nix::errno::Errno::EPERM | nix::errno::Errno::ENOSPC => format!(
                "{e}: unprivileged user namespaces are disabled or exhausted on this host \
                 (see user.max_user_namespaces)"
            ),
            e => e.to_string(),
        },
    )
}

/// Moves this (single-threaded) process into a new user namespace mapped
/// by `m`, and a new mount namespace owned by it. Afterwards we are uid
/// and gid 0 with every capability in the namespace.
pub fn enter(m: &Mapping) -> Result<()> {
    let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS;
    if m.full() {
        enter_mapped(m, flags)?;
    } else {
        nix::sched::unshare(flags).map_err(unshare_err)?;
        // Without CAP_SETGID in the parent namespace a gid_map may only be
        // written once setgroups is denied.
        for (file, body) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("0 {} 1", m.host_uid)),
            ("/proc/self/gid_map", format!("0 {} 1", m.host_gid)),
        ] {
            std::fs::write(file, body)
                .map_err(|e| setup_err(format!("rootless: writing {file}"), e))?;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(setup_err(
            "rootless: user namespace",
            "the uid map does not make us root in it",
        ));
    }
    Ok(())
}

/// The helper (forked before the unshare, so it stays in the caller's
/// namespace) runs newuidmap and newgidmap on us once we have unshared.
fn enter_mapped(m: &Mapping, flags: CloneFlags) -> Result<()> {
    let find = |p: &str| {
        find_program(p).ok_or_else(|| {
            setup_err(
                format!("rootless: mapping {}'s subordinate ids", m.user),
                format!("{p} not found: install the uidmap package"),
            )
        })
    };
    let (newuidmap, newgidmap) = (find("newuidmap")?, find("newgidmap")?);
    let me = std::process::id().to_string();
    let jobs = [
        (newuidmap, Mapping::args(m.host_uid, m.subuids), SUBUID),
        (newgidmap, Mapping::args(m.host_gid, m.subgids), SUBGID),
    ];
    let pipe = || nix::unistd::pipe().map_err(|e| setup_err("pipe", e));
    let (go_rd, go_wr) = pipe()?;
    let (res_rd, res_wr) = pipe()?;
    // SAFETY: single-threaded; the child only runs the helpers and exits.
    match unsafe { fork() }.map_err(|e| setup_err("fork", e))? {
        ForkResult::Child => {
            drop(go_wr);
            drop(res_rd);
            let mut b = [0u8; 1];
            let started = std::fs::File::from(go_rd).read(&mut b).ok() == Some(1);
            if !started {
                // SAFETY: exiting the forked child without running the
                // parent's destructors.
                unsafe { libc::_exit(1) };
            }
            let mut msg = String::new();
            for (prog, args, file) in &jobs {
                match std::process::Command::new(prog)
                    .arg(&me)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .output()
                {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => {
                        msg = format!(
                            "{} {me} {}: {} (check {file})",
                            prog.display(),
                            args.join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                        break;
                    }
                    Err(e) => {
                        msg = format!("{}: {e}", prog.display());
                        break;
                    }
                }
            }
            super::sys::write_all_raw(res_wr.as_raw_fd(), msg.as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(go_rd);
            drop(res_wr);
            let unshared = nix::sched::unshare(flags);
            if unshared.is_ok() {
                let _ = nix::unistd::write(&go_wr, b"g");
            }
            drop(go_wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(res_rd).read_to_string(&mut msg);
            let _ = nix::sys::wait::waitpid(child, None);
            unshared.map_err(unshare_err)?;
            if !msg.is_empty() {
                return Err(setup_err(
                    format!("rootless: mapping {}'s subordinate ids", m.user),
                    msg,
                ));
            }
            Ok(())
        }
    }
}

/// Refuses a runtime dir (or one below it) that is not ours: under /tmp
/// another user could have made it first, and state.json holds the
/// container's environment.
pub fn check_owned(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).map_err(|e| super::io_err(dir, e))?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(super::io_err(
            dir,
            "is not a directory of ours (another user made it?); remove it, or set XDG_RUNTIME_DIR",
        ));
    }
    Ok(())
}

/// Whether the user namespace of `pid` differs from ours (then `exec`
/// joins it first).
pub fn other_user_ns(pid: i32) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/user")?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/user"))?;
    Ok((ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()))
}

/// Whether `pid`'s user namespace denies setgroups (a single-id map).
pub fn setgroups_denied(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/setgroups")).is_ok_and(|s| s.trim() == "deny")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            find_range(t, "alice", 1000),
            Some(IdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            find_range(t, "carol", 1001),
            Some(IdRange {
                start: 200000,
                count: 1000
            })
        );
        // An empty range is no range.
        assert_eq!(find_range(t, "bob", 1002), None);
        assert_eq!(find_range("garbage\n:::\n", "x", 1), None);
    }

    #[test]
    fn map_arguments() {
        let r = Some(IdRange {
            start: 300000,
            count: 65536,
        });
        assert_eq!(
            Mapping::args(1000, r),
            ["0", "1000", "1", "1", "300000", "65536"]
        );
        assert_eq!(Mapping::args(1000, None), ["0", "1000", "1"]);
    }
}
