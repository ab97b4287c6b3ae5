# shellcheck shell=bash
# Shared helpers for the external-suite runners (pjdfstest.sh, fsx.sh, stress.sh).
# Use: suite_init SUITE TARGET; scratch_setup; [add lower files]; lower_snapshot; union_mount;
# run; mount_alive; union_umount; lower_verify; result ... The EXIT trap always unmounts
# (forcing it if need be) and removes the scratch dir.
# Targets: ext4 (bind mount of a plain ext4 dir holding a copy of the lower files),
# overlay (kernel overlayfs), layerfs (FUSE, via $UNIONCTL).
# Exit status of every runner: 0 passed, 1 the suite found failures, 2 setup/harness error.

SUITES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SUITES_DIR/../.." && pwd)
if [[ -z ${SHARED_DIR:-} ]]; then   # beside the repo clone in CI, /work/shared on a dev machine
    SHARED_DIR=/work/shared
    if [[ -d $REPO_ROOT/../shared/suites ]]; then SHARED_DIR=$(cd "$REPO_ROOT/../shared" && pwd); fi
fi
# CI builds into $CARGO_TARGET_DIR (outside the clone); otherwise the repo's target/.
UNIONCTL=${UNIONCTL:-$(cd "$REPO_ROOT" && realpath -m "${CARGO_TARGET_DIR:-target}/release/unionctl")}
TOOLS_BIN=${TOOLS_BIN:-${CARGO_INSTALL_ROOT:-$HOME/.cargo}/bin}
PATH=$TOOLS_BIN:$PATH
export SHARED_DIR UNIONCTL TOOLS_BIN PATH

SUITE='' TARGET='' SCRATCH='' LOWER='' UPPER='' WORK='' MNT='' LOWER_SUM='' WATCHDOG=''
EXTRA_MOUNTS=()   # other mounts a runner makes (pjdfstest's tmpfs), unmounted on exit

log() { printf '[%s %s %s] %s\n' "$(date +%T)" "${SUITE:-suite}" "${TARGET:-?}" "$*" >&2; }
die() { log "FATAL: $*"; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
result() { echo "RESULT suite=$SUITE target=$TARGET $*"; }   # the machine-readable line
need_tool() {
    local t
    for t; do command -v "$t" >/dev/null || die "'$t' not found: run fuse-tests/suites/install-tools.sh"; done
}

suite_init() {
    SUITE=$1 TARGET=${2:-}
    case $TARGET in
        ext4 | overlay | layerfs) ;;
        *) die "usage: $0 ext4|overlay|layerfs ...  (got '$TARGET')" ;;
    esac
    [[ $(id -u) -eq 0 ]] || die "must run as root (mounts, pjdfstest user switching)"
    need_tool findmnt sha256sum setsid
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# layerfs never skips: /dev/fuse must be char 10:229 and open read-write.
check_dev_fuse() {
    [[ -c /dev/fuse ]] || die "/dev/fuse missing (modprobe fuse; container without /dev/fuse?)"
    [[ $(stat -c '%t:%T' /dev/fuse) == a:e5 ]] || die "/dev/fuse is not device 10:229"
    { : <>/dev/fuse; } 2>/dev/null || die "/dev/fuse cannot be opened read-write"
    grep -qw fuse /proc/filesystems || die "kernel has no fuse filesystem"
    [[ -x $UNIONCTL ]] || die "UNIONCTL=$UNIONCTL not executable (cargo build --release?)"
}

# LOWER gets a few files, a subdir, a hard link and a symlink ("files that start in a lower layer").
scratch_setup() {
    # Short name: pjdfstest binds unix sockets deep below it (sun_path is 108 bytes).
    SCRATCH=$(mktemp -d "${SCRATCH_PARENT:-${TMPDIR:-/tmp}}/lfs.XXXXXX")
    chmod 0755 "$SCRATCH"   # pjdfstest switches to unprivileged users: keep it traversable
    LOWER=$SCRATCH/lower UPPER=$SCRATCH/upper WORK=$SCRATCH/work MNT=$SCRATCH/mnt
    mkdir -m 0755 "$LOWER" "$UPPER" "$WORK" "$MNT" "$LOWER/sub" "$LOWER/sub/deeper"
    echo "lower file" >"$LOWER/lower.txt"
    head -c 65536 /dev/urandom >"$LOWER/sub/lower.bin"
    echo "deep" >"$LOWER/sub/deeper/deep.txt"
    ln "$LOWER/lower.txt" "$LOWER/sub/lower-link.txt"
    ln -s ../lower.txt "$LOWER/sub/lower-symlink"
    if [[ $TARGET == ext4 && $(stat -f -c %T "$SCRATCH") != ext2/ext3 ]]; then
        die "scratch $SCRATCH is not on ext4: set SCRATCH_PARENT"
    fi
}

# Lower layers are immutable: checksum them before mounting, verify after unmounting.
lower_snapshot() {
    LOWER_SUM=$SCRATCH/lower.sha256
    (cd "$LOWER" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$LOWER_SUM"
}
lower_verify() { (cd "$LOWER" && sha256sum --quiet -c "$LOWER_SUM") >&2 || die "lower layer was modified"; }

union_mount() {
    case $TARGET in
        ext4) cp -a "$LOWER/." "$UPPER/" && mount --bind "$UPPER" "$MNT" ;;
        overlay) mount -t overlay overlay \
            -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK${OVERLAY_OPTS:+,$OVERLAY_OPTS}" "$MNT" ;;
        layerfs) check_dev_fuse
            # LAYERFS_OPTS: extra -o options (e.g. passthrough=0 for the non-passthrough path)
            "$UNIONCTL" mount --lower "$LOWER" --upper "$UPPER" --work "$WORK" \
                ${LAYERFS_OPTS:+-o "$LAYERFS_OPTS"} "$MNT" ;;
    esac
    is_mounted "$MNT" || die "$TARGET mount at $MNT did not appear"
    log "mounted: $(findmnt -n -o FSTYPE,OPTIONS "$MNT")"
    # Any command on a hung FUSE mount can block (getconf, cmp, find...): past the deadline,
    # abort the connection so that everything fails and the runner exits.
    if [[ $TARGET == layerfs ]]; then
        deadline $$ "${SUITE_TIMEOUT:-3600}" abort_fuse "$MNT" &
        WATCHDOG=$!
    fi
    mount_alive || die "fresh $TARGET mount is not usable"
}

# The mount answers (30 s per step): stat, readdir, a lower file reads back, create + remove.
# shellcheck disable=SC2016 # the inner sh expands $1
mount_alive() {
    local t='guarded 30'
    is_mounted "$MNT" && $t stat "$MNT" >/dev/null && $t ls "$MNT/sub" >/dev/null &&
        [[ $($t cat "$MNT/lower.txt") == "lower file" ]] &&
        $t sh -c 'echo probe >"$1/.alive-probe" && rm "$1/.alive-probe"' sh "$MNT"
}

# Clean unmount: no lazy detach, no retry; returns non-zero otherwise (the EXIT trap forces it).
union_umount() {
    local rc=0
    if [[ $TARGET == layerfs ]]; then guarded 60 "$UNIONCTL" umount "$MNT" || rc=$?
    else guarded 60 umount "$MNT" || rc=$?; fi
    ((rc == 0)) || { log "unmount of $MNT failed (exit $rc: busy, or daemon gone?)"; return 1; }
    ! is_mounted "$MNT" || { log "$MNT still mounted after unmount"; return 1; }
}

# Reads the mount table only: stat() on a hung FUSE mount would block.
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# Fail every pending request of a FUSE mount, so processes stuck on it (D state) can exit.
abort_fuse() {
    local minor ctl=/sys/fs/fuse/connections ours=''
    minor=$(awk -v m="$1" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo)
    [[ -n $minor ]] || return 0
    if ! is_mounted "$ctl"; then mount -t fusectl fusectl "$ctl" && ours=1; fi
    if [[ -w $ctl/$minor/abort ]]; then log "aborting FUSE connection $minor"; echo 1 >"$ctl/$minor/abort"; fi
    if [[ -n $ours ]]; then umount "$ctl"; fi
}

# deadline PID SECONDS CMD...: run CMD once PID has lived SECONDS more; return when PID ends.
deadline() {
    local pid=$1 end=$((SECONDS + $2))
    shift 2
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= end)); then log "still running after the deadline: $*"; "$@"; return; fi
        sleep 1
    done
}

# Kill a process group, the union's FUSE connection first (layerfs): with requests pending,
# plain signals (and `timeout`) can wait forever on a D-state child.
kill_group() {
    if [[ $TARGET == layerfs ]]; then abort_fuse "$MNT" || true; fi
    kill -TERM -- "-$1" 2>/dev/null || return 0
    sleep 10
    kill -KILL -- "-$1" 2>/dev/null || true
}

# guarded SECONDS CMD...: run CMD in its own process group, killed after SECONDS.
guarded() {
    local secs=$1 pid wd rc
    shift
    setsid "$@" &
    pid=$!
    deadline "$pid" "$secs" kill_group "$pid" &
    wd=$!
    wait "$pid" && rc=0 || rc=$?
    kill "$wd" 2>/dev/null || true
    wait "$wd" 2>/dev/null || true
    return "$rc"
}

# EXIT trap: whatever happened, leave no mount and no scratch dir behind.
on_exit() {
    local rc=$? m
    set +e
    if [[ -n $WATCHDOG ]]; then kill "$WATCHDOG" 2>/dev/null; fi
    for m in "${EXTRA_MOUNTS[@]}" "$MNT"; do
        if [[ -z $m ]] || ! is_mounted "$m"; then continue; fi
        log "cleanup: unmounting $m"
        if [[ $m == "$MNT" && $TARGET == layerfs ]]; then
            guarded 30 "$UNIONCTL" umount "$MNT" || { abort_fuse "$MNT"; fusermount3 -uz "$MNT"; }
        fi
        if is_mounted "$m"; then guarded 30 umount "$m" || umount -l "$m"; fi
    done
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        if awk -v d="$SCRATCH/" 'index($5, d) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            log "cleanup: mounts remain under $SCRATCH, not removing it"
            rc=2
        else
            rm -rf --one-file-system "$SCRATCH"
        fi
    fi
    exit "$rc"
}
