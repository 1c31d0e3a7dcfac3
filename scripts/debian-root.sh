# Sourced by the scripts: a minimal Debian root holding Debian's own
# PostgreSQL packages, installed the way the official postgres container image
# installs them (its Dockerfile's steps, with Debian's archive in place of
# apt.postgresql.org):
#   - the `postgres` user and group with id 999 (files on a volume keep their
#     owner across images, so this id is part of the image's contract);
#   - postgresql-common told to create no cluster, then postgresql-MAJOR;
#   - gosu, the en_US.UTF-8 locale, libnss-wrapper, xz-utils, zstd and less.
# The same root serves as the server a major is tested on when the host has no
# build of it (17: its programs run on the host, with this root's C library)
# and as the file system of a local stand-in for postgres:MAJOR-SUITE.
# Needs root (debootstrap, chroot) and Debian's archive.

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# debian_pg_root SUITE MAJOR DEST: makes DEST unless it already holds the
# server. Built in DEST.tmp and renamed into place, so an interrupted run
# leaves nothing half made.
debian_pg_root() {
    local suite=$1 major=$2 dest=$3
    [ ! -x "$dest/usr/lib/postgresql/$major/bin/postgres" ] || return 0
    command -v debootstrap >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    echo "debian-root: making a Debian $suite root with postgresql-$major in $dest"
    mkdir -p "$(dirname "$dest")"
    rm -rf --one-file-system "$dest.tmp"
    debootstrap --variant=minbase "$suite" "$dest.tmp" "$DEBIAN_MIRROR" >"$dest.tmp.log" 2>&1 ||
        { tail -20 "$dest.tmp.log" >&2; return 1; }
    # No service may start inside the root while packages are installed.
    printf '#!/bin/sh\nexit 101\n' >"$dest.tmp/usr/sbin/policy-rc.d"
    chmod 0755 "$dest.tmp/usr/sbin/policy-rc.d"
    chroot "$dest.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        MAJOR="$major" /bin/sh -euc '
        groupadd -r postgres --gid=999
        useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
        install -d -o postgres -g postgres -m 1777 /var/lib/postgresql
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql-common gosu locales libnss-wrapper xz-utils zstd less
        sed -ri "s/#(create_main_cluster) .*$/\1 = false/" /etc/postgresql-common/createcluster.conf
        apt-get install -y -qq --no-install-recommends "postgresql-$MAJOR"
        echo "en_US.UTF-8 UTF-8" >>/etc/locale.gen
        locale-gen >/dev/null
        apt-get clean
        rm -rf /var/lib/apt/lists/*
    ' >>"$dest.tmp.log" 2>&1 || { tail -20 "$dest.tmp.log" >&2; return 1; }
    rm -f "$dest.tmp/usr/sbin/policy-rc.d"
    mv "$dest.tmp" "$dest"
    rm -f "$dest.tmp.log"
}
