#!/usr/bin/env bash
# stress.sh TARGET [SECONDS]: stress-ng filesystem stressors (dir dentry rename link symlink
# xattr hdd) with --verify, each SECONDS long (default 20), temp files in a directory that
# starts in the lower layer. Fails on any stressor failure, skip, verify error or leftover
# temp file, dead mount or unclean unmount.
# Env: STRESS_MODE=parallel (default: all stressors at once, ~SECONDS total) or sequential
#      (one after another, ~7*SECONDS); STRESS_INSTANCES (1 per stressor); STRESS_HDD_BYTES (256m).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

suite_init stress "${1:-}"
DURATION=${2:-${STRESS_SECONDS:-20}}
MODE=${STRESS_MODE:-parallel}
INSTANCES=${STRESS_INSTANCES:-1}
STRESSORS=(dir dentry rename link symlink xattr hdd)
[[ $DURATION =~ ^[0-9]+$ ]] || die "SECONDS must be an integer, got '$DURATION'"
[[ $MODE == parallel || $MODE == sequential ]] || die "STRESS_MODE must be parallel or sequential"
need_tool stress-ng
VERSION=$(stress-ng --version | awk '{ print $3 }')

scratch_setup
lower_snapshot
union_mount
TEMP=$MNT/sub/stress   # "sub" is a lower dir: the first create in it copies it up
mkdir "$TEMP"

failing=()
# run_stress STRESSOR...: one stress-ng invocation; per-stressor RESULT lines; collects failures.
run_stress() {
    local s args=() rc out=$SCRATCH/stress-ng.$1.log problems
    for s in "$@"; do args+=("--$s" "$INSTANCES"); done
    log "stress-ng $VERSION: $* for ${DURATION}s in $TEMP"
    set +e
    guarded $((DURATION * 3 + 120)) stress-ng "${args[@]}" --verify --timeout "${DURATION}s" \
        --temp-path "$TEMP" --hdd-bytes "${STRESS_HDD_BYTES:-256m}" --metrics-brief >"$out" 2>&1
    rc=$?
    set -e
    # 0.15 prints no per-stressor pass/fail table: failures show as "fail:"/"error:" lines,
    # skips as "skipping stressor"/"will be skipped", and a non-zero exit status.
    problems=$(grep -E 'stress-ng: (fail|error):|skipp|unsuccessful' "$out" || true)
    for s in "$@"; do
        awk -v s="$s" -v t="$TARGET" '$1 == "stress-ng:" && $2 == "metrc:" && $4 == s && $5 ~ /^[0-9]+$/ {
            printf "RESULT suite=stress target=%s stressor=%s bogo_ops=%s bogo_ops_per_sec=%s\n", t, s, $5, $9 }' "$out"
    done
    if ((rc != 0)) || [[ -n $problems ]]; then
        log "stress-ng $* FAILED (exit $rc):"
        if [[ -n $problems ]]; then echo "$problems" >&2; else tail -n 20 "$out" >&2; fi
        local before=${#failing[@]}
        for s in "$@"; do
            if grep -qE "\] $s( stressor|:)|\($s\)" <<<"$problems"; then failing+=("$s"); fi
        done
        if ((${#failing[@]} == before)); then failing+=("stress-ng-exit-$rc"); fi
    fi
}

start=$(now)
if [[ $MODE == parallel ]]; then
    run_stress "${STRESSORS[@]}"
else
    for s in "${STRESSORS[@]}"; do run_stress "$s"; done
fi
secs=$(elapsed "$start")

# Afterwards: the mount still answers, stress-ng left nothing behind (its tmp-stress-ng-*
# dirs are removed by stress-ng itself, so leftovers mean unlink/rmdir misbehaved), and the
# unmount is clean (not busy, no lazy detach).
if mount_alive; then
    leftovers=$(find "$TEMP" -mindepth 1 2>&1 | head -n 5 || true)
    if [[ -n $leftovers ]]; then
        log "leftover files under $TEMP after stress-ng:"
        echo "$leftovers" >&2
        failing+=(leftovers)
    fi
    rmdir "$TEMP" || failing+=(rmdir)
    if union_umount; then lower_verify; else failing+=(umount); fi
else
    log "mount is dead after stress-ng"
    failing+=(mount-dead)
fi
list=$(IFS=,; echo "${failing[*]:-none}")
result "stress_ng=$VERSION mode=$MODE duration=$DURATION stressors=${#STRESSORS[@]} failed=${#failing[@]} failing=$list seconds=$secs"
((${#failing[@]} == 0)) || exit 1
