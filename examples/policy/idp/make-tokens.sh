#!/usr/bin/env bash
# A test-only signing key, the JWKS that publishes it, and two long-lived tokens that
# the example test cases present: one genuine, one with its payload tampered with.
# Real deployments get the JWKS from their IdP (the Caddy module fetches it).
set -euo pipefail
cd "$(dirname "$0")"
[ -f signing-key.pem ] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out signing-key.pem 2>/dev/null
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
mod=$(openssl rsa -in signing-key.pem -noout -modulus | cut -d= -f2)
n=$(python3 -c 'import sys, binascii; sys.stdout.buffer.write(binascii.unhexlify(sys.argv[1]))' "$mod" | b64url)
cat >jwks.json <<JSON
{"keys": [{"kty": "RSA", "kid": "example-1", "alg": "RS256", "use": "sig", "n": "$n", "e": "AQAB"}]}
JSON
sign() { # claims-json -> token
  local h p s
  h=$(printf '%s' '{"alg":"RS256","typ":"JWT","kid":"example-1"}' | b64url)
  p=$(printf '%s' "$1" | b64url)
  s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign signing-key.pem -binary | b64url)
  printf '%s.%s.%s' "$h" "$p" "$s"
}
claims='{"iss":"https://idp.example.internal","aud":"local-ai","sub":"carol@example.com","groups":["ml-users"],"iat":1767225600,"exp":4102444800}'
sign "$claims" >carol.jwt
# Same signature, payload changed to claim another subject: must be refused.
tampered_payload=$(printf '%s' "${claims/carol@/mallory@}" | b64url)
awk -F. -v p="$tampered_payload" '{printf "%s.%s.%s", $1, p, $3}' carol.jwt >tampered.jwt
echo "made jwks.json carol.jwt tampered.jwt"
