//! Capabilities: the default container set (the one runc's default spec
//! and Docker grant), the bounding set trimmed to it, and no_new_privs.
//! Plain prctl/capset through libc: a crate would add a dependency for
//! four syscalls.

use std::io;

/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// The default set as a 64-bit mask (what /proc/PID/status shows as CapEff
/// for a root process in the container: 00000000a80425fb).
pub fn default_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// The highest capability this kernel knows (read before pivot_root).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Drops every capability outside `mask` from the bounding set, and sets
/// the effective, permitted and inheritable sets to `mask`. A later switch
/// to a non-root uid clears effective and permitted, as for any process.
pub fn restrict(mask: u64, last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap.min(63) {
        if mask & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = io::Error::last_os_error();
                // A cap this kernel does not know.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    let lo = mask as u32;
    let hi = (mask >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: header and two data structs, as capset(2) wants for v3.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_mask_matches_the_usual_container_set() {
        assert_eq!(super::default_mask(), 0xa804_25fb);
    }
}
