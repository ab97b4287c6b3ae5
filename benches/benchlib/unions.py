"""The implementations under test: how each mounts, unmounts and names its daemon."""

import json
import os
import re
import signal
import subprocess
import time

from .system import BenchError, find_daemon, log, mount_fstype, pid_alive, sh, wait_pid_gone

MOUNT_TIMEOUT_S = 60


class Mounted:
    """One live union mount; `pid` is the FUSE daemon's, None for the kernel."""

    def __init__(self, union, mnt, pid):
        self.union, self.mnt, self.pid = union, mnt, pid

    def unmount(self):
        return self.union.unmount(self)


class Union:
    key = label = ""
    fuse = True

    def mount_argv(self, lowers, upper, work, mnt):
        raise NotImplementedError

    def daemon_pid(self, mnt):
        return None

    def version(self):
        return ""

    def mount_command(self, lowers, upper, work, mnt):
        """(argv, cwd) of the command that mounts."""
        return self.mount_argv([os.path.abspath(p) for p in lowers], os.path.abspath(upper),
                               os.path.abspath(work), os.path.abspath(mnt)), None

    def mount(self, lowers, upper, work, mnt):
        argv, cwd = self.mount_command(lowers, upper, work, mnt)
        try:
            p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=MOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.label}: mount did not return within {MOUNT_TIMEOUT_S} s: {' '.join(argv)}")
        fstype = mount_fstype(mnt)
        if p.returncode != 0 or fstype is None or (fstype == "overlay") == self.fuse:
            raise BenchError(f"{self.label}: mount failed (exit {p.returncode}, mounted as {fstype}): "
                             f"{' '.join(argv)}\n{p.stderr.strip()}")
        pid = self.daemon_pid(mnt) if self.fuse else None
        if self.fuse and pid is None:
            mounted = Mounted(self, mnt, None)
            self.unmount(mounted)
            raise BenchError(f"{self.label}: mounted, but no daemon process serves {mnt}")
        return Mounted(self, mnt, pid)

    def unmount_argv(self, mnt):
        return ["umount", mnt]

    def unmount(self, mounted):
        """Unmount and wait for the daemon to exit; returns what went wrong (empty: nothing)."""
        issues = []
        started = time.monotonic()
        p = subprocess.run(self.unmount_argv(mounted.mnt), capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
        if p.returncode != 0:
            issues.append(f"{' '.join(self.unmount_argv(mounted.mnt))} exited {p.returncode}: {p.stderr.strip()[-300:]}")
        if took > 10:
            issues.append(f"unmount took {took:.0f} s")
        if mount_fstype(mounted.mnt) is not None:
            issues.append("still mounted after unmount: detached it (umount -l)")
            subprocess.run(["umount", "-l", mounted.mnt], capture_output=True)
        if mounted.pid and not wait_pid_gone(mounted.pid, 20):
            holders = namespace_holders(mounted.mnt)
            issues.append(f"daemon {mounted.pid} still running 20 s after unmount, killed; "
                          + (f"the mount lives on in other mount namespaces (pids {holders[:5]}); " if holders else "")
                          + "its threads: " + thread_states(mounted.pid))
            kill(mounted.pid)
        for issue in issues:
            log(f"{self.label}: {issue}")
        return issues


def namespace_holders(mnt):
    """Processes whose mount namespace still has mnt mounted: a namespace made while the
    mount was live (unshare, a container) keeps a copy that keeps the daemon serving."""
    mnt = os.path.realpath(mnt)
    holders = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/mountinfo") as f:
                if any(line.split()[4] == mnt for line in f):
                    holders.append(int(entry))
        except OSError:
            continue
    return holders


def thread_states(pid):
    """State, wait channel and kernel stack top of each thread: why a daemon does not exit."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"{base}/wchan") as f:
                wchan = f.read().strip()
            with open(f"{base}/stack") as f:
                stack = [line.split()[-1].split("+")[0] for line in f.read().splitlines()[:4]]
        except OSError:
            continue
        out.append(f"{tid} {state} {wchan} [{' < '.join(stack)}]")
    return "; ".join(out)


def kill(pid):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_pid_gone(pid, 5):
            return


class KernelOverlay(Union):
    key, label, fuse = "kernel", "kernel overlayfs", False

    def mount_command(self, lowers, upper, work, mnt):
        """mount(2) takes one page of options: a deep stack's layers are named
        relative to their common parent, the mount's working directory."""
        argv, _ = super().mount_command(lowers, upper, work, mnt)
        if len(argv[-2]) < 3000:
            return argv, None
        parent = os.path.commonpath([os.path.abspath(p) for p in lowers])
        rel = [os.path.relpath(os.path.abspath(p), parent) for p in lowers]
        return self.mount_argv(rel, os.path.abspath(upper), os.path.abspath(work), os.path.abspath(mnt)), parent

    def mount_argv(self, lowers, upper, work, mnt):
        return ["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}", mnt]

    def version(self):
        return os.uname().release


class FuseOverlayfs(Union):
    """fuse-overlayfs, any version, by its fuse-overlayfs command line (as engines run it)."""

    def __init__(self, key, binary):
        self.key, self.binary = key, binary
        found = re.search(r"version:?\s*(\S+)", self.version())
        self.label = f"fuse-overlayfs {found.group(1) if found else '(' + binary + ')'}"

    def mount_argv(self, lowers, upper, work, mnt):
        return [self.binary, "-o", f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}", mnt]

    def daemon_pid(self, mnt):
        return find_daemon(self.binary, mnt)

    def version(self):
        p = sh([self.binary, "--version"], check=False)
        lines = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("fuse-overlayfs")]
        return lines[0].strip() if lines else "unknown version"


class Layerfs(Union):
    """layerfs with its metadata index (kept in index_dir, built at the first
    mount of each stack, untimed) or without (`index=off`)."""

    def __init__(self, unionctl, index_dir=None):
        self.unionctl, self.index_dir = unionctl, index_dir
        self.key = "layerfs" if index_dir else "layerfs-noindex"
        self.label = "layerfs" if index_dir else "layerfs, no index"

    def mount_argv(self, lowers, upper, work, mnt):
        argv = [self.unionctl, "mount"]
        for lower in lowers:
            argv += ["--lower", lower]
        if self.index_dir:
            argv += ["--index", "on", "--index-dir", self.index_dir]
        else:
            argv += ["--index", "off"]
        return argv + ["--upper", upper, "--work", work, mnt]

    def unmount_argv(self, mnt):
        return [self.unionctl, "umount", mnt]

    def status(self, mnt):
        return json.loads(sh([self.unionctl, "status", "--json", mnt]).stdout)

    def daemon_pid(self, mnt):
        pid = self.status(mnt).get("pid")
        return pid if pid and pid_alive(pid) else None

    def version(self):
        return sh([self.unionctl, "--version"]).stdout.strip()
