#!/usr/bin/env python3
"""List a tar stream (stdin) as sorted, comparable lines.

usage: tarlist.py T0 < layer.tar        (podman export, layer blobs; any compression)
       tarlist.py --oci-layers DIR FIRST T0   (layers FIRST.. of the image in OCI dir DIR)

One line per entry: name, type, mode, uid:gid, size, mtime, link target, sha256 of the
content, xattrs. mtimes at or after T0 (epoch seconds: the run's start) print as "new":
those are the times of what the test itself created, which legitimately differ between
runs; older times come from the image and must be kept exactly.
"""
import hashlib
import json
import os
import sys
import tarfile

TYPES = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file",
}


def norm(name):
    while name.startswith("./"):
        name = name[2:]
    return "/" + name.strip("/")


def listing(fileobj, t0):
    rows = []
    with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
        for m in tf:
            digest = "-"
            if m.isreg():
                h = hashlib.sha256()
                f = tf.extractfile(m)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                digest = h.hexdigest()[:16]
            kind = TYPES.get(m.type, "type-%r" % m.type)
            if m.ischr() or m.isblk():
                kind += " %d:%d" % (m.devmajor, m.devminor)
            link = ""
            if m.issym():
                link = "-> " + m.linkname
            elif m.islnk():
                link = "=> " + norm(m.linkname)
            mtime = "new" if m.mtime >= t0 else str(int(m.mtime))
            xattrs = sorted(
                "%s=%r" % (k[len("SCHILY.xattr."):], v)
                for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")
            )
            size = str(m.size) if m.isreg() else "-"
            rows.append("\t".join([norm(m.name), kind, "%04o" % m.mode, "%d:%d" % (m.uid, m.gid),
                                   size, mtime, link, digest, ",".join(xattrs)]).rstrip())
    rows.sort()
    return rows


def blob(oci, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(oci, "blobs", algo, hexd)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--oci-layers":
        oci, first, t0 = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        with open(os.path.join(oci, "index.json")) as f:
            index = json.load(f)
        with open(blob(oci, index["manifests"][0]["digest"])) as f:
            manifest = json.load(f)
        layers = manifest["layers"]
        print("# %d layers" % len(layers))
        for i, layer in enumerate(layers[first:], start=first + 1):
            with open(blob(oci, layer["digest"]), "rb") as f:
                rows = listing(f, t0)
            print("## layer %d: %d entries" % (i, len(rows)))
            print("\n".join(rows))
    elif len(sys.argv) == 2:
        rows = listing(sys.stdin.buffer, float(sys.argv[1]))
        print("# %d entries" % len(rows))
        print("\n".join(rows))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
