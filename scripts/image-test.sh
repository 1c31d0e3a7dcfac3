#!/usr/bin/env bash
# The container tier: secretgate's image (docker/Dockerfile) for each major,
# built by scripts/image.sh on its local stand-in base, then walked with
# podman by tests/blackbox/image.rs: a first start with the keyring as a
# secret (the init script's CREATE EXTENSION, the preload), `secretgate
# migrate run` from the host, the tour, a refusal per gate by SQLSTATE, a
# restart on the same volume reading every secret back, the keyring from
# SECRETGATE_KEYRING_COMMAND, another keyring giving SG004, no keyring
# refusing to start with the documented line, and nothing secret in
# `podman logs` or `podman inspect`.
#   scripts/image-test.sh            15 and 17 (the majors with a stand-in base)
#   scripts/image-test.sh --pg 17    one major (repeatable)
# Needs root. The images stay (localhost/secretgate:VERSION-pgN and the
# stand-ins), so a second run builds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
majors=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) majors+=("${2:?--pg needs a major version}"); shift 2 ;;
        *) echo "usage: scripts/image-test.sh [--pg N]..." >&2; exit 2 ;;
    esac
done
[ ${#majors[@]} -gt 0 ] || majors=(15 17)

# The host's tool runs the migrations against the container, as a platform's would.
cargo build -q -p secretgate-cli
for n in "${majors[@]}"; do
    started=$SECONDS
    image=$(scripts/image.sh --pg "$n" | tail -1)
    built=$((SECONDS - started))
    SECRETGATE_IMAGE="$image" SECRETGATE_IMAGE_MAJOR="$n" SECRETGATE_BIN="$PWD/target/debug/secretgate" \
        cargo test -q -p secretgate-tests --test image
    echo "image-test: $image passed (built in ${built}s, walked in $((SECONDS - started - built))s)"
done
