#!/usr/bin/env bash
# pjdfstest.sh TARGET [OUTFILE]: run pjdfstest 0.2.x (POSIX conformance) on a fresh union mount.
# OUTFILE gets one "test-name status" line per test (status: pass fail skip xfail xpass),
# sorted, so two targets can be diffed (see pjdfstest-compare.sh); the raw log goes to OUTFILE.log.
# Exit: 0 all passed, 1 some test failed (OUTFILE still written), 2 harness error.
# Env: PJDFSTEST_CONFIG (default shared/suites/pjdfstest.toml), PJDFSTEST_TIMEOUT (900 s).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

suite_init pjdfstest "${1:-}"
OUTFILE=${2:-}
CONFIG=${PJDFSTEST_CONFIG:-$SHARED_DIR/suites/pjdfstest.toml}
[[ -r $CONFIG ]] || die "pjdfstest config $CONFIG not readable (set PJDFSTEST_CONFIG)"
need_tool pjdfstest
[[ $(pjdfstest --version) == "pjdfstest 0.2."* ]] || die "need pjdfstest 0.2.x, have: $(pjdfstest --version)"
for u in nobody daemon; do id "$u" >/dev/null || die "user $u (dummy_auth in $CONFIG) missing"; done

scratch_setup
lower_snapshot
union_mount

# Secondary fs for the EXDEV tests: a tmpfs, never the fs under test.
SECONDARY=$SCRATCH/secondary
mkdir -m 0755 "$SECONDARY"
mount -t tmpfs -o size=64m,mode=0755 pjdfs-secondary "$SECONDARY"
EXTRA_MOUNTS+=("$SECONDARY")

# Run inside "sub", a directory that starts in the lower layer (its first create copies it up).
# pjdfstest 0.2.2 bug: create_path_max() underflows (panic "capacity overflow" in every
# *::enametoolong_path test) when (PATH_MAX-1 - len(base)) % (NAME_MAX/2) == 0, where
# base = RUNDIR + "/.tmpXXXXXX/.tmpXXXXXX". Pad RUNDIR's name so that never happens.
RUNDIR=$MNT/sub/p
path_max=$(getconf PATH_MAX "$MNT") name_max=$(getconf NAME_MAX "$MNT")
[[ $path_max =~ ^[0-9]+$ && $name_max =~ ^[0-9]+$ ]] || die "getconf PATH_MAX/NAME_MAX failed on $MNT"
while (((path_max - 1 - ${#RUNDIR} - 22) % (name_max / 2) == 0)); do RUNDIR+=x; done
mkdir -m 0755 "$RUNDIR"

LOG=$SCRATCH/pjdfstest.log
log "running pjdfstest $(pjdfstest --version | cut -d' ' -f2) in $RUNDIR (naptime from $CONFIG)"
start=$(now)
set +e
guarded "${PJDFSTEST_TIMEOUT:-900}" env NO_COLOR=1 pjdfstest -c "$CONFIG" -p "$RUNDIR" -s "$SECONDARY" >"$LOG" 2>&1
pjd_rc=$?
set -e
secs=$(elapsed "$start")

# Per-test lines are "<name> <padding> ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY";
# the reason follows on lines starting with a tab.
RESULTS=$SCRATCH/results.txt
awk '/^[^ \t]+ +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
        s = $NF == "ok" ? "pass" : $NF == "FAILED" ? "fail" : $NF == "skipped" ? "skip" : \
            $NF == "expected" ? "xfail" : "xpass"
        print $1, s }' "$LOG" | sort >"$RESULTS"
summary=$(grep '^Summary:' "$LOG" || true)
[[ -n $summary ]] || { tail -n 30 "$LOG" >&2; die "pjdfstest did not finish (rc=$pjd_rc)"; }
count() { awk -v s="$1" '$2 == s' "$RESULTS" | wc -l; }
passed=$(count pass) failed=$(($(count fail) + $(count xpass))) skipped=$(count skip)
total=$(wc -l <"$RESULTS")
[[ $summary == *" $total total" ]] || die "parsed $total results but pjdfstest says: $summary"

if ((failed > 0)); then
    log "failed tests (first reason line of each):"
    awk '/ (FAILED|PASSED UNEXPECTEDLY)$/ { name = $1; getline r; sub(/^\t/, "", r); print "  " name ": " r }' \
        "$LOG" | sort >&2
fi
if [[ -n $OUTFILE ]]; then cp "$RESULTS" "$OUTFILE" && cp "$LOG" "$OUTFILE.log"; fi

mount_alive || die "mount is dead after pjdfstest"
union_umount || die "unclean unmount"
lower_verify
result "passed=$passed failed=$failed skipped=$skipped total=$total seconds=$secs"
((failed == 0 && pjd_rc == 0)) || exit 1
