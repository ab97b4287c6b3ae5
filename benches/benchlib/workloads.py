"""What each benchmark does inside a mount, and how its result is checked.

A workload runs on a fresh mount with a fresh, empty upper layer every time.
`cold` drops the page, dentry and inode caches right before the timed steps;
otherwise dirty data is synced first and the caches are left as they are.
"""

import json
import os
import subprocess
from dataclasses import dataclass, field

from .settings import MIB
from .system import mount_fstype, warm_files
from .unions import Mounted


class CheckFailed(Exception):
    """The workload ran but its result through the mount is wrong."""


@dataclass
class Row:
    key: str
    label: str
    cache: str
    unit: str = "s"


@dataclass
class Step:
    """One timed command. `value` turns (wall seconds, stdout path) into the row's figure."""
    row: str
    argv: list
    stdout: str = None  # file to keep stdout in; otherwise it is discarded
    value: object = None
    cwd: str = None
    quiet: bool = True  # False: warnings on stderr are expected (a mount command's), not a failure


@dataclass
class Context:
    sizes: object
    data: object  # layers.LayerData
    scratch: str  # where a run keeps a command's output, off the filesystem under test
    env: dict = field(default_factory=dict)
    union: object = None  # the implementation of the current run (unions.Union)
    stack: list = None  # its lower layers, top first
    base: str = None  # the run's directory: upper, work and mount point live in it


class Workload:
    name = ""
    stack = "bench"  # or "rootfs"
    cold = False
    rows = []

    def prepare_upper(self, ctx, upper):
        """Fill the fresh upper layer before mounting."""

    def before(self, ctx, mnt):
        """Untimed set-up inside the mount."""

    def steps(self, ctx, mnt):
        raise NotImplementedError

    def check(self, ctx, mnt, upper):
        """Raise CheckFailed when the mount does not show what the workload should have done."""

    def fingerprint(self, ctx, mnt):
        """What must come out the same on every implementation (compared with the kernel's), or None."""
        return None

    def cleanup(self, ctx):
        """Take down whatever the workload mounted itself; returns what went wrong."""
        return []


def dd_read(path):
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"]


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def run_check(argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    expect(p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout


class SeqReadCold(Workload):
    name, cold = "seqread-cold", True
    rows = [Row("seqread_cold", "sequential read of a {big_file_mib} MiB lower file", "cold")]

    def steps(self, ctx, mnt):
        return [Step("seqread_cold", dd_read(f"{mnt}/big.bin"))]


class SeqReadHot(Workload):
    name = "seqread-hot"
    rows = [Row("seqread_hot", "sequential read of a {big_file_mib} MiB lower file, 2nd open", "hot")]

    def before(self, ctx, mnt):
        run_check(dd_read(f"{mnt}/big.bin"))

    def steps(self, ctx, mnt):
        return [Step("seqread_hot", dd_read(f"{mnt}/big.bin"))]


def fio_seconds(_wall, out):
    """fio's own time for the reads, without its start-up."""
    with open(out) as f:
        job = json.load(f)["jobs"][0]
    if job.get("error"):
        raise CheckFailed(f"fio error {job['error']}")
    return job["read"]["runtime"] / 1000.0


class RandRead(Workload):
    """Lower data in the page cache, the union's own cache empty: every read the
    kernel cannot answer from the union's page cache costs a trip to the daemon."""
    name = "randread"
    rows = [Row("randread", "4 KiB random reads, {random_read_mib} MiB of a {big_file_mib} MiB lower file (fio)", "warm")]

    def before(self, ctx, mnt):
        warm_files(ctx.data.bench, only="big.bin")

    def steps(self, ctx, mnt):
        out = os.path.join(ctx.scratch, "fio.json")
        argv = ["fio", "--name=randread", f"--filename={mnt}/big.bin", "--readonly", "--rw=randread",
                "--bs=4k", "--ioengine=psync", "--invalidate=0", "--randrepeat=1",
                f"--size={ctx.sizes.big_file_mib}M", f"--io_size={ctx.sizes.random_read_mib}M",
                "--output-format=json"]
        return [Step("randread", argv, stdout=out, value=fio_seconds)]


class SeqWrite(Workload):
    name = "seqwrite"
    rows = [Row("seqwrite", "sequential write of {write_mib} MiB, then fsync", "fresh")]

    def steps(self, ctx, mnt):
        return [Step("seqwrite", ["dd", "if=/dev/zero", f"of={mnt}/written.bin", "bs=1M",
                                  f"count={ctx.sizes.write_mib}", "conv=fsync", "status=none"])]

    def check(self, ctx, mnt, upper):
        size = os.stat(f"{mnt}/written.bin").st_size
        expect(size == ctx.sizes.write_mib * MIB, f"written.bin has {size} bytes")
        run_check(["cmp", "-n", str(size), "/dev/zero", f"{mnt}/written.bin"])


class CopyUp(Workload):
    name, cold = "copyup", True
    rows = [Row("copyup", "copy-up of a {big_file_mib} MiB lower file (append 1 byte)", "cold")]

    def steps(self, ctx, mnt):
        return [Step("copyup", ["bash", "-c", 'printf x >> "$1"', "-", f"{mnt}/big.bin"])]

    def check(self, ctx, mnt, upper):
        n = ctx.sizes.big_file_mib * MIB
        size = os.stat(f"{mnt}/big.bin").st_size
        expect(size == n + 1, f"big.bin has {size} bytes after the append, not {n + 1}")
        expect(os.path.exists(f"{upper}/big.bin"), "big.bin was not copied to the upper layer")
        run_check(["cmp", "-n", str(n), f"{ctx.data.bench}/big.bin", f"{mnt}/big.bin"])
        with open(f"{mnt}/big.bin", "rb") as f:
            f.seek(n)
            expect(f.read() == b"x", "the appended byte is not at the end")


def sample_paths(root, every):
    paths = []
    for dirpath, _, files in sorted(os.walk(root)):
        paths += [os.path.join(dirpath, n) for n in sorted(files)]
    return paths, paths[::every]


class Chmod(Workload):
    name, cold = "chmod", True
    rows = [Row("chmod", "chmod -R of {chmod_files} lower files", "cold")]

    def steps(self, ctx, mnt):
        return [Step("chmod", ["chmod", "-R", "o-r", f"{mnt}/chmod"])]

    def check(self, ctx, mnt, upper):
        paths, sample = sample_paths(f"{mnt}/chmod", 97)
        expect(len(paths) == ctx.sizes.chmod_files, f"{len(paths)} files after chmod, not {ctx.sizes.chmod_files}")
        for p in sample:
            mode = os.stat(p).st_mode & 0o7777
            expect(mode == 0o640, f"{p} has mode {mode:o}, not 640")
        lower = f"{ctx.data.bench}/chmod/d000/f00000"
        with open(lower, "rb") as a, open(f"{mnt}/chmod/d000/f00000", "rb") as b:
            expect(a.read() == b.read(), "the content of a chmod-ed file changed")


class Untar(Workload):
    name = "untar"
    rows = [Row("untar", "untar {untar_files} small files", "fresh")]

    def before(self, ctx, mnt):
        run_check(dd_read(ctx.data.files_tar))

    def steps(self, ctx, mnt):
        return [Step("untar", ["tar", "-xf", ctx.data.files_tar, "-C", mnt])]

    def check(self, ctx, mnt, upper):
        run_check(["tar", "-df", ctx.data.files_tar, "-C", mnt])  # compares contents and metadata
        paths, _ = sample_paths(f"{mnt}/files", 1)
        expect(len(paths) == ctx.sizes.untar_files, f"{len(paths)} files unpacked, not {ctx.sizes.untar_files}")


class RmLower(Workload):
    name, cold = "rm-lower", True
    rows = [Row("rm_lower", "rm -rf of a {rm_lower_entries}-entry lower tree", "cold")]

    def steps(self, ctx, mnt):
        return [Step("rm_lower", ["rm", "-rf", f"{mnt}/rmtree"])]

    def check(self, ctx, mnt, upper):
        expect(not os.path.lexists(f"{mnt}/rmtree"), "rmtree still visible")
        expect("rmtree" not in os.listdir(mnt), "rmtree still listed")


class RmUpper(Workload):
    name, cold = "rm-upper", True
    rows = [Row("rm_upper", "rm -rf of {untar_files} upper files", "cold")]

    def prepare_upper(self, ctx, upper):
        run_check(["tar", "-xf", ctx.data.files_tar, "-C", upper])

    def steps(self, ctx, mnt):
        return [Step("rm_upper", ["rm", "-rf", f"{mnt}/files"])]

    def check(self, ctx, mnt, upper):
        expect(not os.path.lexists(f"{mnt}/files"), "files still visible")
        expect(not os.path.isdir(f"{upper}/files"), "files still in the upper layer")


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


class WalkFind(Workload):
    name, stack, cold = "find", "rootfs", True
    rows = [Row("find_cold", "find over a {rootfs_entries}-entry rootfs", "cold"),
            Row("find_warm", "find over the rootfs, again", "again")]

    def steps(self, ctx, mnt):
        return [Step("find_cold", ["find", mnt], stdout=os.path.join(ctx.scratch, "find.txt")),
                Step("find_warm", ["find", mnt])]

    def check(self, ctx, mnt, upper):
        n = count_lines(os.path.join(ctx.scratch, "find.txt"))
        expect(n == ctx.sizes.rootfs_entries, f"find listed {n} entries, not {ctx.sizes.rootfs_entries}")

    def fingerprint(self, ctx, mnt):
        with open(os.path.join(ctx.scratch, "find.txt")) as f:
            return sorted(os.path.relpath(line.rstrip("\n"), mnt) for line in f)


class WalkLs(Workload):
    name, stack, cold = "ls", "rootfs", True
    rss = True
    rows = [Row("ls_cold", "ls -lR over a {rootfs_entries}-entry rootfs", "cold"),
            Row("ls_warm", "ls -lR over the rootfs, again", "again"),
            Row("rss_peak", "daemon peak RSS after the ls -lR walks", "-", unit="MiB")]

    def steps(self, ctx, mnt):
        return [Step("ls_cold", ["ls", "-lR", mnt]), Step("ls_warm", ["ls", "-lR", mnt])]

    def fingerprint(self, ctx, mnt):
        return tree_metadata(mnt)


def tree_metadata(root):
    """Every entry's type, mode, owner and, for non-directories, size, mtime and link target.
    Directory sizes, link counts and times are left out: they legitimately differ."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            item = [os.path.relpath(path, root), st.st_mode, st.st_uid, st.st_gid]
            if not os.path.isdir(path) or os.path.islink(path):
                item += [st.st_size, st.st_mtime_ns]
            if os.path.islink(path):
                item.append(os.readlink(path))
            out.append(" ".join(map(str, item)))
    return sorted(out)


class Git(Workload):
    name = "git"
    rows = [Row("git", "git add -A && git commit, {git_files} lower files", "fresh")]

    def before(self, ctx, mnt):
        warm_files(f"{ctx.data.bench}/src")
        run_check(["git", "init", "-q", "-b", "main", f"{mnt}/src"], env=ctx.env)

    def steps(self, ctx, mnt):
        return [Step("git", ["bash", "-c", 'cd "$1" && git add -A && git commit -q -m bench', "-",
                             f"{mnt}/src"])]

    def check(self, ctx, mnt, upper):
        files = run_check(["git", "-C", f"{mnt}/src", "ls-files"], env=ctx.env).splitlines()
        expect(len(files) == ctx.sizes.git_files, f"{len(files)} files committed, not {ctx.sizes.git_files}")
        run_check(["git", "-C", f"{mnt}/src", "fsck", "--no-progress", "--strict"], env=ctx.env)
        status = run_check(["git", "-C", f"{mnt}/src", "status", "--porcelain"], env=ctx.env)
        expect(status == "", f"work tree not clean after commit: {status[:200]}")


STATPATHS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "statpaths.py")


def printed_seconds(_wall, out):
    """The figure a helper printed: its own time, without its start-up."""
    with open(out) as f:
        return float(f.read().strip())


class StatDeep(Workload):
    """Every name lives in the bottom two of 128 layers that all hold the directory:
    the kernel searches each layer; an index answers from one record."""
    name, stack, cold = "stat-deep", "deep", True
    rows = [Row("stat_deep", "stat {deep_files} files in the bottom layers of a {deep_layers}-layer stack",
                "cold"),
            Row("stat_absent", "stat {deep_files} absent names in the same directories", "warm dirs")]

    def steps(self, ctx, mnt):
        return [Step("stat_deep", ["python3", STATPATHS, mnt, ctx.data.deep_files, "present"],
                     stdout=os.path.join(ctx.scratch, "stat-deep.txt"), value=printed_seconds),
                Step("stat_absent", ["python3", STATPATHS, mnt, ctx.data.deep_absent, "absent"],
                     stdout=os.path.join(ctx.scratch, "stat-absent.txt"), value=printed_seconds)]


class BigDir(Workload):
    name, stack, cold = "bigdir", "bigdir", True
    rows = [Row("bigdir_cold", "ls -lU of a {bigdir_entries}-entry lower directory", "cold"),
            Row("bigdir_warm", "ls -lU of the directory, again", "again")]

    def steps(self, ctx, mnt):
        return [Step("bigdir_cold", ["ls", "-lU", f"{mnt}/big"], stdout=os.path.join(ctx.scratch, "bigdir.txt")),
                Step("bigdir_warm", ["ls", "-lU", f"{mnt}/big"])]

    def check(self, ctx, mnt, upper):
        n = count_lines(os.path.join(ctx.scratch, "bigdir.txt")) - 1  # "total N"
        expect(n == ctx.sizes.bigdir_entries, f"ls -l listed {n} entries, not {ctx.sizes.bigdir_entries}")

    def fingerprint(self, ctx, mnt):
        with open(os.path.join(ctx.scratch, "bigdir.txt")) as f:
            return sorted(" ".join(line.split()[:5] + line.split()[8:]) for line in f if line.startswith("-"))


class MountTime(Workload):
    """The runner's own mount of the deep stack comes first (for layerfs it builds
    the index, untimed); the timed command mounts the same stack a second time,
    on a fresh upper layer, and returns once the mount is live."""
    name, stack = "mount-deep", "deep"
    rows = [Row("mount_deep", "mount a {deep_layers}-layer stack (layerfs: index already built)", "warm index")]

    dirs = None  # upper, work and mount point of the timed mount

    def before(self, ctx, mnt):
        self.dirs = [os.path.join(ctx.base, d) for d in ("upper2", "work2", "mnt2")]
        for d in self.dirs:
            os.makedirs(d)

    def steps(self, ctx, mnt):
        argv, cwd = ctx.union.mount_command(ctx.stack, *self.dirs)
        return [Step("mount_deep", argv, cwd=cwd, quiet=False)]

    def check(self, ctx, mnt, upper):
        mnt2 = self.dirs[2]
        expect(mount_fstype(mnt2) is not None, "the second mount is not there")
        n = len(os.listdir(os.path.join(mnt2, "usr/lib/d00")))
        expect(n > ctx.sizes.deep_files // 32, f"usr/lib/d00 lists {n} entries through the second mount")

    def cleanup(self, ctx):
        mnt2, self.dirs = self.dirs[2] if self.dirs else None, None
        if mnt2 is None or mount_fstype(mnt2) is None:
            return []
        pid = ctx.union.daemon_pid(mnt2) if ctx.union.fuse else None
        return Mounted(ctx.union, mnt2, pid).unmount()


class MountNew(Workload):
    """A first mount of a stack no mount has used: one fresh layer of one file. For
    layerfs the timed command indexes the layer and the stack first, in the database
    that already holds the stacks of the workloads run before (in a full run, every
    other image here); that costs the size of what it indexes, not of the database."""
    name, stack = "mount-new", "bench"
    rows = [Row("mount_new", "first mount of a new one-layer stack (layerfs: indexes it)",
                "index holds the others")]

    dirs = None  # the new layer, then upper, work and mount point of the timed mount

    def before(self, ctx, mnt):
        self.dirs = [os.path.join(ctx.base, d) for d in ("new-layer", "upper2", "work2", "mnt2")]
        for d in self.dirs:
            os.makedirs(d)
        with open(os.path.join(self.dirs[0], "new"), "w") as f:
            f.write("new\n")

    def steps(self, ctx, mnt):
        argv, cwd = ctx.union.mount_command([self.dirs[0]], *self.dirs[1:])
        return [Step("mount_new", argv, cwd=cwd, quiet=False)]

    def check(self, ctx, mnt, upper):
        mnt2 = self.dirs[3]
        expect(mount_fstype(mnt2) is not None, "the new stack is not mounted")
        with open(os.path.join(mnt2, "new")) as f:
            expect(f.read() == "new\n", "the new layer's file reads wrong through the mount")

    def cleanup(self, ctx):
        mnt2, self.dirs = self.dirs[3] if self.dirs else None, None
        if mnt2 is None or mount_fstype(mnt2) is None:
            return []
        pid = ctx.union.daemon_pid(mnt2) if ctx.union.fuse else None
        return Mounted(ctx.union, mnt2, pid).unmount()


ALL = [SeqReadCold(), SeqReadHot(), RandRead(), SeqWrite(), CopyUp(), Chmod(), Untar(),
       RmLower(), RmUpper(), WalkFind(), WalkLs(), Git(), StatDeep(), BigDir(), MountTime(),
       MountNew()]


def git_env(home):
    env = dict(os.environ)
    env.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost",
               GIT_CONFIG_COUNT="2", GIT_CONFIG_KEY_0="gc.auto", GIT_CONFIG_VALUE_0="0",
               GIT_CONFIG_KEY_1="maintenance.auto", GIT_CONFIG_VALUE_1="false")
    return env
