#!/usr/bin/env bash
# pjdfstest-compare.sh OVERLAY_RESULTS LAYERFS_RESULTS KNOWN_DIFFS_FILE
# Inputs are OUTFILEs of pjdfstest.sh ("test-name status" lines). Fails (exit 1) when a test
# that passes on kernel overlayfs does not pass on layerfs (failed, skipped or missing) and is
# not listed in KNOWN_DIFFS_FILE (one test name per line; "# reason" comments and blank lines
# allowed). Tests layerfs passes and overlay does not are reported, never fail the check.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 OVERLAY_RESULTS LAYERFS_RESULTS KNOWN_DIFFS_FILE" >&2
    exit 2
fi
overlay=$1 layerfs=$2 known=$3
for f in "$overlay" "$layerfs" "$known"; do
    [[ -r $f ]] || { echo "pjdfstest-compare: cannot read $f" >&2; exit 2; }
done
[[ -s $overlay && -s $layerfs ]] || { echo "pjdfstest-compare: empty results file" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passing() { awk '$2 == "pass" { print $1 }' "$1" | sort -u; }
passing "$overlay" >"$tmp/ov.pass"
passing "$layerfs" >"$tmp/lf.pass"
sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$known" | sort -u >"$tmp/known"

comm -23 "$tmp/ov.pass" "$tmp/lf.pass" >"$tmp/regressed"   # pass on overlay only
comm -13 "$tmp/ov.pass" "$tmp/lf.pass" >"$tmp/improved"    # pass on layerfs only
comm -23 "$tmp/regressed" "$tmp/known" >"$tmp/unexplained"
comm -13 "$tmp/regressed" "$tmp/known" >"$tmp/stale"       # listed but no longer differing

status_in() { awk -v t="$1" '$1 == t { print $2; found = 1 } END { if (!found) print "missing" }' "$2"; }
show() {
    local t
    while read -r t; do printf '  %-70s overlay=%s layerfs=%s\n' "$t" "$(status_in "$t" "$overlay")" "$(status_in "$t" "$layerfs")"; done <"$1"
}

ov_n=$(wc -l <"$tmp/ov.pass") lf_n=$(wc -l <"$tmp/lf.pass")
echo "pjdfstest passes: overlay=$ov_n layerfs=$lf_n"
if [[ -s $tmp/improved ]]; then echo "passing on layerfs only ($(wc -l <"$tmp/improved")):"; show "$tmp/improved"; fi
if [[ -s $tmp/regressed ]]; then echo "passing on overlay only ($(wc -l <"$tmp/regressed")):"; show "$tmp/regressed"; fi
if [[ -s $tmp/stale ]]; then
    echo "note: listed in $known but not differing any more (remove them?):"
    sed 's/^/  /' "$tmp/stale"
fi
if [[ -s $tmp/unexplained ]]; then
    n=$(wc -l <"$tmp/unexplained")
    echo "FAIL: $n test(s) pass on overlay but not on layerfs and are not in $known:"
    sed 's/^/  /' "$tmp/unexplained"
    echo "RESULT suite=pjdfstest-compare overlay_passed=$ov_n layerfs_passed=$lf_n unexplained=$n"
    exit 1
fi
echo "RESULT suite=pjdfstest-compare overlay_passed=$ov_n layerfs_passed=$lf_n unexplained=0"
