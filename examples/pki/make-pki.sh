#!/usr/bin/env bash
# The certificates of examples/docker-compose.yml, into examples/pki/out:
#   root_ca      signs device certificates (what Caddy's client_auth trusts)
#   mesh_ca      signs only the hop Caddy -> sidecar (what nginx trusts), so a device
#                certificate can never open the sidecar directly
#   caddy        Caddy's edge server certificate (ai.example.internal)
#   vllm_server  the sidecar's server certificate (vllm-mtls)
#   valkey_server  the limits store's server certificate (valkey), from the mesh CA
#   caddy_upstream_client  Caddy's client certificate for the sidecar
#   client-devops          a device certificate for an operator
# Keep the CA keys offline. With the step CLI the same is, for example:
#   step certificate create "Local AI Root CA" root_ca.crt root_ca.key --profile root-ca --no-password --insecure
#   step certificate create "Local AI Mesh CA" mesh_ca.crt mesh_ca.key --profile root-ca --no-password --insecure
#   step certificate create ai.example.internal caddy.crt caddy.key --profile leaf \
#     --ca root_ca.crt --ca-key root_ca.key --san ai.example.internal --no-password --insecure
#   step certificate create vllm-mtls vllm_server.crt vllm_server.key --profile leaf \
#     --ca mesh_ca.crt --ca-key mesh_ca.key --san vllm-mtls --no-password --insecure
#   step certificate create caddy-upstream caddy_upstream_client.crt caddy_upstream_client.key \
#     --profile leaf --ca mesh_ca.crt --ca-key mesh_ca.key --no-password --insecure
#   step certificate create "DevOps Laptop" client-devops.crt client-devops.key --profile leaf \
#     --ca root_ca.crt --ca-key root_ca.key --set "subjectAltName=email:devops@example.com" \
#     --no-password --insecure
set -euo pipefail
out="$(dirname "$0")/out"
mkdir -p "$out"
cd "$out"
DAYS=${DAYS:-30}

ca() { # file subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "$2" \
    -keyout "$1.key" -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # file subject san eku ca
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$4" "$3" >"$1.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$5.crt" -CAkey "$5.key" -CAcreateserial -days "$DAYS" -extfile "$1.ext" \
    -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca root_ca "/O=Example Corp/CN=zt-policy Example Device CA"
ca mesh_ca "/O=Example Corp/CN=Example Internal Mesh CA"
leaf caddy "/CN=ai.example.internal" "DNS:ai.example.internal" serverAuth root_ca
leaf vllm_server "/CN=vllm-mtls" "DNS:vllm-mtls" serverAuth mesh_ca
leaf valkey_server "/CN=valkey" "DNS:valkey" serverAuth mesh_ca
leaf caddy_upstream_client "/O=Example Corp/CN=caddy-upstream" "DNS:caddy-upstream" clientAuth mesh_ca
leaf client-devops "/O=Example Corp/OU=sre/CN=DevOps Laptop" "email:devops@example.com" clientAuth root_ca
rm -f ./*.srl
chmod 600 ./*.key
echo "wrote $(ls ./*.crt | tr '\n' ' ')into $out"
