#!/usr/bin/env bash
# Runs every test of the project: the README's test command (`make test`) and CI's.
# Installs what a fresh machine lacks first (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/go/bin:$HOME/.cargo/bin:$PATH"
export CGO_ENABLED=1

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

step "format"
cargo fmt --all -- --check
bad=$(gofmt -l go-module e2e/idp)
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi

step "lint"
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/gen-header.sh --check

step "engine, CLI and ABI tests (cargo test)"
cargo test --workspace --quiet

step "example policy test cases (zt-policy test)"
cargo run --quiet -p zt-policy-cli -- test examples/policy

step "C ABI test, and again under valgrind"
rust/ffi/tests/c/run.sh

step "Go module tests (go vet, go test; the tests rebuild a stale engine themselves)"
cargo build --release --quiet -p zt-policy-ffi
(cd go-module && go vet ./... && go test -count=1 ./...)

step "the benchmark's parsing and arithmetic (pytest; the benchmark itself is make bench)"
python3 -m pytest -q bench/test_report.py

step "fuzzing: every target ${ZTP_FUZZ_SECONDS:-30}s (scripts/fuzz.sh)"
scripts/fuzz.sh "${ZTP_FUZZ_SECONDS:-30}"

step "custom Caddy (xcaddy), and the test IdP"
xcaddy/build.sh
(cd e2e/idp && go vet ./... && go build -o ../../build/test-idp .)

step "end to end: Caddy + nginx + upstream + IdP + oauth2-proxy on loopback (pytest)"
python3 -m pytest -q e2e
