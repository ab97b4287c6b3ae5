#!/usr/bin/env bash
# install-tools.sh: idempotently install what the suite runners need.
#   Debian packages (apt-get, only the missing ones): fuse3 stress-ng attr acl util-linux shellcheck
#   cargo tools (only when absent or at another version): pjdfstest, fsx (the fsx-rs port)
# Cargo tools go to $CARGO_INSTALL_ROOT/bin, default ~/.cargo/bin (survives between runs;
# the runners put it first in PATH). Needs root for apt-get, and cargo + a C toolchain.
set -euo pipefail

PJDFSTEST_VERSION=${PJDFSTEST_VERSION:-0.2.2}   # the version /work/shared/suites/pjdfstest.toml targets
FSX_VERSION=${FSX_VERSION:-0.3.2}               # the version fsx-full.toml targets
TOOLS_ROOT=${CARGO_INSTALL_ROOT:-$HOME/.cargo}
APT_PACKAGES=(fuse3 stress-ng attr acl util-linux shellcheck)

log() { printf '[install-tools] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
    [[ $(id -u) -eq 0 ]] || { log "need root to apt-get install ${missing[*]}"; exit 1; }
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt packages present: ${APT_PACKAGES[*]}"
fi

command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain first"; exit 1; }
# cargo_tool CRATE VERSION: `CRATE --version` prints "CRATE VERSION" for both tools.
cargo_tool() {
    local crate=$1 version=$2 have
    have=$("$TOOLS_ROOT/bin/$crate" --version 2>/dev/null || true)
    if [[ $have == "$crate $version" ]]; then
        log "$crate $version already installed"
        return
    fi
    log "cargo install $crate@$version (have: ${have:-none})"
    cargo install --quiet --locked --root "$TOOLS_ROOT" "$crate@$version"
}
cargo_tool pjdfstest "$PJDFSTEST_VERSION"
cargo_tool fsx "$FSX_VERSION"

[[ -c /dev/fuse ]] || log "warning: /dev/fuse missing; the layerfs target will fail"
log "ready: $("$TOOLS_ROOT/bin/pjdfstest" --version), $("$TOOLS_ROOT/bin/fsx" --version)," \
    "stress-ng $(stress-ng --version | awk '{ print $3 }'), fusermount3 $(fusermount3 --version 2>&1 | awk '{ print $NF }')"
