"""The layer data every implementation mounts, built once per data directory.

layers/debian   the first layer of the OCI fixture image, unpacked (Debian bookworm minbase, ~6.7k entries)
layers/app      synthetic layer that grows the rootfs to the walk's size by replaying
                Debian's own /usr: odd replicas as vendored trees under /opt/app-N
                (new directories), even replicas as more files with a suffix inside
                Debian's existing /usr directories (merged directories); file sizes,
                modes, symlinks and depths are Debian's, file data is sparse
layers/bench    the workloads' lower data: big.bin, chmod/, rmtree/ (replicas of
                Debian's /usr/share), src/ (a source-like tree for git)
layers/deep/NNN  a stack of `deep_layers` layers (000 on top) that all hold the same directories
                (usr/lib/dNN): the bottom two hold `deep_files` files, every other layer
                one file of its own, so each lookup has every layer to search
layers/bigdir   one directory of `bigdir_entries` files (sparse, sizes as small files)
inputs/files.tar  small files for untar, and (unpacked straight into an upper layer) for rm -rf of upper files
inputs/deep-files.txt, inputs/deep-absent.txt  the deep stack's files, and names absent from it
"""

import json
import math
import os
import random
import shutil
import subprocess

from .settings import MIB
from .system import BenchError, log, sh

DATA_KEYS = ("big_file_mib", "chmod_files", "untar_files", "rm_lower_entries",
             "rootfs_entries", "git_files", "deep_layers", "deep_files", "bigdir_entries")
FORMAT = 3  # bump when the layout or content rules change


class LayerData:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.debian = os.path.join(self.root, "layers/debian")
        self.app = os.path.join(self.root, "layers/app")
        self.bench = os.path.join(self.root, "layers/bench")
        self.files_tar = os.path.join(self.root, "inputs/files.tar")
        self.deep = os.path.join(self.root, "layers/deep")
        self.bigdir = os.path.join(self.root, "layers/bigdir")
        self.deep_files = os.path.join(self.root, "inputs/deep-files.txt")
        self.deep_absent = os.path.join(self.root, "inputs/deep-absent.txt")
        self.manifest = os.path.join(self.root, "manifest.json")

    def rootfs_stack(self):
        """Lower layers of the walk: top first."""
        return [self.app, self.debian]

    def bench_stack(self):
        return [self.bench, self.app, self.debian]

    def deep_stack(self):
        return sorted(os.path.join(self.deep, n) for n in os.listdir(self.deep))

    def bigdir_stack(self):
        return [self.bigdir, self.debian]

    def stack(self, name):
        return {"rootfs": self.rootfs_stack, "bench": self.bench_stack, "deep": self.deep_stack,
                "bigdir": self.bigdir_stack}[name]()

    def wanted(self, sizes):
        return {"format": FORMAT, **{k: getattr(sizes, k) for k in DATA_KEYS}}

    def is_built_for(self, sizes):
        try:
            with open(self.manifest) as f:
                return json.load(f).get("built") == self.wanted(sizes)
        except (OSError, ValueError):
            return False

    def build(self, sizes, image):
        if self.is_built_for(sizes):
            log(f"reusing layer data in {self.root}")
            return
        if os.path.exists(self.root) and os.listdir(self.root):
            if not os.path.exists(self.manifest):
                raise BenchError(f"{self.root} is not empty and holds no bench data; give an empty or new directory")
            log(f"{self.root} was built for other sizes: rebuilding it")
            for sub in ("layers", "inputs", "manifest.json"):
                path = os.path.join(self.root, sub)
                shutil.rmtree(path) if os.path.isdir(path) else (os.path.exists(path) and os.unlink(path))
        os.makedirs(os.path.join(self.root, "inputs"), exist_ok=True)
        wanted = self.wanted(sizes)
        log(f"building layer data in {self.root}")
        unpack_base_layer(image, self.debian)
        grow_rootfs(self.debian, self.app, sizes.rootfs_entries)
        os.makedirs(self.bench)
        write_random_file(os.path.join(self.bench, "big.bin"), sizes.big_file_mib * MIB)
        write_small_files(os.path.join(self.bench, "chmod"), sizes.chmod_files, seed=1)
        build_rm_tree(os.path.join(self.debian, "usr/share"), os.path.join(self.bench, "rmtree"),
                      sizes.rm_lower_entries)
        write_source_tree(os.path.join(self.bench, "src"), sizes.git_files, seed=3)
        build_files_tar(self.files_tar, sizes.untar_files)
        build_deep_stack(self.deep, sizes.deep_layers, sizes.deep_files, self.deep_files, self.deep_absent)
        write_sparse_files(os.path.join(self.bigdir, "big"), sizes.bigdir_entries, seed=4)
        os.sync()
        with open(self.manifest, "w") as f:
            json.dump({"built": wanted, "image": image}, f, indent=1)


def first_layer_blob(image):
    """Path of the first (base) layer blob of an OCI image layout directory."""
    def blob(digest):
        algo, hexd = digest.split(":")
        return os.path.join(image, "blobs", algo, hexd)
    with open(os.path.join(image, "index.json")) as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    with open(blob(manifest_digest)) as f:
        return blob(json.load(f)["layers"][0]["digest"])


def unpack_base_layer(image, dest):
    tarball = first_layer_blob(image)
    os.makedirs(dest)
    sh(["tar", "-xzf", tarball, "-C", dest, "--numeric-owner", "--same-permissions"])
    for dirpath, dirs, files in os.walk(dest):
        if any(n.startswith(".wh.") for n in dirs + files):
            raise BenchError(f"whiteout in the base layer at {dirpath}: not a base layer")


def count_entries(root):
    """Entries under root, root itself included (what `find root | wc -l` prints)."""
    n = 1
    for _, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


def copy_entry(src, dst):
    """Recreate src at dst: directories and symlinks as they are, files sparse of the same size."""
    st = os.lstat(src)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        os.mkdir(dst)
        os.chmod(dst, st.st_mode & 0o7777)
    else:
        with open(dst, "wb") as f:
            f.truncate(st.st_size)
        os.chmod(dst, st.st_mode & 0o7777)
    os.lchown(dst, st.st_uid, st.st_gid)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def walk_sorted(root):
    """Relative paths under root, parents before children, in a stable order."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        for name in dirs + sorted(files):
            out.append(os.path.normpath(os.path.join(rel, name)))
    return out


def ensure_dirs_like(base, layer, rel_dir):
    """Create rel_dir and its parents in layer with the modes they have in base."""
    parts = [] if rel_dir in ("", ".") else rel_dir.split(os.sep)
    for i in range(1, len(parts) + 1):
        sub = os.path.join(*parts[:i])
        if not os.path.isdir(os.path.join(layer, sub)):
            copy_entry(os.path.join(base, sub), os.path.join(layer, sub))


def grow_rootfs(base, app, target):
    have = count_entries(base)
    need = target - have
    if need < 0:
        raise BenchError(f"the base layer alone has {have} entries, more than the {target} asked for")
    log(f"rootfs: {have} Debian entries, adding {need} in the app layer")
    os.makedirs(app)
    source = walk_sorted(os.path.join(base, "usr"))
    replica = 0
    while need > 0:
        replica += 1
        if replica % 2:  # a vendored tree: every entry is new, under /opt/app-N
            top = os.path.join("opt", f"app-{replica:02d}")
            ensure_dirs_like(base, app, "opt")
            copy_entry(os.path.join(base, "usr"), os.path.join(app, top))
            need -= 1
            for rel in source:
                if need == 0:
                    break
                copy_entry(os.path.join(base, "usr", rel), os.path.join(app, top, rel))
                need -= 1
        else:  # more files in Debian's own directories: merged directories grow
            for rel in source:
                if need == 0:
                    break
                src = os.path.join(base, "usr", rel)
                if os.path.isdir(src) and not os.path.islink(src):
                    continue
                name = f"{rel}.{replica}"
                if os.path.lexists(os.path.join(base, "usr", name)):
                    continue  # e.g. libfoo.so.2 next to libfoo.so: would shadow, not add
                ensure_dirs_like(base, app, os.path.join("usr", os.path.dirname(rel)))
                copy_entry(src, os.path.join(app, "usr", name))
                need -= 1
    merged = len(set(walk_sorted(base)) | set(walk_sorted(app))) + 1
    if merged != target:
        raise BenchError(f"the rootfs has {merged} entries, not {target}: fix grow_rootfs")


def build_rm_tree(source, dest, entries):
    """A tree of `entries` entries (dest included) made of replicas of source."""
    os.makedirs(dest)
    need = entries - 1
    replica = 0
    names = walk_sorted(source)
    while need > 0:
        replica += 1
        top = os.path.join(dest, f"share-{replica}")
        copy_entry(source, top)
        need -= 1
        for rel in names:
            if need == 0:
                break
            copy_entry(os.path.join(source, rel), os.path.join(top, rel))
            need -= 1


def write_random_file(path, size):
    log(f"writing {size // MIB} MiB of random data to {os.path.basename(path)}")
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = min(left, 4 * MIB)
            f.write(os.urandom(chunk))
            left -= chunk


def small_sizes(n, rng, low=64, high=16384):
    """Sizes spread evenly on a log scale between low and high bytes."""
    return [int(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n)]


def write_small_files(root, n, seed, per_dir=100):
    rng = random.Random(seed)
    for i, size in enumerate(small_sizes(n, rng)):
        d = os.path.join(root, f"d{i // per_dir:03d}")
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(rng.randbytes(size))


def write_source_tree(root, n, seed):
    """n text files in a source-like tree (src/modNN/subN/file_NNNNN.c), compressible like code."""
    rng = random.Random(seed)
    words = ["static", "int", "return", "struct", "const", "void", "if", "else", "for",
             "while", "size_t", "char", "unsigned", "NULL", "break", "->", "=", "+", "{", "}"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
                     for _ in range(40_000)).encode()
    for i, size in enumerate(small_sizes(n, rng, 200, 20_000)):
        d = os.path.join(root, f"mod{i // 250:02d}", f"sub{(i // 50) % 5}")
        os.makedirs(d, exist_ok=True)
        start = rng.randrange(0, len(text) - size)
        with open(os.path.join(d, f"file_{i:05d}.c"), "wb") as f:
            f.write(text[start:start + size])


def build_deep_stack(root, layers, files, files_list, absent_list, dirs=32):
    """`layers` layers with the same `dirs` directories; the files live in the bottom two."""
    log(f"deep stack: {layers} layers, {files} files in the bottom two")
    names = [f"usr/lib/d{i % dirs:02d}/lib{i:05d}.so" for i in range(files)]
    for layer in range(layers):
        top = os.path.join(root, f"{layer:03d}")
        for d in range(dirs):
            os.makedirs(os.path.join(top, f"usr/lib/d{d:02d}"))
        if layer < layers - 2:  # a file of its own, so that no layer is an empty shell
            with open(os.path.join(top, f"usr/lib/d{layer % dirs:02d}/layer-{layer:03d}"), "wb") as f:
                f.write(b"x")
    for i, name in enumerate(names):  # alternate between the two bottom layers
        with open(os.path.join(root, f"{layers - 1 - i % 2:03d}", name), "wb") as f:
            f.truncate(4096 + i)
    with open(files_list, "w") as f:
        f.write("".join(n + "\n" for n in names))
    with open(absent_list, "w") as f:
        f.write("".join(f"usr/lib/d{i % dirs:02d}/absent{i:05d}.so\n" for i in range(files)))


def write_sparse_files(root, n, seed):
    """n files in one directory, sized as small files but sparse."""
    log(f"one directory of {n} files")
    os.makedirs(root)
    rng = random.Random(seed)
    for i, size in enumerate(small_sizes(n, rng)):
        with open(os.path.join(root, f"entry-{i:06d}"), "wb") as f:
            f.truncate(size)


def build_files_tar(path, n):
    staging = path + ".d"
    write_small_files(os.path.join(staging, "files"), n, seed=2)
    subprocess.run(["tar", "-cf", path, "-C", staging, "files"], check=True)
    shutil.rmtree(staging)
