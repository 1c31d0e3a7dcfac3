#!/usr/bin/env bash
# secretgate's entrypoint: runs before the official image's
# docker-entrypoint.sh whenever the container starts the server, and
#   1. refuses to start, with one log line naming the keyring's path, when the
#      server would have no keyring it can read: a server that cannot decrypt
#      must not come up and fail on every secret;
#   2. gives the server its keyring on the command line: the file
#      SECRETGATE_KEYRING_FILE (default /run/secrets/secretgate_keyring, where
#      Docker, Compose and podman mount a secret named secretgate_keyring) or
#      the command SECRETGATE_KEYRING_COMMAND (never a key in the environment);
#   3. preloads secretgate: the server's own shared_preload_libraries (its
#      postgresql.conf, or the arguments) with secretgate added when missing,
#      so a data folder made by the official image works unchanged.
# Anything else (another command, --help, --version, -C) goes to
# docker-entrypoint.sh untouched, as do the variables, the volume and
# /docker-entrypoint-initdb.d.
set -Eeuo pipefail

fail() {
    printf 'secretgate: %s; not starting\n' "$*" >&2
    exit 1
}

# Runs a command as the user the server will run as: postgres when the
# container starts as root (docker-entrypoint.sh steps down with gosu), else
# the container's user.
as_server() {
    if [ "$(id -u)" = 0 ]; then gosu postgres "$@"; else "$@"; fi
}

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec docker-entrypoint.sh "$@"
fi
for arg; do
    case "$arg" in
        -'?' | --help | --describe-config | -V | --version | -C) exec docker-entrypoint.sh "$@" ;;
    esac
done

# 1 and 2: the keyring.
if [ -n "${SECRETGATE_KEYRING_COMMAND:-}" ]; then
    [ -z "${SECRETGATE_KEYRING_FILE:-}" ] || fail "both SECRETGATE_KEYRING_FILE and SECRETGATE_KEYRING_COMMAND are set: set one"
    # Run once now, as the server will run it; only the size of its output is kept.
    bytes=$(as_server /bin/sh -c "$SECRETGATE_KEYRING_COMMAND" </dev/null 2>/dev/null | wc -c) ||
        fail "the keyring command (SECRETGATE_KEYRING_COMMAND) failed when run as the server's user (uid $(as_server id -u))"
    [ "$bytes" -gt 0 ] || fail "the keyring command (SECRETGATE_KEYRING_COMMAND) printed nothing"
    set -- "$@" -c "secretgate.keyring_command=$SECRETGATE_KEYRING_COMMAND"
else
    keyring=${SECRETGATE_KEYRING_FILE:-/run/secrets/secretgate_keyring}
    uid=$(as_server id -u)
    [ -e "$keyring" ] || fail "no keyring at $keyring: mount the keyring file there as a secret (or set SECRETGATE_KEYRING_FILE or SECRETGATE_KEYRING_COMMAND)"
    [ -f "$keyring" ] || fail "the keyring at $keyring is not a regular file"
    as_server test -r "$keyring" || fail "the keyring at $keyring is not readable by the server's user (uid $uid): give it to that user, mode 0400 or 0600"
    # The server refuses a keyring others can read (SG003 on every use): refuse it now instead.
    mode=$(stat -L -c %a "$keyring")
    (((8#$mode & 8#077) == 0)) || fail "the keyring at $keyring is readable by group or others (mode $mode): give it to uid $uid, mode 0400 or 0600"
    set -- "$@" -c "secretgate.keyring_file=$keyring"
fi

# 3. The preload, read the way the server will read it: the data folder's
# configuration, or for a first start the sample initdb copies, with the
# arguments on top.
scratch=
if [ -s "$PGDATA/PG_VERSION" ]; then
    # As docker-entrypoint.sh does next: the server's user owns its data folder.
    if [ "$(id -u)" = 0 ]; then
        find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
    fi
    config=(-D "$PGDATA")
else
    scratch=$(mktemp -d)
    [ "$(id -u)" != 0 ] || chown postgres "$scratch"
    config=(-D "$scratch" --config-file="/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample")
fi
preload=$(as_server postgres "${config[@]}" "${@:2}" -C shared_preload_libraries 2>/dev/null) ||
    fail "cannot read shared_preload_libraries (postgres -C, as uid $(as_server id -u), in ${PGDATA}): check the data folder's configuration"
[ -z "$scratch" ] || rm -rf "$scratch"
case ",${preload// /}," in
    *,secretgate,*) ;;
    *) set -- "$@" -c "shared_preload_libraries=${preload:+$preload,}secretgate" ;;
esac

exec docker-entrypoint.sh "$@"
