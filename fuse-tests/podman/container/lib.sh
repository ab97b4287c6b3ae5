# shellcheck shell=sh
# Sourced (prepended) by the other in-container scripts; POSIX sh (dash in the fixture image).
# view PATH...: a stable description of each path and everything below it: type, mode,
# owner, size, link count and sha256 of files, symlink targets; then which names share an
# inode. No inode numbers, times or directory sizes/link counts (they legitimately differ).
view() {
    for p in "$@"; do
        if [ ! -e "$p" ] && [ ! -L "$p" ]; then
            echo "$p: absent"
            continue
        fi
        find "$p" -xdev | LC_ALL=C sort | while IFS= read -r f; do
            if [ -L "$f" ]; then
                echo "$f: symlink $(stat -c '%a %u:%g' "$f") -> $(readlink "$f")"
            elif [ -d "$f" ]; then
                echo "$f: dir $(stat -c '%a %u:%g' "$f")"
            elif [ -f "$f" ]; then
                echo "$f: file $(stat -c '%a %u:%g size=%s nlink=%h' "$f") $(sha256sum <"$f" | cut -c1-16)"
            else
                echo "$f: $(stat -c '%F %a %u:%g %t:%T' "$f")"
            fi
        done
    done
    # names (among all of these paths) that are one file
    for p in "$@"; do
        [ -e "$p" ] && find "$p" -xdev -type f -links +1 -printf '%i %p\n'
    done | LC_ALL=C sort -u -k2 |
        awk '{ n[$1]++; g[$1] = g[$1] " " $2 } END { for (i in g) if (n[i] > 1) print "same inode:" g[i] }' |
        LC_ALL=C sort
}
# check NAME SHELL-CONDITION: prints "ok NAME" or "FAIL NAME"; FAILED counts failures.
FAILED=0
check() {
    if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; FAILED=$((FAILED + 1)); fi
}
same_inode() { [ "$(stat -c %i "$1")" = "$(stat -c %i "$2")" ]; }
finish() { echo "checks failed: $FAILED" >&2; [ "$FAILED" -eq 0 ]; }
