#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30): the five Rust targets under
# libFuzzer with AddressSanitizer and leak detection (cargo-fuzz; the stable toolchain
# with RUSTC_BOOTSTRAP=1 for -Zsanitizer, so no nightly is needed), then Go's native
# fuzzing of the handler (FuzzServeHTTP). Debug assertions are on, so an arithmetic
# overflow is a finding too. New inputs go to a scratch corpus; the
# committed seeds (fuzz/corpus, go-module/testdata/fuzz) are read, never written. A
# crash leaves its input in fuzz/artifacts/<target>/ (or go-module/testdata/fuzz/) and
# fails the run: add it to the seeds and a regression test.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/go/bin:$HOME/.cargo/bin:$PATH"
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request policy token certificate body go)

CARGO_FUZZ_VERSION=0.13.2
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${targets[@]}"; do
  if [ "$t" = go ]; then
    echo "==> fuzz go FuzzServeHTTP (${secs}s)"
    (cd go-module && go test -run '^$' -fuzz '^FuzzServeHTTP$' -fuzztime "${secs}s" . 2>&1 |
      grep -E '^(fuzz:|ok|FAIL|---|PASS)|panic|Error' | tail -n 4) || { echo "go fuzzing failed"; exit 1; }
    summary+=("go FuzzServeHTTP: see above")
    continue
  fi
  echo "==> fuzz $t (${secs}s)"
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if ! (cd fuzz && cargo fuzz run --release --debug-assertions "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | awk '{print $2}')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
  summary+=("$t: ${execs:-?} executions in ${secs}s, coverage ${cov:-?} edges, 0 crashes, 0 leaks")
done
printf '%s\n' "${summary[@]}"
