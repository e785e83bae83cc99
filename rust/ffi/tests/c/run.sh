#!/usr/bin/env bash
# Builds the static library and the C test of the ABI, runs it, then runs it again
# under valgrind to catch leaks over thousands of create/decide/free cycles.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
cd "$root"
cargo build --release --quiet -p zt-policy-ffi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl x509 -in examples/policy/certs/alice.pem -outform DER -out "$work/alice.der"
gcc -std=c11 -Wall -Wextra -Werror -O1 -g -I rust/ffi/include -I "$here" "$here/abi_test.c" \
  target/release/libzt_policy_ffi.a -lpthread -ldl -lm -o "$work/abi_test"
echo "--- ABI test"
"$work/abi_test" "$work/alice.der" 3000
echo "--- ABI test under valgrind (leaks are errors)"
valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=3 \
  "$work/abi_test" "$work/alice.der" 1000
