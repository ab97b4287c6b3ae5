#!/usr/bin/env bash
# fsx.sh TARGET: fsx-rs 0.3.x data-integrity runs on a fresh union mount, one RESULT line each:
#   file=upper       a file fsx creates (it lives in the upper layer)
#   file=lower       a file that starts in the lower layer; fsx opens it O_CREAT|O_TRUNC, so
#                    this covers copy-up on a truncating open and then the copied-up file
#   file=lower-keep  a lower file opened WITHOUT O_TRUNC (fsx blockmode): full-data copy-up;
#                    fsx zeroes [0,flen) and never resizes, and we check [flen,EOF) still
#                    holds the lower content afterwards. fsx has no mode that models
#                    pre-existing data, so this is the closest to "starts from lower content".
# Env: FSX_OPS (100000), FSX_KEEP_OPS (=FSX_OPS), FSX_SEED (fixed; "random" draws one, printed), FSX_CONFIG,
#      FSX_ARTIFACTS (dir for fsx's .fsxlog/.fsxgood on failure; default: scratch, deleted),
#      FSX_TIMEOUT (1800 s per run).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

suite_init fsx "${1:-}"
OPS=${FSX_OPS:-100000}
KEEP_OPS=${FSX_KEEP_OPS:-$OPS}
# A fixed seed by default, so CI is reproducible: fsx-rs 0.3.2 itself fails
# some seeds on any filesystem (seed 1020998940 issues a zero-length
# posix_fallocate at op 55397, gets EINVAL from the VFS and gives up, on
# plain ext4 too). FSX_SEED=random explores; check a failing seed on a
# plain directory before blaming the union.
SEED=${FSX_SEED:-3367731486}
[[ $SEED == random ]] && SEED=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
CONFIG=${FSX_CONFIG:-$SHARED_DIR/suites/fsx-full.toml}
[[ -r $CONFIG ]] || die "fsx config $CONFIG not readable (set FSX_CONFIG)"
need_tool fsx cmp
[[ $(fsx --version) == "fsx 0.3."* ]] || die "need fsx 0.3.x, have: $(fsx --version)"
FLEN=$(awk -F' *= *' '$1 == "flen" { print $2 + 0 }' "$CONFIG")
FLEN=${FLEN:-262144}

scratch_setup
ART=${FSX_ARTIFACTS:-$SCRATCH/artifacts}
mkdir -p "$ART"
head -c $((384 * 1024)) /dev/urandom >"$LOWER/fsx-lower.bin"
head -c $((FLEN * 2)) /dev/urandom >"$LOWER/sub/fsx-keep.bin"
lower_snapshot

# blockmode variant of the config: no O_TRUNC at open, so no size-changing ops allowed.
KEEP_CONFIG=$SCRATCH/fsx-keep.toml
{
    echo "blockmode = true"
    echo "nosizechecks = true"
    sed -E 's/^(close_open|truncate|posix_fallocate) *=.*/\1 = 0/' "$CONFIG"
} >"$KEEP_CONFIG"

union_mount

failures=0
# run_fsx NAME PATH OPS CONFIG [CHECK]: one fsx run, then CHECK (a command), then its RESULT line.
run_fsx() {
    local name=$1 file=$2 ops=$3 conf=$4 check=${5:-true} errlog start secs rc mis status=ok
    errlog=$ART/fsx-$name.stderr
    log "fsx $name: $file, $ops ops, seed $SEED"
    start=$(now)
    set +e
    guarded "${FSX_TIMEOUT:-1800}" fsx -N "$ops" -S "$SEED" -f "$conf" -P "$ART" "$file" >/dev/null 2>"$errlog"
    rc=$?
    set -e
    secs=$(elapsed "$start")
    mis=$(grep -cE 'miscompare:|Mapped non-zero data past EoF|Size error' "$errlog" || true)
    if ((rc != 0)); then
        status=fail
        log "fsx $name FAILED (rc=$rc), full log: $errlog"
        grep -E 'miscompare|Size error|Mapped non-zero|panicked|short (read|write)|Using seed' "$errlog" >&2 || true
        tail -n 20 "$errlog" >&2
    fi
    $check "$file" || status=fail
    [[ $status == ok ]] || failures=$((failures + 1))
    result "file=$name ops=$ops seconds=$secs ops_per_sec=$(awk -v n="$ops" -v s="$secs" \
        'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }') miscompares=$mis status=$status seed=$SEED"
}

# blockmode never resizes and only touches [0,flen): the rest must still be the lower data.
keep_tail_intact() {
    local orig=$LOWER/sub/fsx-keep.bin
    if [[ $(stat -c %s "$1") -ne $(stat -c %s "$orig") ]] ||
        ! cmp <(tail -c +$((FLEN + 1)) "$orig") <(tail -c +$((FLEN + 1)) "$1"); then
        log "lower-keep: size or bytes past flen differ from the lower original (copy-up lost data)"
        return 1
    fi
}

run_fsx upper "$MNT/fsx-upper.bin" "$OPS" "$CONFIG"

cmp "$LOWER/fsx-lower.bin" "$MNT/fsx-lower.bin" || die "lower file reads back wrong through the mount"
run_fsx lower "$MNT/fsx-lower.bin" "$OPS" "$CONFIG"

cmp "$LOWER/sub/fsx-keep.bin" "$MNT/sub/fsx-keep.bin" || die "lower file reads back wrong through the mount"
run_fsx lower-keep "$MNT/sub/fsx-keep.bin" "$KEEP_OPS" "$KEEP_CONFIG" keep_tail_intact

mount_alive || die "mount is dead after fsx"
union_umount || die "unclean unmount"
lower_verify
((failures == 0)) || exit 1
