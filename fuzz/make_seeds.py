#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*): real
requests in the ABI's encoding, the example policy and variants, tokens signed by the
test key, the example certificates, and request bodies of every shape the tests use.
The seeds are committed; run this again when the formats change."""

import base64
import json
import struct
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"


def write(target, items):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for i, data in enumerate(items):
        (d / f"seed-{i:03}").write_bytes(data)


def der(name):
    pem = (ROOT / "examples/policy/certs" / f"{name}.pem").read_text()
    return base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<I", len(b)) + b


def encode_request(method, path, headers, body_size, host="ai.example.internal", query=""):
    out = bytes([1]) + struct.pack("<Q", body_size)
    for f in (method, "https", host, path, query, "192.0.2.1"):
        out += s(f)
    out += struct.pack("<I", len(headers))
    for k, v in headers:
        out += s(k) + s(v)
    return out


def request_seed(cert, body, method, path, headers):
    req = encode_request(method, path, headers, len(body))
    return struct.pack("<HH", len(cert), len(body)) + cert + body + req


def bodies():
    return [
        b'{"model":"llama-3.1-8b-instruct","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"llama-3.1-8b-instruct","max_completion_tokens":4096,"n":2,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"x"},{"role":"user","content":"\\u00e9\\ud83d\\ude00"}]}',
        b'{"model":"qwen2.5-7b-instruct","prompt":["a","b",[1,2,3]],"max_tokens":16,"best_of":3}',
        b'{"model":"m","model":"n"}',
        b'{"a":1e400,"b":NaN,"c":"\\ud800"}',
        b'\xef\xbb\xbf{"model":"m","max_tokens":"12","n":2.0}',
        b'{"messages":[[{"role":"user","content":"batch"}],[{"role":"user","content":"two"}]],"max_tokens":8}',
        b'[1,2,3]',
        b'{"deep":' + b'[' * 40 + b']' * 40 + b'}',
        b'',
    ]


def request_seeds():
    alice, batch = der("alice"), der("batch")
    token = make_token()
    chat = [("Content-Type", "application/json"), ("Accept", "*/*")]
    out = []
    for body in bodies()[:7]:
        out.append(request_seed(alice, body, "POST", "/v1/chat/completions", chat))
    out.append(request_seed(batch, bodies()[2], "POST", "/v1/completions", chat + [("Authorization", f"Bearer {token}")]))
    out.append(request_seed(b"", b"", "GET", "/v1/models", [("Authorization", f"Bearer {token}")]))
    out.append(request_seed(alice, b"", "GET", "/v1/models", [("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    out.append(request_seed(alice, b"", "GET", "/metrics", [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]))
    out.append(request_seed(alice, bodies()[0], "POST", "/v1/chat/completions", [("Content-Type", "text/plain")]))
    return out


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(claims=None, header=None):
    """An RS256 token signed with the test key (rust/core/tests/fixtures), via openssl."""
    claims = claims or {"iss": "https://idp.example.internal", "aud": "local-ai", "sub": "alice",
                        "groups": ["ml-users"], "exp": 1767229200, "iat": 1767225600}
    header = header or {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    key = ROOT / "rust/core/tests/fixtures/rsa.pem"
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                         capture_output=True, check=True).stdout
    return f"{signing_input}.{b64url(sig)}"


def token_seeds():
    jwks = (ROOT / "rust/core/tests/fixtures/jwks.json").read_bytes()
    good = make_token()
    out = [bytes([1]) + good.encode(), bytes([0]) + jwks]
    for claims in ({"sub": "a", "exp": 1, "cnf": {"x5t#S256": "abc"}},
                   {"sub": "a", "exp": 1767229200, "cnf": {"jkt": "x"}, "iat": "now"},
                   {"iss": "https://idp.example.internal", "aud": ["local-ai", "x"], "exp": 1767229200.5, "nbf": 1}):
        out.append(bytes([1]) + make_token(claims).encode())
    out.append(bytes([1]) + make_token(header={"alg": "none"}).encode())
    out.append(bytes([1]) + make_token(header={"alg": "HS256", "kid": "rsa-1", "crit": ["x"]}).encode())
    out.append(bytes([0]) + b'{"keys":[{"kty":"RSA","kid":"small","n":"gAE","e":"AQAB"},{"kty":"EC","crv":"P-521","x":"","y":""},{"kty":"oct","k":"c2VjcmV0"}]}')
    return out


def policy_seeds():
    example = (ROOT / "examples/policy/policy.toml").read_bytes()
    small = b'''[settings]
require_identity = false
max_body = "1KiB"
[[rule]]
name = "a"
effect = "allow"
when = 'request.path.matches("^/v1/[a-z]+$") && size(body) < 10'
[[limit]]
name = "l"
key = 'request.headers["x-user"]'
rate = "5/10s"
burst = 3
cost = 'has(llm.max_output_tokens) ? llm.max_output_tokens : 1'
'''
    # Cluster-scoped limits and caps (loaded as the Caddy module loads them; without a
    # store the engine judges them locally).
    cluster = small + b'''scope = "cluster"
settle = "usage"
[[concurrency]]
name = "c"
max = 2
scope = "cluster"
lease_ttl = "90s"
'''
    return [example, small, b"[settings]\nmode = \"audit\"\n" + small.split(b"\n", 1)[1],
            b'[[limit]]\nname="x"\nrate="1/365d"\nburst=1000000000\n', cluster,
            b'[[limit]]\nname="x"\nrate="1/d"\nburst=105\nscope="cluster"\n']


def certificate_seeds():
    return [der(n) for n in ("alice", "batch", "bob", "carol", "mallory", "ca", "other-ca")]


def body_seeds():
    return [bytes([pick]) + b for pick, b in zip(range(0, 256, 7), bodies() * 3)]


if __name__ == "__main__":
    write("request", request_seeds())
    write("token", token_seeds())
    write("policy", policy_seeds())
    write("certificate", certificate_seeds())
    write("body", body_seeds())
    print("wrote", OUT)
