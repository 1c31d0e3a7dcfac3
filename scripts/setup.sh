#!/usr/bin/env bash
# Installs everything secretgate needs on a fresh Debian 12 machine that has
# only the Rust toolchain. Idempotent: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=0.18.0
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo pkg-config python3-venv)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
# The Python client snippet of docs/adopting.md runs in tests/blackbox/adopt.rs,
# with psycopg from a cached virtualenv (pinned; made once).
PSYCOPG_VERSION=3.3.9
if ! target/py-venv/bin/python -c "import sys, psycopg; sys.exit(psycopg.__version__ != '$PSYCOPG_VERSION')" 2>/dev/null; then
  echo "setup: making target/py-venv with psycopg $PSYCOPG_VERSION"
  python3 -m venv target/py-venv
  target/py-venv/bin/pip install -q "psycopg[binary]==$PSYCOPG_VERSION"
fi
# cargo-fuzz, for the fuzz tier: pinned, and installed if missing, by scripts/fuzz.sh.
scripts/fuzz.sh --install-only
echo "setup: ok (postgresql-15, cargo-pgrx $PGRX_VERSION, cargo-fuzz, PGRX_HOME=$(pwd)/pgrx-config)"
