"""Sizes of the two modes. Everything a run builds or does scales from here."""

from dataclasses import asdict, dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    mode: str
    runs: int  # measured runs of every workload on every implementation
    big_file_mib: int  # lower file for sequential/random read and copy-up
    random_read_mib: int  # bytes fio reads, in 4 KiB requests
    write_mib: int  # sequential write into the upper layer
    chmod_files: int  # lower files chmod -R changes
    untar_files: int  # small files in the tarball unpacked into the mount
    rm_lower_entries: int  # entries of the lower tree rm -rf deletes
    rootfs_entries: int  # entries find / ls -lR walk (the mount root included)
    git_files: int  # files git add -A && git commit takes in
    deep_layers: int  # layers of the deep stack (stat and mount time)
    deep_files: int  # files in its bottom two layers, each stat-ed, and as many absent names looked up
    bigdir_entries: int  # entries of the one big lower directory ls -l lists
    timeout_s: int  # bound on one timed command
    fs_gib: int  # size of the ext4 image the layers and upper layers live on

    def as_dict(self):
        return asdict(self)

    def describe(self):
        return (
            f"{self.mode} mode, {self.runs} runs each: "
            f"read/copy-up file {self.big_file_mib} MiB, random read {self.random_read_mib} MiB in 4 KiB, "
            f"write {self.write_mib} MiB, chmod {self.chmod_files} files, untar {self.untar_files} files, "
            f"rm -rf lower tree {self.rm_lower_entries} entries, rm -rf upper {self.untar_files} files (the untar set), "
            f"walk {self.rootfs_entries} entries, git {self.git_files} files, "
            f"{self.deep_layers}-layer stack with {self.deep_files} files, "
            f"a {self.bigdir_entries}-entry directory"
        )


FULL = Sizes(
    mode="full", runs=5, big_file_mib=1024, random_read_mib=256, write_mib=1024,
    chmod_files=10_000, untar_files=20_000, rm_lower_entries=10_000,
    rootfs_entries=50_000, git_files=5_000, deep_layers=128, deep_files=4_095,
    bigdir_entries=100_000, timeout_s=1800, fs_gib=10,
)

QUICK = Sizes(
    mode="quick", runs=3, big_file_mib=256, random_read_mib=64, write_mib=256,
    chmod_files=2_000, untar_files=4_000, rm_lower_entries=2_000,
    rootfs_entries=15_000, git_files=1_000, deep_layers=128, deep_files=4_095,
    bigdir_entries=100_000, timeout_s=300, fs_gib=4,
)
