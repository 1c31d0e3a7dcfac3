#!/usr/bin/env bash
# The packages on a system that never built secretgate (issue 15):
#   1. builds this version's packages (scripts/package.sh) and the previous
#      released version's extension package (from its commit, cached);
#   2. copies a Debian 12 root made by debootstrap from Debian's packages, with
#      Debian's postgresql-15 installed in it (made once, cached in
#      $SECRETGATE_CACHE/debootstrap, default /var/cache/secretgate);
#   3. runs tests/blackbox/packages.rs against that root: dpkg -i, a cluster,
#      migrations, the tour, a refusal per gate, a rotation, a package upgrade
#      with ALTER EXTENSION UPDATE, dpkg -r leaving nothing behind.
# Needs root (debootstrap, chroot, mounts). The copy is removed at the end.
#   scripts/package-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${SECRETGATE_CACHE:-/var/cache/secretgate}
export PGRX_HOME="$ROOT/pgrx-config"
# The last commit of the previous released version (0.3.0): its package is
# what the upgrade starts from. Bump both when a version is released.
PREVIOUS_VERSION=0.3.0
PREVIOUS_REV=${SECRETGATE_PREVIOUS_REV:-f576cb4^}

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null

# 1. The packages.
scripts/package.sh --pg 15
scripts/package.sh --pg 15 --no-cli --rev "$PREVIOUS_REV"
previous_dir="$ROOT/target/packages/rev-$(git rev-parse --short=12 "$PREVIOUS_REV")"

# 2. The clean root: Debian 12 (minbase) with Debian's postgresql-15, made once.
pristine="$CACHE/debootstrap/debian-12-pg15"
if [ ! -x "$pristine/usr/lib/postgresql/15/bin/postgres" ]; then
    mkdir -p "$CACHE/debootstrap"
    rm -rf "$pristine.tmp"
    debootstrap --variant=minbase --include=postgresql-15,postgresql-common \
        bookworm "$pristine.tmp" http://deb.debian.org/debian
    mv "$pristine.tmp" "$pristine"
fi
root=$(mktemp -d /var/tmp/secretgate-clean-root.XXXXXX)
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    umount "$root/dev" 2>/dev/null || true
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
cp -a "$pristine/." "$root/"
mount --bind /dev "$root/dev"
mount -t proc proc "$root/proc"
install -d "$root/tmp/packages"
cp target/packages/postgresql-15-secretgate_*.deb target/packages/secretgate-cli_*.deb "$previous_dir"/*.deb "$root/tmp/packages/"

# 3. The walk.
SECRETGATE_CLEAN_ROOT="$root" SECRETGATE_PREVIOUS_VERSION="$PREVIOUS_VERSION" \
    cargo test -p secretgate-tests --test packages
