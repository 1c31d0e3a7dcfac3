#!/usr/bin/env bash
# Build and install the extension into Debian's PostgreSQL 15, plus the frozen
# full scripts of released versions (extension/sql/released/) so that an older version
# can be installed and upgraded with ALTER EXTENSION ... UPDATE.
#
# Files are put in place with `install`, which unlinks the old file first: a
# running backend that has the old .so mapped keeps its copy. (`cargo pgrx
# install` rewrites the .so in place, which crashes running clusters.)
#   scripts/install.sh            debug build
#   scripts/install.sh --release  release build (benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME="$PWD/pgrx-config"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

if [ "${1:-}" = --release ]; then profile=release; flag=(); else profile=debug; flag=(--debug); fi
out="$PWD/target/$profile/secretgate-pg15"
rm -rf "$out"
cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" "${flag[@]}" --out-dir "$out"

(cd "$out" && find . -type f) | while read -r f; do
    install -D -m 0644 "$out/${f#./}" "/${f#./}"
done
extdir="$("$PG_CONFIG" --sharedir)/extension"
for f in extension/sql/released/secretgate--*.sql; do
    [ -e "$f" ] && install -m 0644 "$f" "$extdir/"
done
echo "installed secretgate ($profile) into $extdir"
