# Shared by scripts/demo and scripts/test. Source it; do not run it.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$CARGO_TARGET_DIR/release
export UNIONCTL=$BIN/unionctl LAYERFS=$BIN/layerfs
SHARED=${LAYERFS_SHARED:-$REPO/../shared}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root: layerfs mounts FUSE and kernel overlayfs"
}

# ensure_packages PKG... : apt-get install what is missing (Debian).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Fails (never skips) when FUSE cannot be used.
check_fuse() {
  [ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
  [ -c /dev/fuse ] || die "/dev/fuse is missing: load the fuse module"
  exec 9<>/dev/fuse || die "/dev/fuse cannot be opened"
  exec 9>&-
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || die "kernel overlayfs is not available"
}

build() {
  say "building layerfs (release)"
  cargo build --release --locked --bins
}
