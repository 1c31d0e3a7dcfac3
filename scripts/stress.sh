#!/usr/bin/env bash
# The long invariant stress run: tests/blackbox/stress.rs (the `stress`
# black-box test) with a longer load phase.
#
#   scripts/stress.sh [seconds]        default 600
#
# 16 sessions (agents that are members of secretgate_agent, services that set
# secretgate.caller = 'agent', superuser and plain operators) run random
# transactions against one throwaway cluster for that many seconds, while
# reencrypt batches run and the keyring gets a new current version every 30 s
# (at most). Afterwards every invariant of the gates is checked over what
# committed: the platform-identity history replayed in commit order, the BYOK
# and self-write audits, forbidden keys and MODEL values, verify_secrets.
# The report (operations, commits, refusals by SQLSTATE, violations) goes to
# stdout; the exit status is the test's.
#
# It builds and installs the extension first (scripts/install.sh, safe while
# other clusters run). Environment:
#   SECRETGATE_STRESS_SEED=<n>   replay the sessions' random choices of an earlier run
#   SECRETGATE_STRESS_NO_INSTALL=1   use the extension already installed
# The short version runs with the other black-box tests
# (cargo test -p secretgate-tests --test stress, 20 s by default).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
case "$secs" in
    ''|*[!0-9]*) echo "usage: scripts/stress.sh [seconds]" >&2; exit 2 ;;
esac
export PGRX_HOME="$PWD/pgrx-config"
if [ "${SECRETGATE_STRESS_NO_INSTALL:-0}" != 1 ]; then
    scripts/install.sh
fi
cargo build -p secretgate-tests --test stress
SECRETGATE_STRESS_SECS="$secs" cargo test -p secretgate-tests --test stress
