"""The filesystem the layers and upper layers live on.

By default a dedicated ext4 (with a journal, as mkfs.ext4 makes it and container
hosts run it) in an image file on a loop device with direct I/O, so the page
cache holds each block once and dropping caches really makes reads cold. It keeps
the measurements away from the host filesystem's state: an ext4 without a
journal, such as this machine's root, checks every candidate inode against
recently deleted ones (ext4's recently_deleted()), which made creating files up
to 25x slower for 30 s after any large rm -rf — including the previous run's
cleanup.
"""

import os
import subprocess

from .system import BenchError, log, mount_fstype, sh

GIB = 1 << 30


class LoopExt4:
    def __init__(self, image, mountpoint, size_gib):
        self.image, self.mountpoint, self.size_gib = image, mountpoint, size_gib
        self.device = None

    def __enter__(self):
        fresh = not os.path.exists(self.image) or os.path.getsize(self.image) != self.size_gib * GIB
        if fresh:  # a kept image of another size is made anew (and the layer data with it)
            with open(self.image, "wb") as f:
                f.truncate(0)
                f.truncate(self.size_gib * GIB)
            sh(["mkfs.ext4", "-q", "-F", "-L", "layerfs-bench", self.image])
        p = sh(["losetup", "--find", "--show", "--direct-io=on", self.image], check=False)
        if p.returncode != 0:
            raise BenchError(f"no loop device for {self.image} ({p.stderr.strip()}); "
                             "run with --no-loop to use the scratch directory's own filesystem")
        self.device = p.stdout.strip()
        os.makedirs(self.mountpoint, exist_ok=True)
        sh(["mount", "-t", "ext4", self.device, self.mountpoint])
        if mount_fstype(self.mountpoint) != "ext4":
            raise BenchError(f"{self.device} did not mount as ext4 on {self.mountpoint}")
        log(f"{'created' if fresh else 'reusing'} {self.size_gib} GiB ext4 image {self.image} on {self.device}")
        return self

    def __exit__(self, *exc):
        if mount_fstype(self.mountpoint) is not None:
            p = subprocess.run(["umount", self.mountpoint], capture_output=True, text=True)
            if p.returncode != 0:
                log(f"umount {self.mountpoint} failed ({p.stderr.strip()}); detaching it")
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
        return False


class PlainDir:
    """--no-loop: use a directory on whatever filesystem holds it."""

    def __init__(self, mountpoint):
        self.mountpoint = mountpoint

    def __enter__(self):
        os.makedirs(self.mountpoint, exist_ok=True)
        return self

    def __exit__(self, *exc):
        return False
