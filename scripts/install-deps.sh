#!/usr/bin/env bash
# Installs what the build and the tests need and a fresh machine lacks: xcaddy and
# oauth2-proxy (Go), cbindgen (Rust), nginx, valgrind and redis-server (Debian), the openai SDK
# (PyPI) for the end-to-end client test and pydantic for the differential test of the
# llm view; with --bench also perf (Debian). Idempotent.
set -euo pipefail
export PATH="$HOME/go/bin:$HOME/.cargo/bin:$PATH"

XCADDY_VERSION=v0.4.5
OAUTH2_PROXY_VERSION=v7.15.6
CBINDGEN_VERSION=0.29.4

if ! command -v xcaddy >/dev/null; then
  echo "installing xcaddy $XCADDY_VERSION"
  go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
fi
if ! command -v cbindgen >/dev/null || [ "$(cbindgen --version | awk '{print $2}')" != "$CBINDGEN_VERSION" ]; then
  echo "installing cbindgen $CBINDGEN_VERSION"
  cargo install --locked --quiet cbindgen --version "$CBINDGEN_VERSION"
fi
if ! command -v oauth2-proxy >/dev/null; then
  echo "installing oauth2-proxy $OAUTH2_PROXY_VERSION"
  go install "github.com/oauth2-proxy/oauth2-proxy/v7@$OAUTH2_PROXY_VERSION"
fi
# pip into whichever python3 runs the tests; Debian's own python3 marks itself
# externally managed, so fall back to --break-system-packages there.
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
fi
for mod in pytest yaml; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    pkg=$mod; [ "$mod" = yaml ] && pkg=pyyaml
    pip_install "$pkg"
  fi
done
# pydantic: the differential test of the llm view against vLLM's request models.
if ! python3 -c 'import pydantic, sys; sys.exit(pydantic.VERSION < "2")' 2>/dev/null; then
  pip_install 'pydantic>=2.10,<3'
fi
if ! python3 -c 'import openai' 2>/dev/null; then
  echo "installing the openai Python SDK"
  pip_install 'openai>=1.40'
fi
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v valgrind >/dev/null || missing+=(valgrind)
# The Redis-protocol store the shared limits are tested on (issue 18); the tests start
# their own on loopback (Debian's package starts none without systemd).
command -v redis-server >/dev/null || command -v valkey-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
# The benchmark (`make bench`, not the tests) also profiles Caddy with perf.
if [ "${1:-}" = --bench ]; then command -v perf >/dev/null || missing+=(linux-perf); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
