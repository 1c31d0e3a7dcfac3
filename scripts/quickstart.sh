#!/usr/bin/env bash
# Builds and installs secretgate, starts a throwaway cluster on loopback with a
# fresh keyring (replacing the previous quickstart cluster), runs `secretgate
# migrate run`, then a short tour. The cluster keeps running afterwards.
# Installs only what that needs (scripts/setup.sh --try), none of the test suite's tools.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --try
export PGRX_HOME="$PWD/pgrx-config"
DIR=${SECRETGATE_QUICKSTART_DIR:-/tmp/secretgate-quickstart}
PORT=${SECRETGATE_QUICKSTART_PORT:-54329}
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

scripts/install.sh
cargo build -p secretgate-cli
# A throwaway cluster: start from scratch each time, so the database runs
# the extension version and migrations just built.
scripts/cluster.sh stop "$DIR"
rm -rf "$DIR"
scripts/cluster.sh start "$DIR" "$PORT"

target/debug/secretgate --database-url "$URL" migrate run
psql "$URL" -X -q -v ON_ERROR_STOP=0 -f scripts/tour.sql

cat <<MSG

secretgate is running on 127.0.0.1:$PORT (data and keyring in $DIR).
  connect:  psql $URL
  tool:     DATABASE_URL=$URL target/debug/secretgate migrate info
  stop:     scripts/cluster.sh stop $DIR
MSG
