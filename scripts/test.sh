#!/usr/bin/env bash
# The test command: every tier, from scratch, on a fresh or warm machine.
#   0. house rules       cargo fmt --check, clippy -D warnings, scripts/check-layers.sh
#   1. pure core         cargo test -p secretgate-core -p secretgate-cli (no Postgres)
#   2. in-server         cargo pgrx test pg15 (a throwaway cluster run as `postgres`)
#   3. black-box (sqlx)  cargo test -p secretgate-tests (each binary starts its own cluster)
#   4. fuzz              scripts/fuzz.sh: each secretgate-core fuzz target for a
#                        bounded time (SECRETGATE_FUZZ_SECONDS, default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PGRX_HOME="$PWD/pgrx-config"

echo "== tier 0: house rules"
cargo fmt --all --check
scripts/check-layers.sh
cargo clippy --workspace --all-targets -- -D warnings

echo "== tier 1: pure core"
cargo test -p secretgate-core -p secretgate-cli

echo "== tier 2: in-server (#[pg_test])"
pgtest=$(mktemp -d /tmp/secretgate-pgtest.XXXXXX)
trap 'rm -rf "$pgtest"' EXIT
[ "$(id -u)" -ne 0 ] || chown postgres: "$pgtest"
cargo pgrx test pg15 -p secretgate --runas postgres --pgdata "$pgtest/data"

echo "== tier 3: black-box (sqlx against a real server)"
# `cargo pgrx test` installed a test build; install the real one (and the
# frozen scripts of released versions, for the upgrade test) for the black-box tier.
scripts/install.sh
cargo build -p secretgate-cli
SECRETGATE_BIN="$PWD/target/debug/secretgate" cargo test -p secretgate-tests

echo "== tier 4: fuzz (secretgate-core, cargo-fuzz)"
# Short and bounded: catches a shallow crash early; saved crashes are replayed in tier 1.
scripts/fuzz.sh "${SECRETGATE_FUZZ_SECONDS:-15}"

echo "== all tiers passed"
