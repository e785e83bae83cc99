#!/usr/bin/env bash
# Writes the C header of the ABI from rust/ffi with cbindgen. With --check, fails when
# the committed header differs from what cbindgen makes now (CI runs that).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
header=rust/ffi/include/zt_policy.h
if [ "${1:-}" = "--check" ]; then
  fresh=$(mktemp)
  trap 'rm -f "$fresh"' EXIT
  cbindgen --quiet --config rust/ffi/cbindgen.toml --crate zt-policy-ffi --output "$fresh" rust/ffi
  if ! diff -u "$header" "$fresh"; then
    echo "$header is out of date: run scripts/gen-header.sh and commit it" >&2
    exit 1
  fi
  echo "$header matches the Rust source"
else
  cbindgen --quiet --config rust/ffi/cbindgen.toml --crate zt-policy-ffi --output "$header" rust/ffi
  echo "wrote $header"
fi
