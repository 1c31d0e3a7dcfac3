#!/usr/bin/env bash
# The packages on a system that never built secretgate (docs/packaging.md):
#   1. builds this version's packages (scripts/package.sh) and the previous
#      released version's extension package (from its commit, cached);
#   2. copies a Debian 12 root made by debootstrap from Debian's packages, with
#      Debian's postgresql-15 installed in it (made once, cached in
#      $SECRETGATE_CACHE/debootstrap, default /var/cache/secretgate);
#   3. runs tests/blackbox/packages.rs against that root: dpkg -i, a cluster,
#      migrations, the tour, a refusal per gate, a rotation, a package upgrade
#      with ALTER EXTENSION UPDATE, dpkg -r leaving nothing behind;
#   4. checks the contents of the 16, 17 and 18 packages: their file list, every
#      symbol the library needs found in that major's server or its C
#      libraries, and CREATE EXTENSION (and an update from 0.2.0) on the
#      project's own server of that major, from the package's files.
# Needs root (debootstrap, chroot, mounts). The copy is removed at the end.
#   scripts/package-test.sh            15 on the clean root, then 16, 17 and 18's contents
#   scripts/package-test.sh --pg 15    only the clean-root walk
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/pg-majors.sh
CACHE=$SECRETGATE_CACHE
export PGRX_HOME="$ROOT/pgrx-config"
content_majors=(16 17 18)
[ "${1:-}" != --pg ] || { [ "${2:-}" = 15 ] || { echo "package-test: the clean root has 15 only" >&2; exit 2; }; content_majors=(); }
# The last commit of the previous released version (0.3.0): its package is
# what the upgrade starts from. Bump both when a version is released.
PREVIOUS_VERSION=0.3.0
PREVIOUS_REV=${SECRETGATE_PREVIOUS_REV:-f576cb4^}

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null

# 1. The packages.
scripts/package.sh --pg 15
scripts/package.sh --pg 15 --no-cli --rev "$PREVIOUS_REV"
previous_dir="$CACHE/package-rev/$(git rev-parse --short=12 "$PREVIOUS_REV")/packages"

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

# 4. The other majors' packages: contents, symbols, CREATE EXTENSION from their files.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
content_check() {
    local n=$1 pg_config bindir deb files x
    pg_config=$(installed_pg_config "$n")
    bindir=$("$pg_config" --bindir)
    scripts/package.sh --pg "$n" --no-cli
    deb="target/packages/postgresql-$n-secretgate_${version}_amd64.deb"
    x=$(mktemp -d /var/tmp/secretgate-pkg$n.XXXXXX)
    dpkg-deb -x "$deb" "$x"
    # Every file where Debian's PostgreSQL n looks for it, and nothing elsewhere.
    files=$(cd "$x" && find . -type f | sed 's#^\./##' | sort)
    for want in "usr/lib/postgresql/$n/lib/secretgate.so" "usr/share/postgresql/$n/extension/secretgate.control" \
        "usr/share/postgresql/$n/extension/secretgate--$version.sql" \
        "usr/share/postgresql/$n/extension/secretgate--0.2.0.sql" \
        "usr/share/postgresql/$n/extension/secretgate--0.2.0--0.3.0.sql"; do
        grep -qx "$want" <<<"$files" || { echo "package-test: $deb lacks $want" >&2; exit 1; }
    done
    if grep -v -e "^usr/lib/postgresql/$n/lib/" -e "^usr/share/postgresql/$n/extension/" \
        -e "^usr/share/doc/postgresql-$n-secretgate/" <<<"$files"; then
        echo "package-test: $deb holds the files above outside PostgreSQL $n's folders" >&2; exit 1
    fi
    grep -q "^Depends: postgresql-$n," < <(dpkg-deb -f "$deb") || { echo "package-test: $deb does not depend on postgresql-$n" >&2; exit 1; }
    # The library's undefined symbols: each defined by that major's server or a library it loads
    # (weak ones, which std looks for only if the C library has them, are not needed).
    local so="$x/usr/lib/postgresql/$n/lib/secretgate.so" missing
    ! ldd "$so" | grep -q "not found" || { ldd "$so" >&2; exit 1; }
    missing=$(comm -23 <(nm -D --undefined-only "$so" | awk '$1 == "U" {print $2}' | sed 's/@.*//' | sort -u) \
        <({ nm -D --defined-only "$bindir/postgres"; ldd "$so" | grep -o '/[^ ]*' | sort -u | xargs -r nm -D --defined-only; } \
            | awk '{print $3}' | sed 's/@.*//' | sort -u) | grep -v '^__gmon_start__$\|^_ITM_\|^__cxa_finalize$' || true)
    [ -z "$missing" ] || { echo "package-test: secretgate.so for $n needs symbols PostgreSQL $n does not have: $missing" >&2; exit 1; }
    # CREATE EXTENSION on the project's server of that major, from the package's files.
    install -m 0644 "$so" "$("$pg_config" --pkglibdir)/secretgate.so"
    install -m 0644 "$x/usr/share/postgresql/$n/extension/"* "$("$pg_config" --sharedir)/extension/"
    local c=$x/cluster port
    install -d -o postgres -g postgres -m 0700 "$c"
    (umask 077 && printf '{"current_version": 1, "keys": {"1": "%s"}}\n' "$(head -c 32 /dev/urandom | base64)" >"$c/keyring.json")
    chown postgres: "$c/keyring.json"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    runuser -u postgres -- "$bindir/initdb" -D "$c/data" -U postgres -A trust --no-sync >/dev/null
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nshared_preload_libraries = 'secretgate'\nsecretgate.keyring_file = '%s'\n" \
        "$port" "$c" "$c/keyring.json" >>"$c/data/postgresql.conf"
    runuser -u postgres -- "$bindir/pg_ctl" start -w -D "$c/data" -l "$c/server.log" >/dev/null
    local sql="CREATE EXTENSION secretgate; SELECT extversion FROM pg_extension WHERE extname = 'secretgate';
               SELECT secretgate.current_key_version();
               CREATE DATABASE older; \\c older
               CREATE EXTENSION secretgate VERSION '0.2.0'; ALTER EXTENSION secretgate UPDATE;
               SELECT extversion FROM pg_extension WHERE extname = 'secretgate';"
    local got status=0
    got=$(runuser -u postgres -- "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$c" -p "$port" -d postgres <<<"$sql" 2>&1) || status=$?
    runuser -u postgres -- "$bindir/pg_ctl" stop -w -D "$c/data" -m fast >/dev/null
    if [ "$status" != 0 ] || [ "$got" != "$(printf '%s\n1\n%s' "$version" "$version")" ]; then
        echo "package-test: CREATE EXTENSION from the $n package gave (exit $status):" >&2
        echo "$got" >&2; tail -20 "$c/server.log" >&2; exit 1
    fi
    rm -rf "$x"
    echo "package-test: postgresql-$n-secretgate: files, symbols and CREATE EXTENSION on $("$pg_config" --version) ok"
}
for n in "${content_majors[@]}"; do content_check "$n"; done
