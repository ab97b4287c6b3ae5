//! Containers whose root is not a store image: the fixture's layer dirs
//! given as `--lower` (with volumes, env and workdir), and OCI bundles,
//! rootful and rootless, with what a bundle asks for that the runtime
//! cannot honour refused by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::harness::*;

/// The fixture's bottom layer (Debian minbase itself) as a bundle root,
/// from the store at `store` as `uc` (a `unionctl` on it) lists it.
fn bottom_layer(store: &Path, mut uc: Command) -> PathBuf {
    let images = run(uc.args(["images", "--json"]));
    fixture_layers(store, &images)
        .into_iter()
        .next()
        .expect("fixture layers")
}

#[test]
fn lower_dirs_and_volumes() {
    let n = name("lower");
    // The fixture's layers from the store, top first.
    let lowers = lower_args(store(), &run(uc().args(["images", "--json"])));
    let scratch = Scratch::new("rt-vol");
    let vol = scratch.dir("vol");
    let ro = scratch.dir("ro");
    std::fs::write(ro.join("r"), "readonly\n").expect("write");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--name".into(), n.clone()];
    args.extend(lowers);
    args.extend([
        "--volume".to_string(),
        format!("{}:/data", vol.display()),
        "--volume".to_string(),
        format!("{}:/in/ro:ro", ro.display()),
        "--env".to_string(),
        "GREETING=hi there".to_string(),
        "--workdir".to_string(),
        "/data".to_string(),
        "--".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        "grep -h ^ID= /etc/os-release; echo \"$GREETING\" > out; pwd; cat /in/ro/r; \
             echo no > /in/ro/w 2>/dev/null || echo ro-refused"
            .to_string(),
        n.clone(),
    ]);
    let out = run(uc().args(&args));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(s, "ID=debian\n/data\nreadonly\nro-refused\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).ok().as_deref(),
        Some("hi there\n")
    );
    assert!(!ro.join("w").exists());
    assert_clean(&n);
    assert!(!state_dir(&n).exists());
}

#[test]
fn an_oci_bundle_runs_with_its_config() {
    let n = name("bundle");
    let scratch = Scratch::new("rt-bundle");
    let bundle = scratch.dir("b");
    let shared = scratch.dir("shared");
    std::fs::write(shared.join("f"), "from the host\n").expect("write");
    let config = |extra_mount: serde_json::Value, extra_ns: serde_json::Value| {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": bottom_layer(store(), uc()), "readonly": false},
            "hostname": "bundled",
            "process": {
                "cwd": "/tmp",
                "user": {"uid": 0, "gid": 0},
                "env": ["PATH=/usr/bin:/bin", "FROM_CONFIG=yes"],
                "args": ["sh", "-c",
                    "hostname; pwd; echo $FROM_CONFIG; cat /mnt/shared/f; \
                     grep -c : /proc/net/dev; \
                     i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done", &n]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/mnt/shared", "type": "bind", "source": shared,
                 "options": ["rbind", "ro"]},
                extra_mount
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, extra_ns],
                "resources": {"pids": {"limit": 20}, "memory": {"limit": 104857600}}
            }
        })
    };
    let write = |c: serde_json::Value| {
        std::fs::write(bundle.join("config.json"), c.to_string()).expect("write config")
    };
    let b = bundle.to_string_lossy().into_owned();
    let same_bind = serde_json::json!({"destination": "/mnt/shared", "type": "bind",
        "source": shared, "options": ["rbind", "ro"]});
    write(config(
        same_bind.clone(),
        serde_json::json!({"type": "uts"}),
    ));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    let s = text(&out.stdout);
    let err = text(&out.stderr);
    // The fork loop hits the bundle's pids limit.
    assert!(!out.status.success(), "{s}");
    assert!(err.contains("fork"), "{err}");
    assert!(
        s.starts_with("bundled\n/tmp\nyes\nfrom the host\n1\n"),
        "{s}\n{err}"
    );
    assert_clean(&n);
    // What it cannot honour is refused by name, before anything is made.
    write(config(
        serde_json::json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs"}),
        serde_json::json!({"type": "uts"}),
    ));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("tmpfs"), "{}", text(&out.stderr));
    write(config(same_bind, serde_json::json!({"type": "user"})));
    let out = run_ct(&n, &["--rm", "--bundle", &b]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("user namespaces"),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&n);
    assert!(!state_dir(&n).exists());
}

/// An OCI bundle runs rootless too, its root (the rootless fixture's
/// bottom layer) as the lower layer.
#[test]
fn rootless_an_oci_bundle_runs_with_its_config() {
    let u = rootless_user();
    let n = name("rl-bundle");
    let bottom = bottom_layer(rootless_store(), ruc());
    let scratch = Scratch::new("rt-rl-bundle");
    let bundle = scratch.dir("b");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": bottom},
        "hostname": "bundled",
        "process": {
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/usr/bin:/bin", "FROM_CONFIG=yes"],
            "args": ["sh", "-c", "hostname; pwd; echo $FROM_CONFIG; id -u; grep -c : /proc/net/dev", &n]
        },
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "uts"}]}
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("write config");
    std::os::unix::fs::chown(&scratch.root, Some(u.uid), Some(u.gid)).expect("chown");
    let out = run(ruc()
        .args(["run", "--rm", "--name", &n, "--bundle"])
        .arg(&bundle));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bundled\n/tmp\nyes\n0\n1\n");
    assert_clean_rootless(&n);
    assert!(!rootless_state_dir(u, &n).exists());
}
