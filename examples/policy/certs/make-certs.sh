#!/usr/bin/env bash
# Makes the example PKI that the example policy's test cases use: a device CA, an
# untrusted CA, and client certificates for each kind of caller. Test-only keys.
#
# With the step CLI the same certificates would be, for example:
#   step certificate create "zt-policy Example Device CA" ca.pem ca.key --profile root-ca --no-password --insecure
#   step certificate create alice alice.pem alice.key --profile leaf --ca ca.pem --ca-key ca.key \
#     --san alice@example.com --san spiffe://example.internal/user/alice --no-password --insecure
set -euo pipefail
cd "$(dirname "$0")"
DAYS=3650

ca() { # name file
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
    -subj "/O=Example Corp/CN=$1" -keyout "$2.key" -out "$2.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # file subject san issuer
  local ext
  ext=$(mktemp)
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=%s\n' "$3" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -CAcreateserial -days "$DAYS" \
    -extfile "$ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$ext"
}

ca "zt-policy Example Device CA" ca
ca "Untrusted CA" other-ca
leaf alice "/O=Example Corp/OU=ml-users/CN=alice" \
  "email:alice@example.com,URI:spiffe://example.internal/user/alice,DNS:alice-laptop.example.internal" ca
leaf bob "/O=Example Corp/OU=sre/CN=bob" "email:bob@example.com" ca
leaf carol "/O=Example Corp/OU=interns/CN=carol" "email:carol@example.com" ca
leaf batch "/O=Example Corp/OU=ml-users/CN=batch-eval" \
  "URI:spiffe://example.internal/svc/batch-eval,IP:10.20.0.7" ca
leaf mallory "/O=Example Corp/OU=ml-users/CN=alice" "email:alice@example.com" other-ca
rm -f ./*.srl
echo "made: $(ls ./*.pem | tr '\n' ' ')"
