"""lstat every path listed in a file, relative to a mount; print the seconds the
lstat calls took (without the interpreter's start-up).

    python3 statpaths.py MNT LIST present|absent

Exits 1 when a listed path is missing (present) or exists (absent).
"""

import os
import sys
import time


def main():
    mnt, listing, want = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(listing) as f:
        paths = [os.path.join(mnt, line.rstrip("\n")) for line in f if line.strip()]
    wrong = 0
    t0 = time.perf_counter()
    for path in paths:
        try:
            os.lstat(path)
            wrong += want == "absent"
        except FileNotFoundError:
            wrong += want == "present"
    took = time.perf_counter() - t0
    if wrong:
        print(f"{wrong} of {len(paths)} paths are not {want}", file=sys.stderr)
        return 1
    print(f"{took:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
