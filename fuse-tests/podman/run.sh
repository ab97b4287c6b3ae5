#!/usr/bin/env bash
# Real podman with layerfs as containers/storage's mount_program, compared with podman's
# native overlay driver (kernel overlayfs) as the reference, rootful and rootless.
#
#   bash fuse-tests/podman/run.sh          (as root; see README.md in this directory)
#
# For each mode (rootful, rootless) and driver (native, layerfs) it makes a private store
# in a temp dir (own --root, --runroot, storage.conf from drivers/containers-storage,
# containers.conf, registries.conf, policy.json; never the machine's default store),
# imports the fixture image and runs the scenarios below. What they record in
# results/MODE/DRIVER/*.txt must be identical between layerfs and native (the kernel is
# right where they differ), except for the lines known-differences.txt explains.
#
#   import   skopeo copy oci:FIXTURE -> containers-storage, image id and layers, the whole
#            image tree as `podman export` of a fresh container sees it, the root fs type
#   run      podman run --rm: read, write, delete, rename, hard-link lower files (in-container
#            checks: container/run-checks.sh)
#   changes  podman create + start (container/changes.sh), podman diff, podman export,
#            podman commit, podman diff of the image, what the committed image shows,
#            what the container sees when started again (its upper layer mounted afresh)
#   build    podman build of ./Containerfile FROM the fixture (delete a tree, opaque dir,
#            hard links), what the built image shows, podman export of it
#   teardown podman rm -af leaves no mount and no mount-program daemon behind
#   uidmap   podman run --uidmap (informational: reported, never fails the run)
#
# Exit status: 0 all passed and identical, 1 a scenario failed or results differ,
# 2 setup error. Knobs (environment): PODMAN_TEST_MODES ("rootful rootless"),
# PODMAN_TEST_DRIVERS ("native layerfs"; "fuse-overlayfs" adds the machine's fuse-overlayfs
# as a third store, compared with native like layerfs), PODMAN_TEST_USER (layerfs-podman),
# PODMAN_TEST_TIMEOUT (per podman command, 600 s), PODMAN_TEST_RESULTS (where results and
# logs are kept, default $CARGO_TARGET_DIR/podman-results), PODMAN_TEST_KEEP=1 (keep the
# temp dir; everything is still unmounted), PODMAN_TEST_STRICT=1 (known differences fail
# too), LAYERFS (the binary), SHARED_DIR, SCRATCH_PARENT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
if [[ -z ${SHARED_DIR:-} ]]; then # beside the repo clone in CI, /work/shared on a dev machine
    SHARED_DIR=/work/shared
    if [[ -d $REPO_ROOT/../shared/fixtures ]]; then SHARED_DIR=$(cd "$REPO_ROOT/../shared" && pwd); fi
fi
FIXTURE=$SHARED_DIR/fixtures/oci-multilayer
STORAGE_SNIPPET=$REPO_ROOT/drivers/containers-storage/storage.conf
LAYERFS=${LAYERFS:-$(cd "$REPO_ROOT" && realpath -m "${CARGO_TARGET_DIR:-target}/release/layerfs")}
MODES=${PODMAN_TEST_MODES:-rootful rootless}
DRIVERS=${PODMAN_TEST_DRIVERS:-native layerfs}
TEST_USER=${PODMAN_TEST_USER:-layerfs-podman}
CMD_TIMEOUT=${PODMAN_TEST_TIMEOUT:-600}
RESULTS_DIR=${PODMAN_TEST_RESULTS:-$(cd "$REPO_ROOT" && realpath -m "${CARGO_TARGET_DIR:-target}/podman-results")}
KEEP=${PODMAN_TEST_KEEP:-0}
IMAGE=localhost/fixture:latest
SAFE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PYTHON=/usr/bin/python3

T=''                # the run's temp dir
T0=''               # epoch seconds at start: later mtimes are the test's own
START=$SECONDS
USER_CREATED=0      # we made TEST_USER (and remove it again)
SUBIDS_ADDED=''     # " uid gid": subordinate ranges we gave an existing TEST_USER
FUSE_MODE=''        # /dev/fuse's mode before we opened it up for the test user
CACHE_CREATED=0     # rootful podman/skopeo made /var/lib/containers/cache (blob-info cache)
STORES=()           # stores set up so far, for the exit cleanup
SUMMARY=()          # "mode|driver|scenario|PASS/FAIL/INFO|detail"
FAILURES=0
SCENARIO_PID=''     # the scenario subshell running now (killed with its children on exit)

# the current store
S_MODE='' S_DRIVER='' S_DIR='' S_RUNROOT='' S_OUT='' S_LOG=''

log() { printf '[%s podman %s] %s\n' "$(date +%T)" "${S_MODE:+$S_MODE/$S_DRIVER}" "$*" >&2; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
die() { log "FATAL: $*"; exit 2; }

# ---------------------------------------------------------------- host and run setup

ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

check_host() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it makes stores, a test user, and mounts)"
    ensure_packages podman buildah skopeo runc uidmap fuse3 python3 util-linux passwd attr procps
    if [[ ! -x $LAYERFS ]] && command -v cargo >/dev/null; then
        log "building layerfs (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release --locked --bins) >&2 || die "cargo build failed"
    fi
    [[ -x $LAYERFS ]] || die "LAYERFS=$LAYERFS is not executable: cargo build --release first"
    [[ -f $FIXTURE/index.json ]] || die "fixture $FIXTURE missing (set SHARED_DIR)"
    grep -q '^[[:space:]]*mount_program[[:space:]]*=' "$STORAGE_SNIPPET" ||
        die "$STORAGE_SNIPPET has no mount_program line"
    [[ -c /dev/fuse ]] || modprobe fuse 2>/dev/null || true
    [[ -c /dev/fuse && $(stat -c '%t:%T' /dev/fuse) == a:e5 ]] || die "/dev/fuse missing or not 10:229"
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || die "kernel overlayfs is not available (the reference)"
    if [[ " $MODES " == *" rootless "* ]]; then
        [[ $(cat /proc/sys/user/max_user_namespaces) -gt 0 ]] || die "user namespaces are disabled"
        [[ -u /usr/bin/newuidmap ]] || getcap /usr/bin/newuidmap 2>/dev/null | grep -q cap_setuid ||
            die "newuidmap is neither setuid nor has cap_setuid"
    fi
}

# Hash the fixture's blobs against its manifest, then copy it where the test user can read it.
setup_fixture() {
    "$PYTHON" - "$FIXTURE" <<'EOF' || die "fixture $FIXTURE does not match its manifest"
import hashlib, json, os, sys
d = sys.argv[1]
def blob(dg):
    a, h = dg.split(":", 1)
    p = os.path.join(d, "blobs", a, h)
    s = hashlib.sha256(open(p, "rb").read()).hexdigest()
    if s != h:
        sys.exit("blob %s has sha256 %s" % (dg, s))
    return p
for m in json.load(open(os.path.join(d, "index.json")))["manifests"]:
    man = json.load(open(blob(m["digest"])))
    for b in [man["config"]] + man["layers"]:
        blob(b["digest"])
EOF
    cp -r "$FIXTURE" "$T/fixture"
    chmod -R a+rX,u+w "$T/fixture"
}

setup_run() {
    T0=$(date +%s)
    T=$(mktemp -d "${SCRATCH_PARENT:-/var/tmp}/lfpod.XXXXXX")
    # podman refuses a runroot longer than 50 characters
    [[ ${#T} -le 30 ]] || die "temp dir $T: path too long for podman's runroot; set SCRATCH_PARENT to a shorter dir"
    chmod 0755 "$T" # the test user must reach its store, the fixture and the binary
    mkdir -p "$T/bin"
    # A private copy: the repo may not be reachable by the test user, and it lets the
    # cleanup find exactly the daemons this run started (by /proc/PID/exe).
    install -m 0755 "$LAYERFS" "$T/bin/layerfs"
    install -m 0755 "$HERE/tarlist.py" "$T/bin/tarlist.py"
    setup_fixture
    [[ -d /var/lib/containers/cache ]] || CACHE_CREATED=1
    if [[ -e $RESULTS_DIR ]]; then
        [[ -f $RESULTS_DIR/.podman-results ]] || die "$RESULTS_DIR exists and is not a results dir of run.sh"
        rm -rf "$RESULTS_DIR"
    fi
    mkdir -p "$RESULTS_DIR" && touch "$RESULTS_DIR/.podman-results"
    log "temp dir $T, results in $RESULTS_DIR, layerfs $("$LAYERFS" --version | head -n1)"
}

setup_test_user() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        useradd --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$TEST_USER"
        USER_CREATED=1
    fi
    local u
    u=$(id -u "$TEST_USER")
    if ! grep -q "^$TEST_USER:" /etc/subuid; then
        usermod --add-subuids 300000-365535 "$TEST_USER"
        SUBIDS_ADDED+=" uid"
    fi
    if ! grep -q "^$TEST_USER:" /etc/subgid; then
        usermod --add-subgids 300000-365535 "$TEST_USER"
        SUBIDS_ADDED+=" gid"
    fi
    awk -F: -v n="$TEST_USER" '$1 == n && $3 >= 65536 { ok = 1 } END { exit !ok }' /etc/subuid ||
        die "$TEST_USER needs a subuid range of at least 65536 in /etc/subuid"
    awk -F: -v n="$TEST_USER" '$1 == n && $3 >= 65536 { ok = 1 } END { exit !ok }' /etc/subgid ||
        die "$TEST_USER needs a subgid range of at least 65536 in /etc/subgid"
    # /dev/fuse is 0600 on these hosts: rootless mount programs open it as the user.
    FUSE_MODE=$(stat -c %a /dev/fuse)
    chmod 0666 /dev/fuse
    runuser -u "$TEST_USER" -- sh -c ': <>/dev/fuse' || die "$TEST_USER cannot open /dev/fuse"
    log "test user $TEST_USER (uid $u), subuid $(grep "^$TEST_USER:" /etc/subuid | cut -d: -f2,3)"
}

# ---------------------------------------------------------------- stores

# store_init MODE DRIVER: a private store and config for one podman setup.
store_init() {
    S_MODE=$1 S_DRIVER=$2 S_DIR=$T/$1-$2 S_RUNROOT=$T/rr/$1-$2
    S_OUT=$RESULTS_DIR/$1/$2 S_LOG=$RESULTS_DIR/$1/$2/logs
    mkdir -p "$S_RUNROOT" "$S_DIR"/{root,tmp,home/.config/containers,xdg-run,work,net,logs} "$S_OUT" "$S_LOG"
    chmod 0700 "$S_DIR/xdg-run"
    STORES+=("$S_MODE|$S_DRIVER|$S_DIR")
    [[ $S_DRIVER == native ]] || write_mount_program
    write_storage_conf >"$S_DIR/storage.conf"
    cat >"$S_DIR/containers.conf" <<EOF
[containers]
# no CAP_SYS_RESOURCE on these hosts: podman's default nofile/nproc limits cannot be set
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
# hybrid cgroup v1: cgroupfs and runc (crun 1.8 refuses hybrid cgroups)
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
tmp_dir = "$S_DIR/tmp"
[network]
network_config_dir = "$S_DIR/net"
EOF
    cat >"$S_DIR/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF
    echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$S_DIR/home/.config/containers/policy.json"
    mkdir -p "$S_DIR/ctx"
    cp "$HERE/Containerfile" "$S_DIR/ctx/Containerfile"
    if [[ $S_MODE == rootless ]]; then
        chown -R "$TEST_USER:" "$S_DIR" "$S_RUNROOT"
    fi
    chmod -R a+rX "$S_DIR/ctx" "$S_DIR/storage.conf" "$S_DIR/containers.conf" "$S_DIR/registries.conf"
}

# The storage.conf of a store: drivers/containers-storage/storage.conf, the documented
# snippet, with this store's paths; for native, without its mount_program.
write_storage_conf() {
    awk -v native="$([[ $S_DRIVER == native ]] && echo 1)" -v mp="$S_DIR/bin/mount-program" \
        -v root="$S_DIR/root" -v runroot="$S_RUNROOT" '
        /^[[:space:]]*(graphroot|runroot|rootless_storage_path)[[:space:]]*=/ { next }
        /^[[:space:]]*mount_program[[:space:]]*=/ {
            if (!native) print "mount_program = \"" mp "\""
            next
        }
        { print }
        /^\[storage\][[:space:]]*$/ {
            print "graphroot = \"" root "\""
            print "runroot = \"" runroot "\""
            print "rootless_storage_path = \"" root "\""
        }' "$STORAGE_SNIPPET"
}

# mountopt of the snippet
snippet_mountopt() {
    sed -n 's/^[[:space:]]*mountopt[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$STORAGE_SNIPPET"
}

# The mount program: log how containers/storage runs it, then exec layerfs (exec, so
# that file descriptors, exit status and daemonizing are exactly layerfs's own).
write_mount_program() {
    mkdir -p "$S_DIR/bin"
    cat >"$S_DIR/bin/mount-program" <<EOF
#!/bin/sh
{
    echo "=== \$(date +%T.%N) uid=\$(id -u) cwd=\$PWD uid_map=\$(tr -s ' ' </proc/self/uid_map | tr '\n' ';')"
    env | grep -E '^(_CONTAINERS_|XDG_RUNTIME_DIR=)' | sort | sed 's/^/env: /'
    for a in "\$@"; do printf 'arg: %s\n' "\$a"; done
} >>"$S_DIR/logs/mount-program.log" 2>/dev/null
exec "$(mount_program_binary)" "\$@"
EOF
    chmod 0755 "$S_DIR/bin/mount-program"
    touch "$S_DIR/logs/mount-program.log"
    return 0
}

# What the mount-program wrapper of a store runs: our copy of layerfs, or (PODMAN_TEST_DRIVERS
# with fuse-overlayfs, for comparison) the fuse-overlayfs binary of the machine.
mount_program_binary() {
    case $S_DRIVER in
        layerfs) echo "$T/bin/layerfs" ;;
        fuse-overlayfs) command -v fuse-overlayfs || die "fuse-overlayfs is not installed" ;;
    esac
}

# as_user CMD...: run CMD as the store's user with the store's environment only.
as_user() {
    local env=(PATH="$SAFE_PATH" HOME="$S_DIR/home" XDG_RUNTIME_DIR="$S_DIR/xdg-run"
        XDG_CONFIG_HOME="$S_DIR/home/.config" XDG_DATA_HOME="$S_DIR/home/.local/share"
        CONTAINERS_CONF="$S_DIR/containers.conf" CONTAINERS_STORAGE_CONF="$S_DIR/storage.conf"
        CONTAINERS_REGISTRIES_CONF="$S_DIR/registries.conf" TMPDIR="$S_DIR/tmp" LC_ALL=C.UTF-8)
    if [[ $S_MODE == rootless ]]; then
        (cd "$S_DIR" && runuser -u "$TEST_USER" -- env -i "${env[@]}" timeout -k 10 "$CMD_TIMEOUT" "$@")
    else
        (cd "$S_DIR" && env -i "${env[@]}" timeout -k 10 "$CMD_TIMEOUT" "$@")
    fi
}

# --storage-opt replaces the options of storage.conf: repeat them
storage_opts() {
    [[ $S_DRIVER == native ]] || echo "overlay.mount_program=$S_DIR/bin/mount-program"
    local mo
    mo=$(snippet_mountopt)
    [[ -z $mo ]] || echo "overlay.mountopt=$mo"
}

# pod ARGS...: podman on the current store, never the machine's.
pod() {
    local args=(podman --root "$S_DIR/root" --runroot "$S_RUNROOT" --storage-driver overlay) o
    while IFS= read -r o; do args+=(--storage-opt "$o"); done < <(storage_opts)
    as_user "${args[@]}" "$@"
}

# The containers-storage transport spelled out: [driver@graphroot+runroot:options]. Its
# options are comma-separated, so mountopt (which needs none to import) is left out. The
# mount program matters: with one, containers/storage extracts layers with .wh. whiteouts.
storage_ref() {
    local opts=''
    [[ $S_DRIVER != native ]] && opts=":overlay.mount_program=$S_DIR/bin/mount-program"
    echo "containers-storage:[overlay@$S_DIR/root+$S_RUNROOT$opts]$1"
}

# ---------------------------------------------------------------- scenarios

# scenario NAME: runs scenario_NAME in a subshell (so `set -e` holds inside it) with its
# stderr in logs/NAME.log; records PASS or FAIL with the log's last lines.
scenario() {
    local name=$1 rc=0 t=$SECONDS
    log "scenario $name"
    (
        set -eE
        trap 'echo "FAILED (exit $?): $BASH_COMMAND" >&2' ERR
        "scenario_$name"
    ) 2>"$S_LOG/$name.log" &
    SCENARIO_PID=$!
    wait "$SCENARIO_PID" || rc=$?
    SCENARIO_PID=
    local took=$((SECONDS - t))
    if [[ $rc -eq 0 ]]; then
        local known=''
        [[ -s $S_LOG/known.txt ]] && known="; $(paste -sd';' "$S_LOG/known.txt")" && rm "$S_LOG/known.txt"
        SUMMARY+=("$S_MODE|$S_DRIVER|$name|PASS|${took}s$known")
    else
        FAILURES=$((FAILURES + 1))
        SUMMARY+=("$S_MODE|$S_DRIVER|$name|FAIL|${took}s; $(grep -v '^time=.*level=warning' "$S_LOG/$name.log" | tail -n 4 | tr '\n' ' ' | cut -c1-600)")
        rm -f "$S_LOG/known.txt"
        log "scenario $name FAILED; log: $S_LOG/$name.log"
        tail -n 20 "$S_LOG/$name.log" >&2
    fi
}

fail() { echo "$*" >&2; exit 1; }

# in-container scripts: lib.sh followed by the script itself
script() { cat "$HERE/container/lib.sh" "$HERE/container/$1"; }

tarlist() { "$PYTHON" "$T/bin/tarlist.py" "$@"; }

# upper_listing CONTAINER: how the container's changes are stored in its upper directory
# (whiteouts, opaque markers, the overlay xattrs): kept for the report, not compared.
upper_listing() {
    local up
    up=$(pod inspect --format '{{.GraphDriver.Data.UpperDir}}' "$1")
    (cd "$up" && find . -printf '%p %y %m %U:%G %s %D:%i %n\n' | LC_ALL=C sort)
    (cd "$up" && getfattr -R -P -h -d -m '^(trusted|user)\.' -e text . 2>/dev/null) || true
}

# export_list CONTAINER: `podman export` of it, listed. (To a file: rootless podman cannot
# open /dev/stdout when that is a pipe of root's.)
export_list() {
    rm -f "$S_DIR/work/export.tar"
    pod export -o "$S_DIR/work/export.tar" "$1"
    tarlist "$T0" <"$S_DIR/work/export.tar"
    rm -f "$S_DIR/work/export.tar"
}

scenario_import() {
    as_user skopeo copy --quiet "oci:$T/fixture:latest" "$(storage_ref "$IMAGE")" >&2
    pod images --format '{{.Repository}}:{{.Tag}} {{.ID}}' >"$S_OUT/import-images.txt"
    pod image inspect --format '{{.ID}} {{json .RootFS.Layers}} {{json .Config.Cmd}} {{.Size}}' "$IMAGE" \
        >"$S_OUT/import-image.txt"
    cat "$S_OUT/import-images.txt" "$S_OUT/import-image.txt" >&2
    # how podman sees the store: not compared, kept for the report
    pod info --format '{{.Store.GraphDriverName}} {{json .Store.GraphOptions}} {{json .Store.GraphStatus}}' \
        >"$S_LOG/podman-info.txt"
    # the root of a container is layerfs (FUSE) or kernel overlayfs, as asked
    local fstype
    fstype=$(pod run --rm --pull=never --network none "$IMAGE" \
        sh -c "awk '\$5 == \"/\" { for (i = 7; i <= NF; i++) if (\$i == \"-\") print \$(i + 1) }' /proc/self/mountinfo")
    echo "container root fs type: $fstype" >&2
    case $S_DRIVER:$fstype in
        layerfs:fuse* | fuse-overlayfs:fuse*) grep -q '^arg: ' "$S_DIR/logs/mount-program.log" || fail "mount program was not run" ;;
        native:overlay) ;;
        *) fail "root of the container is '$fstype', not what driver $S_DRIVER should give" ;;
    esac
    # the whole image as a fresh container shows it
    pod create --pull=never --name pristine "$IMAGE" true >/dev/null
    export_list pristine >"$S_OUT/import-export.txt"
    head -n1 "$S_OUT/import-export.txt" >&2
    pod rm pristine >/dev/null
}

# container_checks FILE RC: the in-container checks printed "ok NAME" or "FAIL NAME" into
# FILE and exited RC. Every FAIL fails the scenario, except, for a mount-program driver,
# those listed in known-differences.txt (they are reported).
container_checks() {
    local file=$1 rc=$2 fails unknown pat
    fails=$(grep '^FAIL ' "$file" || true)
    [[ $rc -eq 0 || -n $fails ]] || fail "podman exited $rc and no in-container check failed"
    [[ -n $fails ]] || return 0
    unknown=$fails
    if [[ $S_DRIVER != native ]] && pat=$(known_pattern "$(basename "$file" .txt)"); then
        # matched as the driver's side of a difference with native: "+FAIL name"
        local plus="+${fails//$'\n'/$'\n'+}"
        unknown=$(grep -Ev -- "$pat" <<<"$plus" | cut -c2- || true)
        grep -E -- "$pat" <<<"$plus" | sed 's/^+FAIL /known: /' >>"$S_LOG/known.txt" || true
    fi
    [[ -z $unknown ]] || fail "in-container checks failed: $(tr '\n' ';' <<<"$unknown")"
}

scenario_run() {
    local rc=0
    pod run --rm --pull=never --network none "$IMAGE" sh -c "$(script run-checks.sh)" \
        >"$S_OUT/run.txt" || rc=$?
    container_checks "$S_OUT/run.txt" "$rc"
}

scenario_changes() {
    pod create --pull=never --network none --name changed "$IMAGE" sh -c "$(script changes.sh)" >/dev/null
    pod start --attach changed >"$S_OUT/changes-output.txt"
    upper_listing changed >"$S_LOG/changes-upper.txt"
    pod diff changed | LC_ALL=C sort >"$S_OUT/changes-diff.txt"
    export_list changed >"$S_OUT/changes-export.txt"
    pod commit --quiet changed localhost/committed:latest >/dev/null
    pod diff localhost/committed:latest | LC_ALL=C sort >"$S_OUT/changes-commit-diff.txt"
    local rc=0
    pod run --rm --pull=never --network none localhost/committed:latest sh -c "$(script changes-view.sh)" \
        >"$S_OUT/changes-commit-view.txt" || rc=$?
    # the committed layer as a tar: how it encodes the changes (kept, not compared: with a
    # mount program containers/storage computes layers by comparing two mounted trees)
    rm -rf "$S_DIR/work/committed"
    pod save --quiet --format oci-dir -o "$S_DIR/work/committed" localhost/committed:latest
    tarlist --oci-layers "$S_DIR/work/committed" 5 "$T0" >"$S_LOG/changes-commit-layer.txt"
    container_checks "$S_OUT/changes-commit-view.txt" "$rc"
    # started again: the same upper layer, mounted afresh
    pod start --attach changed >"$S_OUT/changes-restart.txt"
}

scenario_build() {
    pod build --pull=never --network none --layers -t localhost/built:latest \
        -f "$S_DIR/ctx/Containerfile" "$S_DIR/ctx" >"$S_LOG/build-output.txt"
    grep '^BUILDOUT' "$S_LOG/build-output.txt" >"$S_OUT/build-steps.txt"
    local rc=0
    pod run --rm --pull=never --network none localhost/built:latest sh -c "$(script build-view.sh)" \
        >"$S_OUT/build-view.txt" || rc=$?
    pod create --pull=never --name built-ctr localhost/built:latest true >/dev/null
    export_list built-ctr >"$S_OUT/build-export.txt"
    pod rm built-ctr >/dev/null
    # (no `podman diff` of the image: with native overlay podman 4.3 fails on it, see
    # container/changes.sh; the new layers are listed instead, kept but not compared)
    rm -rf "$S_DIR/work/built"
    pod save --quiet --format oci-dir -o "$S_DIR/work/built" localhost/built:latest
    tarlist --oci-layers "$S_DIR/work/built" 5 "$T0" >"$S_LOG/build-layers.txt"
    container_checks "$S_OUT/build-view.txt" "$rc"
}

# Pids of the mount-program daemons (our copy of layerfs, or fuse-overlayfs) serving a
# mount of the current store: the store's path is in their command line.
store_daemons() {
    local p exe fo
    fo=$(command -v fuse-overlayfs || echo none)
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        [[ $exe == "$T/bin/layerfs" || $exe == "$fo" ]] || continue
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$S_DIR/" && echo "${p#/proc/}"
    done
    return 0
}

# Pids of the test user's processes started for the current store (rootless podman's pause
# process, conmon): their environment has this store's XDG_RUNTIME_DIR.
store_user_processes() {
    [[ $S_MODE == rootless ]] || return 0
    local p uid
    uid=$(id -u "$TEST_USER")
    for p in /proc/[0-9]*; do
        [[ $(stat -c %u "$p" 2>/dev/null) == "$uid" ]] || continue
        { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "XDG_RUNTIME_DIR=$S_DIR/xdg-run" && echo "${p#/proc/}"
    done
    return 0
}

scenario_teardown() {
    pod rm --all --force --time 0 >&2
    pod ps --all --external --format '{{.ID}} {{.Names}} {{.Status}}' >&2
    local left=''
    # Daemons exit after podman's lazy unmount, in their own time.
    for _ in $(seq 300); do
        left=$(findmnt -rn -o TARGET,FSTYPE | grep -F "$S_DIR/" || true)
        left+=$(for p in $(store_daemons); do echo " daemon $p: $(tr '\0' ' ' </proc/"$p"/cmdline | grep -o '[^ ]*/merged')"; done)
        [[ -z $left ]] && break
        sleep 0.1
    done
    [[ -z $left ]] || fail "left behind after podman rm -af:$left"
}

# podman run --uidmap: reported, does not fail the run.
scenario_uidmap() {
    local map=0:200000:65536 rc=0
    [[ $S_MODE == rootless ]] && map=0:1:65536 # ids of rootless podman's own namespace
    : >"$S_LOG/uidmap.txt"
    pod run --rm --pull=never --network none --uidmap "$map" --gidmap "$map" "$IMAGE" \
        sh -c 'id -u; stat -c "%u:%g %n" /etc/passwd /opt/deep/a; echo w >/opt/x/w && stat -c "%u:%g %n" /opt/x/w' \
        >>"$S_LOG/uidmap.txt" 2>&1 || rc=$?
    echo "exit status $rc (--uidmap $map --gidmap $map)" >>"$S_LOG/uidmap.txt"
    log "uidmap: exit status $rc"
    return 0
}

record_uidmap() {
    local status=INFO detail
    # the error podman reports ends with what the mount program said
    detail=$(grep -v 'level=warning' "$S_LOG/uidmap.txt" | sed -E 's/.*mount_data="[^"]*"//' |
        tr '\n' ' ' | cut -c1-400 || true)
    SUMMARY+=("$S_MODE|$S_DRIVER|uidmap|$status|$detail")
}

# The options containers/storage passed to the mount program, paths abstracted.
record_mount_options() {
    [[ $S_DRIVER != native ]] || return 0
    cp "$S_DIR/logs/mount-program.log" "$S_LOG/mount-program.log"
    local opts env
    opts=$(awk '/^arg: / { v = substr($0, 6); if (prev == "-o") print v; prev = v; next } { prev = "" }' \
        "$S_LOG/mount-program.log" |
        sed -E 's/lowerdir=[^,]*/lowerdir=<layers>/; s/upperdir=[^,]*/upperdir=<diff>/; s/workdir=[^,]*/workdir=<work>/' |
        sort | uniq -c | sed -E 's/^ *([0-9]+) /\1x /' | paste -sd';' -)
    SUMMARY+=("$S_MODE|$S_DRIVER|mount options|INFO|${opts:-(never run)}")
    env=$(grep '^env: _CONTAINERS' "$S_LOG/mount-program.log" | sed 's/^env: //' | sort -u | paste -sd' ' - || true)
    SUMMARY+=("$S_MODE|$S_DRIVER|mount env|INFO|${env:-(none)}")
}

run_store() {
    store_init "$1" "$2"
    say "$S_MODE podman, $S_DRIVER"
    scenario import
    if [[ ${SUMMARY[-1]} == *"|import|PASS|"* ]]; then
        scenario run
        scenario changes
        scenario build
        scenario_uidmap 2>"$S_LOG/uidmap.log"
        record_uidmap
    fi
    scenario teardown
    record_mount_options
    stop_store
    S_MODE='' S_DRIVER=''
}

# ---------------------------------------------------------------- comparison

# known_pattern NAME: one ERE of the known-differences.txt entries for results file NAME
# in the current mode (or "any"); fails if there is none, or with PODMAN_TEST_STRICT=1.
known_pattern() {
    [[ ${PODMAN_TEST_STRICT:-0} != 1 ]] || return 1
    local pat
    pat=$(awk -v f="$1" -v m="$S_MODE" '!/^[[:space:]]*(#|$)/ && ($1 == m || $1 == "any") && $2 == f {
            sub(/^[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+/, ""); print "(" $0 ")" }' \
        "$HERE/known-differences.txt" | paste -sd'|' -)
    [[ -n $pat ]] && echo "$pat"
}

# compare_mode MODE: every results file of each mount-program driver against native's.
# A differing line is a failure unless known-differences.txt lists it for that file.
compare_mode() {
    local mode=$1 driver a b f name lines pat unknown n
    S_MODE=$mode
    a=$RESULTS_DIR/$mode/native
    [[ -d $a ]] || return 0
    for driver in $DRIVERS; do
        [[ $driver != native ]] || continue
        b=$RESULTS_DIR/$mode/$driver
        [[ -d $b ]] || continue
        mkdir -p "$RESULTS_DIR/$mode/diff-$driver"
        for f in $( (cd "$a" && ls ./*.txt; cd "$b" && ls ./*.txt) 2>/dev/null | sort -u); do
            name=$(basename "$f" .txt)
            local out=$RESULTS_DIR/$mode/diff-$driver/$name.diff
            if diff -u --label "native/$name" --label "$driver/$name" "$a/$f" "$b/$f" >"$out" 2>&1; then
                rm -f "$out"
                SUMMARY+=("$mode|$driver|= $name|SAME|")
                continue
            fi
            # "-line" only native has, "+line" only the driver has
            lines=$(grep -E '^[-+]([^-+]|$)' "$out" || true)
            [[ -f $a/$f && -f $b/$f ]] || lines="(only one side has $name)"
            n=$(grep -c '' <<<"$lines" || true)
            unknown=$lines
            if pat=$(known_pattern "$name"); then
                unknown=$(grep -Ev -- "$pat" <<<"$lines" || true)
            fi
            if [[ -z $unknown ]]; then
                SUMMARY+=("$mode|$driver|= $name|KNOWN|$n differing lines, all in known-differences.txt: $out")
            else
                FAILURES=$((FAILURES + 1))
                SUMMARY+=("$mode|$driver|= $name|DIFFERENT|$(grep -c '' <<<"$unknown" || true) of $n differing lines unexplained: $out")
                say "$mode: $name differs (native -> $driver)"
                head -n 60 "$out" >&2
            fi
        done
    done
}

print_summary() {
    say "summary"
    local line mode drv scen status detail
    for line in "${SUMMARY[@]}"; do
        IFS='|' read -r mode drv scen status detail <<<"$line"
        printf '%-9s %-15s %-26s %-9s %s\n' "$mode" "$drv" "$scen" "$status" "$detail"
    done
    printf '\npodman %s, buildah %s, skopeo %s, runc %s, kernel %s\n' \
        "$(podman --version | awk '{print $3}')" "$(buildah --version | awk '{print $3}')" \
        "$(skopeo --version | awk '{print $3}')" "$(runc --version | awk 'NR==1 {print $3}')" "$(uname -r)"
    printf 'RESULT suite=podman failures=%d seconds=%d results=%s\n' "$FAILURES" "$((SECONDS - START))" "$RESULTS_DIR"
}

# ---------------------------------------------------------------- cleanup

# Stop everything of the current store: containers, mounts, rootless podman's pause
# process (its user and mount namespaces go with it), this store's layerfs daemons.
stop_store() {
    [[ -n $S_DIR && -d $S_DIR ]] || return 0
    pod rm --all --force --time 0 >/dev/null 2>&1 || true
    local p m
    # rootless podman's pause process (and anything else left of this store's podman)
    for p in $(store_user_processes); do kill -KILL "$p" 2>/dev/null || true; done
    for p in $(store_daemons); do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.2
    for p in $(store_daemons); do kill -KILL "$p" 2>/dev/null || true; done
    while IFS= read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
    done < <(findmnt -rn -o TARGET | grep -F "$S_DIR/" | sort -r)
    return 0
}

# descendants PID: the pids of PID's children, grandchildren, ...
descendants() {
    local p kids
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null)
    for p in $kids; do
        echo "$p"
        descendants "$p"
    done
}

# An interrupted run: stop the scenario still running (its podman commands run in their
# own process groups under `timeout`, so they are signalled one by one).
stop_scenario() {
    [[ -n $SCENARIO_PID ]] || return 0
    local pids p
    pids="$SCENARIO_PID $(descendants "$SCENARIO_PID")"
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    sleep 2
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    wait "$SCENARIO_PID" 2>/dev/null
    return 0
}

cleanup() {
    local rc=$? s
    set +e
    stop_scenario
    for s in "${STORES[@]}"; do
        IFS='|' read -r S_MODE S_DRIVER S_DIR <<<"$s"
        S_RUNROOT=$T/rr/$S_MODE-$S_DRIVER
        stop_store
    done
    if [[ -n $T && -d $T ]]; then
        findmnt -rn -o TARGET | grep -F "$T/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
        if [[ $KEEP == 1 ]]; then
            log "kept $T"
        else
            rm -rf --one-file-system "$T"
        fi
    fi
    [[ -n $FUSE_MODE ]] && chmod "$FUSE_MODE" /dev/fuse
    if [[ $USER_CREATED == 1 ]]; then
        userdel "$TEST_USER" || log "could not remove the test user $TEST_USER"
    else
        [[ $SUBIDS_ADDED == *uid* ]] && usermod --del-subuids 300000-365535 "$TEST_USER"
        [[ $SUBIDS_ADDED == *gid* ]] && usermod --del-subgids 300000-365535 "$TEST_USER"
    fi
    [[ $CACHE_CREATED == 1 ]] && rm -rf /var/lib/containers/cache && rmdir /var/lib/containers 2>/dev/null
    exit "$rc"
}

# ---------------------------------------------------------------- main

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    check_host
    setup_run
    [[ " $MODES " == *" rootless "* ]] && setup_test_user
    local mode driver
    for mode in $MODES; do
        for driver in $DRIVERS; do
            run_store "$mode" "$driver"
        done
        compare_mode "$mode"
        S_MODE=''
    done
    print_summary
    [[ $FAILURES -eq 0 ]] || exit 1
}

main "$@"
