#!/usr/bin/env bash
# secretgate's benchmark suite (issue 7): not part of scripts/test.sh.
#   scripts/bench.sh                  every comparison; writes bench/report.md and bench/plots/
#   scripts/bench.sh write_tax        one or more of: write_tax bulk decrypt plpgsql scale
#                                     (partial or quick runs write target/bench-results/report-*.md)
#   scripts/bench.sh profile NAME     perf profile of one workload: write_tax register byok_create
#                                     scale_read scale_mix bulk decrypt -> target/bench-results/profile-NAME.md
# Environment: BENCH_QUICK=1 (fewer rows, 3 runs of 3 s), BENCH_RUNS, BENCH_DURATION, BENCH_PORT, BENCH_CLUSTER,
#   BENCH_BULK_ROWS, BENCH_DECRYPT_ROWS (default 1,000,000 each),
#   BENCH_REV=<git rev> builds that commit (exported with git archive) instead of the working tree.
# The extension is a release build, installed into a private copy of PostgreSQL 15 under
# target/bench-pg (the system installation is left alone); the cluster is torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/setup.sh >/dev/null
export PGRX_HOME="$ROOT/pgrx-config"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGROOT="$ROOT/target/bench-pg"

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
    pkg="$ROOT/target/bench-pkg/$rev"
    # Its own target dir: the shared one may hold someone else's build of the working tree.
    (cd "$src" && CARGO_TARGET_DIR="$ROOT/target/bench-build" \
        cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" --out-dir "$pkg")
    export BENCH_BUILT_REV=$rev BENCH_SOURCE="git archive of $BENCH_REV"
else
    rev=$(git rev-parse --short=12 HEAD)
    pkg="$ROOT/target/bench-pkg/worktree"
    cargo pgrx package -p secretgate --pg-config "$PG_CONFIG" --out-dir "$pkg"
    dirty=$(git status --porcelain -- extension core Cargo.toml | wc -l)
    if [ "$dirty" = 0 ]; then
        export BENCH_BUILT_REV=$rev BENCH_SOURCE="working tree at $rev, clean"
    else
        export BENCH_BUILT_REV="$rev+dirty" BENCH_SOURCE="working tree at $rev with $dirty changed file(s) in extension, core"
    fi
fi

# 2. A private, relocatable copy of PostgreSQL 15 (postgresql-15 + contrib, so pgcrypto)
#    with the release package installed into it.
if [ ! -x "$PGROOT/usr/lib/postgresql/15/bin/postgres" ]; then
    mkdir -p "$PGROOT/usr/lib/postgresql" "$PGROOT/usr/share/postgresql"
    cp -a /usr/lib/postgresql/15 "$PGROOT/usr/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$PGROOT/usr/share/postgresql/"
fi
(cd "$pkg" && find . -type f) | while read -r f; do
    install -D -m 0644 "$pkg/${f#./}" "$PGROOT/${f#./}"
done
sharedir=$("$PGROOT/usr/lib/postgresql/15/bin/pg_config" --sharedir)
if [ "$sharedir" != "$PGROOT/usr/share/postgresql/15" ]; then
    echo "bench: the copied PostgreSQL is not relocatable here (sharedir $sharedir)" >&2
    exit 1
fi
# The server runs as postgres: it must be able to read the tree.
chmod -R a+rX "$PGROOT/usr"

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
