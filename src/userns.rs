//! Who this process is with respect to user namespaces: root of the host
//! (privileged) or not (rootless, including root inside a user namespace,
//! which cannot set `trusted.*` xattrs, make device whiteouts or write
//! under /run and /var/lib).
//!
//! Paths chosen per user (store, index, runtime records) ask
//! [`privileged`] rather than `geteuid() == 0`, so that the rootless
//! runtime, which works as uid 0 inside its user namespace, still uses the
//! caller's paths.

/// Whether we run in the initial user namespace (uid_map is the identity
/// over the whole range).
pub fn in_initial_user_ns() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map
            .split_whitespace()
            .collect::<Vec<_>>()
            .as_slice()
            .starts_with(&["0", "0", "4294967295"]),
        Err(_) => true,
    }
}

/// Root of the host: euid 0 in the initial user namespace.
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root() && in_initial_user_ns()
}

/// Our effective uid as the parent user namespace sees it (the same as
/// `geteuid()` outside a user namespace): the uid that per-user paths are
/// named after.
pub fn host_euid() -> u32 {
    let euid = nix::unistd::geteuid().as_raw();
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    outside_id(&map, euid).unwrap_or(euid)
}

/// Maps `id` through a `uid_map`/`gid_map` text (`inside outside count`
/// per line) to the parent namespace.
pub fn outside_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [inside, outside, count] = f[..] else {
            return None;
        };
        let id = u64::from(id);
        (id >= inside && id - inside < count)
            .then(|| u32::try_from(outside + (id - inside)).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ids_to_the_parent_namespace() {
        let map = "         0       1000          1\n         1     300000      65536\n";
        assert_eq!(outside_id(map, 0), Some(1000));
        assert_eq!(outside_id(map, 1), Some(300000));
        assert_eq!(outside_id(map, 65536), Some(365535));
        assert_eq!(outside_id(map, 65537), None);
        assert_eq!(outside_id("0 0 4294967295\n", 7), Some(7));
    }
}
