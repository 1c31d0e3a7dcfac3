#!/usr/bin/env bash
# Build and install the extension into a PostgreSQL major (default 15, Debian's),
# plus the frozen full scripts of released versions (extension/sql/released/) so
# that an older version can be installed and upgraded with ALTER EXTENSION ... UPDATE.
#
# Files are put in place with `install`, which unlinks the old file first: a
# running backend that has the old .so mapped keeps its copy. (`cargo pgrx
# install` rewrites the .so in place, which crashes running clusters.)
#   scripts/install.sh [--pg N]            debug build, into major N (15, 16 or 18; default 15)
#   scripts/install.sh [--pg N] --release  release build (benchmarks)
# Major N must have been set up first (scripts/setup.sh --pg N).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-majors.sh
parse_pg_flag "$@"
export PGRX_HOME="$PWD/pgrx-config"
PG_CONFIG=$(installed_pg_config "$PG_MAJOR")
write_pgrx_config

if [ "${ARGS[0]:-}" = --release ]; then profile=release; flag=(); else profile=debug; flag=(--debug); fi
out="$PWD/target/$profile/secretgate-pg$PG_MAJOR"
rm -rf "$out"
cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG_MAJOR" \
    "${flag[@]}" --out-dir "$out"

# The server's directories belong to root: sudo when not run as root.
as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
(cd "$out" && find . -type f) | while read -r f; do
    "${as_root[@]}" install -D -m 0644 "$out/${f#./}" "/${f#./}"
done
extdir="$("$PG_CONFIG" --sharedir)/extension"
for f in extension/sql/released/secretgate--*.sql; do
    [ -e "$f" ] && "${as_root[@]}" install -m 0644 "$f" "$extdir/"
done
echo "installed secretgate ($profile) into $extdir ($("$PG_CONFIG" --version))"
