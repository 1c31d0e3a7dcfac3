#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster on loopback, run by the `postgres` OS user
# (Postgres refuses root), with a freshly generated secretgate keyring.
#   scripts/cluster.sh start DIR PORT   initdb (first time), keyring, start
#   scripts/cluster.sh stop DIR
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
cmd=${1:?usage: cluster.sh start DIR PORT | stop DIR}
dir=${2:?cluster directory}

as_server() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port=${3:?port}
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
      as_server "$BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
      # A fresh keyring: version 1, 32 random bytes, readable by the server's user only.
      key=$(head -c 32 /dev/urandom | base64)
      as_server sh -c "umask 077 && printf '{\"current_version\": 1, \"keys\": {\"1\": \"%s\"}}\n' '$key' > '$dir/keyring.json'"
      unset key
      cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'secretgate'
secretgate.keyring_file = '$dir/keyring.json'
CONF
    fi
    if ! as_server "$BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_server "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    fi
    ;;
  stop)
    if [ -f "$dir/data/PG_VERSION" ]; then
      as_server "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  *) echo "usage: cluster.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
