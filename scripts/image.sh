#!/usr/bin/env bash
# Builds secretgate's container image (docker/Dockerfile) for one PostgreSQL
# major with podman, and prints its reference as the last line.
#   scripts/image.sh --pg 17                  on a local stand-in for postgres:17-trixie
#   scripts/image.sh --pg 15                  on a local stand-in for postgres:15-bookworm
#   scripts/image.sh --pg 16 --base postgres:16-bookworm
#                                             on a real base image (a registry must be reachable)
# The packages come from scripts/package.sh --pg N (built here first).
#
# The stand-in: without --base, the base image is made here, with no
# registry: Debian's own postgresql-N (scripts/debian-root.sh: 15 from Debian
# 12, 17 from Debian 13; the archive has no other major) installed the way the
# official image installs it, plus that image's entrypoint scripts
# (docker-entrypoint.sh, docker-ensure-initdb.sh), its environment, volume,
# stop signal and command. The scripts are read at build time from a checkout
# of github.com/docker-library/postgres named by SECRETGATE_DOCKER_LIBRARY
# (default ../shared/peers/docker-library-postgres beside the source tree),
# from its N/SUITE or N-SUITE folder; they are never copied into this tree.
# The stand-in is kept as localhost/secretgate-standin/postgres:N-SUITE and
# made again only when its inputs change (a label holds their digest).
#
# podman runs rootful with runc, cgroupfs and host networking, which work in
# nested containers and on hosts without systemd (see docs/containers.md).
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/pg-majors.sh
. scripts/debian-root.sh

PG_MAJOR= base=
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) PG_MAJOR=${2:?--pg needs a major version}; shift 2 ;;
        --base) base=${2:?--base needs an image}; shift 2 ;;
        *) echo "usage: scripts/image.sh --pg N [--base IMAGE]" >&2; exit 2 ;;
    esac
done
[ -n "$PG_MAJOR" ] || { echo "usage: scripts/image.sh --pg N [--base IMAGE]" >&2; exit 2; }
pg_config_of "$PG_MAJOR" >/dev/null
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
command -v podman >/dev/null && command -v runc >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc >/dev/null

# The base: a real image, or the stand-in made here.
if [ -z "$base" ]; then
    suite=$(debian_suite_of "$PG_MAJOR") || {
        echo "image: no stand-in for postgres:$PG_MAJOR (Debian's archive has PostgreSQL 15 and 17 only): pass --base" >&2
        exit 2
    }
    library=${SECRETGATE_DOCKER_LIBRARY:-$ROOT/../shared/peers/docker-library-postgres}
    official=
    for dir in "$library/$PG_MAJOR/$suite" "$library/$PG_MAJOR-$suite"; do
        [ ! -f "$dir/docker-entrypoint.sh" ] || official=$dir
    done
    [ -n "$official" ] || {
        echo "image: the official image's files for $PG_MAJOR-$suite are not in $library (set SECRETGATE_DOCKER_LIBRARY to a checkout of github.com/docker-library/postgres)" >&2
        exit 1
    }
    root=$(debian_root_of "$PG_MAJOR")
    debian_pg_root "$suite" "$PG_MAJOR" "$root"
    base="localhost/secretgate-standin/postgres:$PG_MAJOR-$suite"
    # What the stand-in is made of: this script, the official files, and the server's version.
    inputs=$(
        {
            cat "$0"
            cat "$official/Dockerfile" "$official/docker-entrypoint.sh" "$official/docker-ensure-initdb.sh"
            chroot "$root" dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR"
        } | sha256sum | cut -c1-16
    )
    if [ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "secretgate.standin"}}' "$base" 2>/dev/null)" != "$inputs" ]; then
        echo "image: making the stand-in $base from $root and $official"
        # The official Dockerfile's own values for the data folder and the volume (18 moved both).
        pgdata=$(sed -n 's/^ENV PGDATA //p' "$official/Dockerfile")
        volume=$(sed -n 's/^VOLUME //p' "$official/Dockerfile")
        [ -n "$pgdata" ] && [ -n "$volume" ] || { echo "image: no ENV PGDATA or VOLUME in $official/Dockerfile" >&2; exit 1; }
        work=$(mktemp -d /var/tmp/secretgate-standin.XXXXXX)
        trap 'rm -rf --one-file-system "$work"' EXIT
        cp -a "$root/." "$work/"
        install -m 0755 "$official/docker-entrypoint.sh" "$official/docker-ensure-initdb.sh" "$work/usr/local/bin/"
        ln -sT docker-ensure-initdb.sh "$work/usr/local/bin/docker-enforce-initdb.sh"
        # The official Dockerfile's remaining steps: the sample configuration
        # diverted and listening on every address, the socket folder, the
        # initialisation folder and the data folder.
        chroot "$work" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin MAJOR="$PG_MAJOR" PGDATA="$pgdata" /bin/sh -euc '
            dpkg-divert --add --rename --divert /usr/share/postgresql/postgresql.conf.sample.dpkg \
                "/usr/share/postgresql/$MAJOR/postgresql.conf.sample" >/dev/null
            cp /usr/share/postgresql/postgresql.conf.sample.dpkg /usr/share/postgresql/postgresql.conf.sample
            ln -s ../postgresql.conf.sample "/usr/share/postgresql/$MAJOR/"
            sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '"'"'*'"'"'!" /usr/share/postgresql/postgresql.conf.sample
            grep -qF "listen_addresses = '"'"'*'"'"'" /usr/share/postgresql/postgresql.conf.sample
            install -d -o postgres -g postgres -m 3777 /var/run/postgresql
            install -d -m 0755 /docker-entrypoint-initdb.d
            install -d -o postgres -g postgres -m 1777 "$PGDATA"
        '
        tar -C "$work" --numeric-owner -c . | "${PODMAN[@]}" import \
            --change "ENV PG_MAJOR=$PG_MAJOR" \
            --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/$PG_MAJOR/bin" \
            --change "ENV LANG=en_US.utf8" \
            --change "ENV PGDATA=$pgdata" \
            --change "VOLUME $volume" \
            --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
            --change "STOPSIGNAL SIGINT" \
            --change "EXPOSE 5432" \
            --change 'CMD ["postgres"]' \
            --change "LABEL secretgate.standin=$inputs" \
            - "$base" >/dev/null
        rm -rf --one-file-system "$work"
        trap - EXIT
    fi
fi

# The packages, and the image.
scripts/package.sh --pg "$PG_MAJOR" >/dev/null
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
image="localhost/secretgate:$version-pg$PG_MAJOR"
"${PODMAN[@]}" build --quiet --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -f docker/Dockerfile --build-arg "PG_MAJOR=$PG_MAJOR" --build-arg "BASE_IMAGE=$base" \
    --build-arg "SECRETGATE_VERSION=$version" --label "secretgate.base=$base" -t "$image" . >/dev/null
echo "image: $image on $base"
echo "$image"
