"""End to end through the real parts: the Caddy that xcaddy/build.sh makes (client_auth
require_and_verify, zt_policy, reverse_proxy over mTLS), Debian's nginx as the sidecar,
and the OpenAI-compatible upstream, all on loopback with certificates made by the test."""

import json
import ssl
import subprocess
import threading
import time

import pytest

from stack import HOST, ROOT

CHAT = "/v1/chat/completions"
OK_BODY = {"model": "llama-3.1-8b-instruct", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def seen_by_upstream(stack, marker):
    return [r for r in stack.upstream_requests() if marker in r["body"] or marker in json.dumps(r["headers"])]


def test_no_client_certificate_is_refused_in_the_handshake(stack):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as e:
        stack.request("GET", "/v1/models", cert=None, headers={"X-Marker": "no-cert"})
    assert "certificate" in str(e.value).lower() or isinstance(e.value, (ConnectionResetError, BrokenPipeError))
    assert not seen_by_upstream(stack, "no-cert")


def test_certificate_from_another_ca_is_refused_in_the_handshake(stack):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        stack.request("GET", "/v1/models", cert="mallory", headers={"X-Marker": "other-ca"})
    assert not seen_by_upstream(stack, "other-ca")


def test_allowed_call_reaches_vllm_with_the_verified_identity(stack):
    r = stack.request("POST", CHAT, "alice", body=OK_BODY, headers={"X-Marker": "allowed-1"})
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"].startswith("Zero trust")
    # The limit with the smallest share left is reported (19 of 20 requests), then the token budget.
    assert r.header("ratelimit-policy") == '"requests-per-identity";q=20;w=10, "llm-tokens-per-identity";q=131072;w=944'
    assert r.header("ratelimit").startswith('"requests-per-identity";r=19;')
    (req,) = seen_by_upstream(stack, "allowed-1")
    headers = dict((k.lower(), v) for k, v in req["headers"])
    assert headers["x-zt-identity"] == "alice@example.com"
    assert headers["x-zt-rule"] == "ml-users-inference"
    # nginx verified Caddy's upstream certificate before proxying.
    assert headers["x-client-verify"] == "SUCCESS"
    assert "CN=caddy-upstream" in headers["x-client-subject"]


def test_body_reaches_vllm_byte_for_byte_also_chunked(stack):
    payload = json.dumps({"model": "qwen2.5-7b-instruct", "max_tokens": 4, "messages": [
        {"role": "user", "content": "chunked-body ✓ " + "x" * 20000}]}, ensure_ascii=False).encode()
    conn = stack.connection("alice")
    pieces = [payload[i:i + 4096] for i in range(0, len(payload), 4096)]
    conn.request("POST", CHAT, body=iter(pieces), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 200
    (req,) = seen_by_upstream(stack, "chunked-body")
    assert req["body"].encode() == payload


def test_streamed_response_arrives_intact_and_incrementally(stack):
    body = dict(OK_BODY, stream=True)
    conn = stack.connection("alice")
    conn.request("POST", CHAT, body=json.dumps(body),
                 headers={"Content-Type": "application/json", "X-Test-Hold": "stream-1"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("text/event-stream")
    # The upstream holds the rest of the stream until we release it: the first event
    # must get here before that, through Caddy and nginx.
    first = r.readline()
    assert first.startswith(b"data: "), first
    assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "Zero"
    stack.release("stream-1")
    rest = r.read().decode()
    conn.close()
    events = [json.loads(line[6:]) for line in ([first.decode()] + rest.splitlines())
              if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "Zero trust means every hop is verified."
    assert rest.rstrip().endswith("data: [DONE]")


def test_denied_call_gets_403_naming_the_rule_and_never_reaches_vllm(stack):
    r = stack.request("POST", CHAT, "alice", body={"model": "gpt-4o", "max_tokens": 8},
                      headers={"X-Marker": "denied-model"})
    assert r.status == 403
    err = r.json()["error"]
    assert err["type"] == "permission_error" and err["code"] == "denied_by_rule"
    assert err["rule"] == "model-allowed" and '"model-allowed"' in err["message"]
    assert not seen_by_upstream(stack, "denied-model")


def test_role_without_access_gets_403(stack):
    r = stack.request("POST", CHAT, "bob", body=OK_BODY)
    assert r.status == 403 and r.json()["error"]["code"] == "no_allow_rule"
    assert stack.request("GET", "/metrics", "bob").status == 200


def test_oversized_body_is_413_and_never_reaches_vllm(stack):
    big = json.dumps(dict(OK_BODY, padding="oversized-" + "x" * (300 << 10)))
    r = stack.request("POST", CHAT, "alice", body=big, headers={"Content-Type": "application/json"})
    assert r.status == 413
    assert r.json()["error"]["code"] == "body_too_large"
    conn = stack.connection("alice")
    chunks = (b"x" * 65536 for _ in range(8))
    conn.request("POST", CHAT, body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    r2 = conn.getresponse()
    r2.read()
    conn.close()
    assert r2.status == 413
    assert not seen_by_upstream(stack, "oversized-")


def test_burst_gets_429_with_retry_after_and_ratelimit_headers(stack):
    # The bucket holds 20 and refills 2 a second: a burst of 20 passes, and requests
    # sent back to back run into a 429 soon after (the bound leaves room for refills).
    statuses = [stack.request("POST", CHAT, "burst", body=dict(OK_BODY, max_tokens=1)).status for _ in range(20)]
    assert statuses == [200] * 20
    for _ in range(60):
        r = stack.request("POST", CHAT, "burst", body=dict(OK_BODY, max_tokens=1))
        if r.status != 200:
            break
    assert r.status == 429
    assert int(r.header("retry-after")) >= 1
    assert r.header("ratelimit").startswith('"requests-per-identity";r=0;t=')
    assert r.header("ratelimit-policy") == '"requests-per-identity";q=20;w=10'
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_spoofed_identity_headers_never_reach_vllm(stack):
    r = stack.request("POST", CHAT, "alice", body=OK_BODY, headers={
        "X-Zt-Identity": "admin@example.com", "X-Zt-Rule": "sre-metrics",
        "X-Auth-Request-User": "admin", "X-Marker": "spoof-1"})
    assert r.status == 200
    (req,) = seen_by_upstream(stack, "spoof-1")
    values = [v for k, v in req["headers"]]
    assert "admin@example.com" not in values and "admin" not in values and "sre-metrics" not in values
    ids = [v for k, v in req["headers"] if k.lower() == "x-zt-identity"]
    assert ids == ["alice@example.com"]


def test_nginx_refuses_callers_without_caddys_upstream_certificate(stack):
    port = stack.ports["nginx"]
    # No certificate, a device certificate (valid at the edge), one from another CA.
    for cert in (None, "alice", "mallory"):
        try:
            r = stack.request("GET", "/v1/models", cert=cert, port=port, server_name="vllm-mtls", ca="mesh-ca",
                              headers={"X-Marker": f"direct-{cert}"})
            # nginx answers a missing or untrusted client certificate with 400.
            assert r.status == 400, (cert, r.status)
        except (ssl.SSLError, ConnectionResetError):
            pass
        assert not seen_by_upstream(stack, f"direct-{cert}")
    # The same request with Caddy's certificate goes through: the refusals above are
    # about the certificate, not the request.
    r = stack.request("GET", "/v1/models", cert="caddy-upstream", port=port, server_name="vllm-mtls", ca="mesh-ca")
    assert r.status == 200


def test_every_decision_is_one_log_line_and_the_access_log_has_the_identity(stack):
    stack.request("POST", CHAT, "carol", body=OK_BODY, headers={"X-Marker": "log-1"})
    time.sleep(0.2)  # let Caddy's log writer flush; this waits for a file, it times nothing
    lines = [json.loads(l) for l in (stack.work / "caddy-json.log").read_text().splitlines()]
    decisions = [l for l in lines if l.get("logger") == "http.handlers.zt_policy" and l.get("identity") == "carol@example.com"]
    assert len(decisions) == 1
    d = decisions[0]
    assert d["msg"] == "denied" and d["status"] == 403 and d["reason"] == "no_allow_rule"
    stack.request("GET", "/v1/models", "alice")
    time.sleep(0.2)
    access = [json.loads(l) for l in (stack.work / "access.log").read_text().splitlines()]
    assert any(a.get("user_id") == "alice@example.com" and a.get("zt_policy_rule") == "list-models" for a in access)


def test_caddy_lists_the_module_and_adapts_the_example_caddyfile(caddy_bin):
    mods = subprocess.run([str(caddy_bin), "list-modules"], capture_output=True, text=True, check=True).stdout
    assert "http.handlers.zt_policy" in mods.split()
    out = subprocess.run([str(caddy_bin), "adapt", "--config", str(ROOT / "examples" / "Caddyfile")],
                         capture_output=True, text=True, check=True).stdout
    cfg = json.loads(out)

    def handlers(node):
        # Every handler name in the adapted config, in order, through subroutes.
        if isinstance(node, dict):
            if "handler" in node:
                yield node["handler"]
            for v in node.values():
                yield from handlers(v)
        elif isinstance(node, list):
            for v in node:
                yield from handlers(v)

    names = [h for h in handlers(cfg["apps"]["http"]) if h in ("forward_auth", "zt_policy", "reverse_proxy")]
    # forward_auth is a reverse_proxy underneath; in the API route the order is
    # forward_auth's proxy, zt_policy, then the proxy to the sidecar.
    zt = names.index("zt_policy")
    assert "reverse_proxy" in names[:zt], "forward_auth's check comes first"
    assert names[zt + 1:] == ["reverse_proxy"], "then the proxy to the sidecar, after zt_policy"


def test_caddy_validate_refuses_a_broken_policy_naming_the_rule(stack, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\nname = \"allow-models\"\neffect = \"allow\"\nwhen = 'request.path == \"/v1/models\"'\n"
                   "[[rule]]\nname = \"typo-rule\"\neffect = \"deny\"\nwhen = 'reqest.path == \"/x\"'\n")
    cf = tmp_path / "Caddyfile"
    cf.write_text(stack.caddyfile(policy=bad, log_to_file=False))
    r = subprocess.run([str(stack.caddy_bin), "validate", "--config", str(cf), "--adapter", "caddyfile"],
                       capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    errors = [json.loads(line)["msg"] for line in r.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "error"]
    assert len(errors) == 1, r.stderr
    assert 'bad.toml:8: rule "typo-rule" when' in errors[0] and "unknown variable 'reqest'" in errors[0]


def test_decisions_are_counted_in_caddys_metrics(stack):
    import urllib.request
    stack.request("POST", CHAT, "alice", body={"model": "gpt-4o", "max_tokens": 8})
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['admin']}/metrics", timeout=10) as r:
        text = r.read().decode()
    lines = [l for l in text.splitlines() if l.startswith("caddy_zt_policy_decisions_total{")]
    assert any('outcome="denied"' in l and 'reason="denied_by_rule"' in l and 'rule="model-allowed"' in l
               and float(l.rsplit(" ", 1)[1]) >= 1 for l in lines), lines
    assert any('outcome="allowed"' in l for l in lines), lines
    # Labels never carry identities.
    assert "alice" not in "\n".join(lines)
    # The time each decision held its request, as a histogram.
    count = [l for l in text.splitlines() if l.startswith("caddy_zt_policy_decision_duration_seconds_count")]
    assert count and float(count[0].rsplit(" ", 1)[1]) >= 1, count
    assert 'caddy_zt_policy_decision_duration_seconds_bucket{le="0.0001"}' in text
