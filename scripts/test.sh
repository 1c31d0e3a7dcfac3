#!/usr/bin/env bash
# The test command: every tier, from scratch, on a fresh or warm machine.
#   0. house rules       cargo fmt --check, clippy -D warnings, scripts/check-layers.sh,
#                        scripts/check-shipped.sh
#   1. pure core         cargo test -p secretgate-core -p secretgate-cli (no Postgres)
#   2. in-server         cargo pgrx test pgN (a throwaway cluster run as `postgres`)
#   3. black-box (sqlx)  cargo test -p secretgate-tests (each binary starts its own cluster)
#   4. fuzz              scripts/fuzz.sh: each secretgate-core fuzz target for a
#                        bounded time (SECRETGATE_FUZZ_SECONDS, default 15)
#   5. packages          scripts/package-test.sh: the .debs built and installed on a clean
#                        Debian 12 root (15), the 16, 17 and 18 packages' contents checked
#   6. container image   scripts/image-test.sh: the image on a local stand-in for the
#                        official one (15 and 17), run with podman
#
#   scripts/test.sh           (CI) every tier on PostgreSQL 15, tiers 2 and 3 on 16, 17 and 18,
#                             tier 6 on 15 and 17
#   scripts/test.sh --pg N    every tier against major N only (15, 16, 17 or 18; tier 6 when N is 15 or 17)
# 16, 17 and 18 are installed by scripts/setup.sh --pg N (cached in $SECRETGATE_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-majors.sh
if [ $# -gt 0 ]; then
    parse_pg_flag "$@"
    [ ${#ARGS[@]} -eq 0 ] || { echo "usage: scripts/test.sh [--pg N]" >&2; exit 2; }
    all_tiers=("$PG_MAJOR")
    server_tiers=()
else
    all_tiers=(15)
    server_tiers=(16 17 18)
fi
majors=("${all_tiers[@]}" "${server_tiers[@]}")
export PGRX_HOME="$PWD/pgrx-config"

started=$SECONDS
timing=()
mark() { timing+=("$1: $((SECONDS - tier_start))s"); }

tier_start=$SECONDS
for major in "${majors[@]}"; do scripts/setup.sh --pg "$major" | tail -1; done
mark "setup (${majors[*]})"

for major in "${all_tiers[@]}"; do
    echo "== tier 0: house rules (PostgreSQL $major)"
    tier_start=$SECONDS
    cargo fmt --all --check
    scripts/check-layers.sh
    scripts/check-shipped.sh
    cargo clippy --workspace --all-targets -- -D warnings
    # The extension's code for this major (its cfg'd shims in extension/src/pg/).
    [ "$major" = 15 ] || cargo clippy -p secretgate --all-targets --no-default-features --features "pg$major" -- -D warnings
    mark "tier 0"

    echo "== tier 1: pure core"
    tier_start=$SECONDS
    cargo test -p secretgate-core -p secretgate-cli
    mark "tier 1"
done

pgtest=$(mktemp -d /tmp/secretgate-pgtest.XXXXXX)
trap 'rm -rf "$pgtest"' EXIT
[ "$(id -u)" -ne 0 ] || chown postgres: "$pgtest"
for major in "${majors[@]}"; do
    echo "== tier 2: in-server (#[pg_test]) on PostgreSQL $major"
    tier_start=$SECONDS
    rm -rf "$pgtest/data"
    cargo pgrx test "pg$major" -p secretgate --runas postgres --pgdata "$pgtest/data"
    mark "tier 2 on $major"
done

# `cargo pgrx test` installed a test build; install the real one (and the
# frozen scripts of released versions, for the upgrade test) for the black-box
# tier, into every major the cross-major test (tests/blackbox/majors.rs) uses.
tier_start=$SECONDS
install=("${majors[@]}")
if [[ " ${majors[*]} " == *" 17 "* || " ${majors[*]} " == *" 18 "* ]]; then
    # majors.rs moves 15 and 16 clusters to 17 and to 18 in those majors' passes: every installed major gets the same build.
    install=()
    for major in "${SUPPORTED_MAJORS[@]}"; do [ ! -x "$(pg_config_of "$major")" ] || install+=("$major"); done
fi
for major in "${install[@]}"; do
    scripts/install.sh --pg "$major"
done
cargo build -p secretgate-cli
mark "install"

# The load trials (the audit trail under 16 sessions, the stress mix, a
# 100,000-row rotation, the identity races) run at full length on the major
# that gets every tier; on the other majors of the CI run they run shorter,
# the same trials with fewer seconds, rows and iterations.
lighter=(SECRETGATE_AUDIT_LOAD_SECS=15 SECRETGATE_STRESS_SECS=8 SECRETGATE_ROTATE_ROWS=20000 SECRETGATE_RACE_ITERATIONS=50)
for major in "${majors[@]}"; do
    echo "== tier 3: black-box (sqlx against a real PostgreSQL $major server)"
    tier_start=$SECONDS
    load=()
    [[ " ${all_tiers[*]} " == *" $major "* ]] || load=("${lighter[@]}")
    env ${load[@]+"${load[@]}"} SECRETGATE_PG_BIN="$("$(pg_config_of "$major")" --bindir)" SECRETGATE_BIN="$PWD/target/debug/secretgate" \
        cargo test -p secretgate-tests
    mark "tier 3 on $major"
done

echo "== tier 4: fuzz (secretgate-core, cargo-fuzz)"
tier_start=$SECONDS
# Short and bounded: catches a shallow crash early; saved crashes are replayed in tier 1.
scripts/fuzz.sh "${SECRETGATE_FUZZ_SECONDS:-15}"
mark "tier 4"

if [[ " ${majors[*]} " == *" 15 "* ]]; then
    echo "== tier 5: packages (a .deb per major and the tool; the clean Debian 12 root)"
    tier_start=$SECONDS
    # 15 on a debootstrapped root (dpkg -i, upgrade, tour, gates, rotation, dpkg -r);
    # the other majors tested here: contents, symbols and CREATE EXTENSION from their files.
    if [ ${#majors[@]} -gt 1 ]; then scripts/package-test.sh; else scripts/package-test.sh --pg 15; fi
    mark "tier 5"
fi

# The image's stand-in bases exist for the majors Debian's archive has (15 and 17).
image_majors=()
for major in "${majors[@]}"; do
    [ "$major" != 15 ] && [ "$major" != 17 ] || image_majors+=(--pg "$major")
done
if [ ${#image_majors[@]} -gt 0 ]; then
    echo "== tier 6: the container image (podman, on a stand-in for the official image)"
    tier_start=$SECONDS
    scripts/image-test.sh "${image_majors[@]}"
    mark "tier 6"
fi

printf '  %s\n' "${timing[@]}"
echo "== all tiers passed on PostgreSQL ${majors[*]} in $((SECONDS - started))s"
