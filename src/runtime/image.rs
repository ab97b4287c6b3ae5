//! Defaults from an image's OCI config (`config.Entrypoint`, `Cmd`, `Env`,
//! `WorkingDir`, `User`), and resolving user and group names through the
//! container's own /etc/passwd and /etc/group.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use serde::Deserialize;

use super::spec::User;
use super::sys;
use super::{Result, RunError};

/// The part of an OCI image config the runtime uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageDefaults {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageDefaults>,
}

impl ImageDefaults {
    pub fn from_config(bytes: &[u8]) -> Result<ImageDefaults> {
        let f: ConfigFile = serde_json::from_slice(bytes)
            .map_err(|e| RunError::Invalid(format!("image config: {e}")))?;
        Ok(f.config.unwrap_or_default())
    }

    /// The argv: the image's Entrypoint followed by the command given, or
    /// by the image's Cmd when none is.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        if command.is_empty() {
            argv.extend(self.cmd.clone().unwrap_or_default());
        } else {
            argv.extend(command.iter().cloned());
        }
        argv
    }
}

/// The environment: image entries, then `overrides` (`K=V`, or `K` taken
/// from ours), then PATH and HOME when still missing.
pub fn merge_env(
    image: &[String],
    overrides: &[String],
    home: &str,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    for e in image {
        set(e.clone());
    }
    set(format!("HOSTNAME={hostname}"));
    for o in overrides {
        if o.contains('=') {
            set(o.clone());
        } else if let Ok(v) = std::env::var(o) {
            set(format!("{o}={v}"));
        }
    }
    let has = |env: &[String], k: &str| env.iter().any(|e| e.starts_with(&format!("{k}=")));
    if !has(&env, "PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// A resolved user: ids and home directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

fn read_small(root: &OwnedFd, rel: &str) -> String {
    let mut s = String::new();
    if let Ok(mut f) = sys::open_in_root(root, Path::new(rel)) {
        let _ = f.by_ref().take(4 << 20).read_to_string(&mut s);
    }
    s
}

/// Resolves `user` in the container's root (open as `root`).
pub fn resolve_user(root: &OwnedFd, user: Option<&User>) -> Result<Ids> {
    let passwd = read_small(root, "etc/passwd");
    let group = read_small(root, "etc/group");
    let Some(u) = user else {
        return Ok(Ids {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            home: "/root".into(),
        });
    };
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u.user || f[2] == u.user));
    let uid: u32 = match (u.user.parse::<u32>(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2]
            .parse()
            .map_err(|_| RunError::Invalid(format!("user {:?}: bad /etc/passwd entry", u.user)))?,
        (Err(_), None) => {
            return Err(RunError::Invalid(format!(
                "user {:?} is not in the container's /etc/passwd",
                u.user
            )))
        }
    };
    let (primary, home, name) = match &entry {
        Some(f) => (f[3].parse::<u32>().ok(), f[5].to_string(), Some(f[0])),
        None => (None, "/".to_string(), None),
    };
    let gid = match &u.group {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    RunError::Invalid(format!("group {g:?} is not in the container's /etc/group"))
                })?,
        },
    };
    // Supplementary groups: those listing the user by name.
    let mut groups: Vec<u32> = match name {
        Some(n) if u.group.is_none() => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(Ids {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_argv() {
        let cfg = br#"{"config":{"Env":["PATH=/bin","A=1"],"Entrypoint":["/e"],"Cmd":["x","y"]}}"#;
        let d = ImageDefaults::from_config(cfg).unwrap_or_default();
        assert_eq!(d.argv(&[]), vec!["/e", "x", "y"]);
        assert_eq!(d.argv(&["z".to_string()]), vec!["/e", "z"]);
        let env = merge_env(
            d.env.as_deref().unwrap_or(&[]),
            &["A=2".into(), "B=3".into()],
            "/root",
            "h",
        );
        assert_eq!(
            env,
            vec!["PATH=/bin", "HOSTNAME=h", "A=2", "B=3", "HOME=/root"]
        );
        assert!(ImageDefaults::from_config(b"not json").is_err());
    }
}
