#!/usr/bin/env bash
# Installs what the build and the tests need and a fresh machine lacks: xcaddy (Go),
# cbindgen (Rust), nginx (Debian), valgrind for the ABI leak test. Idempotent.
set -euo pipefail
export PATH="$HOME/go/bin:$HOME/.cargo/bin:$PATH"

XCADDY_VERSION=v0.4.5
CBINDGEN_VERSION=0.29.4

if ! command -v xcaddy >/dev/null; then
  echo "installing xcaddy $XCADDY_VERSION"
  go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
fi
if ! command -v cbindgen >/dev/null || [ "$(cbindgen --version | awk '{print $2}')" != "$CBINDGEN_VERSION" ]; then
  echo "installing cbindgen $CBINDGEN_VERSION"
  cargo install --locked --quiet cbindgen --version "$CBINDGEN_VERSION"
fi
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
