#!/usr/bin/env bash
# Fuzzes secretgate-core with cargo-fuzz (libFuzzer), each target in fuzz/
# for a bounded time:
#   scripts/fuzz.sh [seconds-per-target]   (default 60)
#   scripts/fuzz.sh --install-only         only install the pinned cargo-fuzz (scripts/setup.sh does this)
# The corpus grows in fuzz/corpus/<target> (gitignored), seeded from the
# committed inputs in core/tests/fuzz-regressions/<target>/. A crashing input
# is copied there too, to be committed: `cargo test -p secretgate-core --test
# fuzz_regressions` replays every file there through the same target bodies
# (fuzz/src/lib.rs). Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(keyring_parse decrypt roundtrip)

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION (takes about a minute)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
[ "${1:-}" != "--install-only" ] || exit 0

seconds=${1:-60}
# This machine has stable rustc only. `--sanitizer none` is the cargo-fuzz mode
# that passes no -Z flag (the default, AddressSanitizer, needs nightly's
# -Zsanitizer), so no RUSTC_BOOTSTRAP is needed. secretgate-core has no unsafe
# code, so what we want from libFuzzer is its coverage-guided search, with each
# broken property a panic, which libFuzzer reports as a crash.
cargo fuzz build --sanitizer none

failed=()
for target in "${TARGETS[@]}"; do
  corpus=fuzz/corpus/$target
  saved=core/tests/fuzz-regressions/$target
  log=fuzz/artifacts/$target.log
  artifacts=$(mktemp -d /tmp/secretgate-fuzz.XXXXXX)
  mkdir -p "$corpus" "$saved" fuzz/artifacts
  echo "== fuzz: $target for ${seconds}s (log: $log)"
  # libFuzzer adds new inputs to the first corpus directory only; the saved
  # ones just seed it. A later -artifact_prefix overrides cargo-fuzz's own.
  if cargo fuzz run --sanitizer none "$target" "$corpus" "$saved" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    grep -E '^#[0-9]+.*DONE|stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
  else
    # The panic message and libFuzzer's summary only: inputs may hold key-shaped bytes.
    grep -E -A1 'panicked at' "$log" || true
    grep -E '^SUMMARY|^==[0-9]+== ERROR' "$log" || true
    for f in "$artifacts"/*; do
      case "$(basename "$f")" in
        crash-* | timeout-* | oom-* | leak-*)
          cp "$f" "$saved/"
          echo "fuzz: $target: saved $saved/$(basename "$f") (commit it; fix the bug it shows)"
          ;;
      esac
    done
    failed+=("$target")
  fi
  rm -rf "$artifacts"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ok (${TARGETS[*]}, ${seconds}s each)"
