"""Small helpers over the machine: commands, caches, mounts, processes."""

import os
import subprocess
import sys
import time


class BenchError(Exception):
    """A failure that must stop the suite (a mount that did not come up, bad input)."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(argv, check=True, **kw):
    """Run a setup command (never timed); raise BenchError with its output on failure."""
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def drop_caches():
    """Write back dirty data, then drop the page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mount_fstype(mnt):
    """The filesystem type mounted exactly at mnt, or None."""
    mnt = os.path.realpath(mnt)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            if point == mnt:
                found = right.split()[0]  # the last mount there wins
    return found


def mount_options(mnt):
    mnt = os.path.realpath(mnt)
    opts = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == mnt:
                opts = right.split()[2]
    return opts


def pid_alive(pid):
    """True while pid exists and is not a zombie (an exited daemon its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_pid_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def find_daemon(binary, mnt):
    """The pid of a running process of `binary` whose last argument is the mount point."""
    binary = os.path.realpath(binary)
    mnt = os.path.realpath(mnt)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if exe != binary or not argv:
            continue
        last = os.fsdecode(argv[-1])
        if os.path.realpath(os.path.join(cwd, last)) == mnt and pid_alive(int(entry)):
            return int(entry)
    return None


def memory_kib(pid):
    """(VmRSS, VmHWM) of a live process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def warm_files(root, only=None):
    """Read every regular file under root (or only the one named), so its data sits in the page cache."""
    for dirpath, _, files in os.walk(root):
        for name in files if only is None else [n for n in files if n == only]:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
