#!/usr/bin/env bash
# Runs every test of the project: the README's test command (`make test`) and CI's.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "engine and CLI tests (cargo test)"
cargo test --workspace --quiet

step "example policy test cases (zt-policy test)"
cargo run --quiet -p zt-policy-cli -- test examples/policy
