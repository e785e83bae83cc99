#!/usr/bin/env bash
# Builds the custom Caddy with zt_policy: the Rust static library first, then Caddy
# (pinned below) with xcaddy and cgo, on glibc. Output: build/caddy (or $1).
#   ZTP_LINK=dynamic xcaddy/build.sh   links the shared library instead (tag ztp_dynamic)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PATH="$HOME/go/bin:$HOME/.cargo/bin:$PATH"

# v2.11.2 and later: older versions let clients spoof forward_auth identity headers.
CADDY_VERSION=v2.11.9
XCADDY_VERSION=v0.4.5
out="${1:-$root/build/caddy}"

command -v xcaddy >/dev/null || go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"

echo "==> Rust engine (static and shared library)"
cargo build --release --quiet -p zt-policy-ffi

echo "==> Caddy $CADDY_VERSION with zt_policy"
export CGO_ENABLED=1
# Go links the Rust library (named in #cgo LDFLAGS) without hashing it: an existing
# build/caddy whose Go inputs are unchanged counts as up to date even when the library
# was rebuilt. Removing it makes go build link again, with the library as it is now.
rm -f "$out"
tags=""
if [ "${ZTP_LINK:-static}" = dynamic ]; then tags="ztp_dynamic"; fi
mkdir -p "$(dirname "$out")"
XCADDY_SKIP_CLEANUP=${XCADDY_SKIP_CLEANUP:-0} XCADDY_GO_BUILD_FLAGS="${tags:+-tags=$tags} -trimpath" \
  xcaddy build "$CADDY_VERSION" \
  --with "github.com/zt-policy/zt-policy/go-module@v0.0.0-00010101000000-000000000000=$root/go-module" \
  --output "$out"
# (Read whole first: with pipefail, grep -q exiting early would SIGPIPE caddy.)
mods="$("$out" list-modules)"
grep -qx 'http.handlers.zt_policy' <<<"$mods" || {
  echo "built Caddy lacks http.handlers.zt_policy" >&2
  exit 1
}
echo "built $out ($("$out" version | head -1))"
