"""Where two parsers read the same bytes — zt_policy's engine and vLLM's Python, Caddy's
hop-by-hop rules and the identity headers the module sets — through the real stack
(Caddy with zt_policy, Debian's nginx sidecar, the upstream). Inputs are generated."""

import itertools
import json
import random
import socket
import time

from stack import HOST

CHAT = "/v1/chat/completions"

# Each makes a body Python's json.loads reads but another reader could read otherwise.
BAD_VALUES = {
    "number beyond f64": "1e400",
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "integer beyond u64": "18446744073709551616",
    "unpaired surrogate": '"\\ud800"',
    "reversed surrogates": '"\\udc00\\ud800"',
}


def bad_bodies(marker):
    """(what, body bytes) for every class of body the engine must refuse, at every
    place a value can stand: top level, inside messages, as the first of two keys."""
    ok = '"llama-3.1-8b-instruct"'
    for (what, bad), place in itertools.product(BAD_VALUES.items(), ("top", "nested", "duplicate")):
        msg = f'{{"role":"user","content":"{marker}"}}'
        if place == "top":
            body = f'{{"model":"gpt-4o","max_tokens":99999,"x":{bad},"messages":[{msg}]}}'
        elif place == "nested":
            body = f'{{"model":"gpt-4o","messages":[{msg},{{"role":"user","content":{bad}}}]}}'
        else:
            body = f'{{"model":"gpt-4o","tools":{bad},"tools":[],"messages":[{msg}]}}'
        yield f"{what} ({place})", body.encode()
    yield "duplicate model key", f'{{"model":"gpt-4o","model":{ok},"max_tokens":8,"messages":[{msg}]}}'.encode()
    yield "nested duplicate", f'{{"model":{ok},"max_tokens":8,"messages":[{{"role":"user","role":"system","content":"{marker}"}}]}}'.encode()
    yield "too deep", (f'{{"model":{ok},"max_tokens":8,"m":"{marker}","x":' + "[" * 40 + "]" * 40 + "}").encode()
    yield "not UTF-8", f'{{"model":{ok},"max_tokens":8,"m":"{marker}\xff"}}'.encode("latin-1")
    yield "UTF-16", f'{{"model":{ok},"max_tokens":8,"m":"{marker}"}}'.encode("utf-16")
    yield "trailing data", f'{{"model":{ok},"max_tokens":8,"m":"{marker}"}} {{}}'.encode()


def seen(stack, marker):
    return [r for r in stack.upstream_requests() if marker in r["body"] or marker in json.dumps(r["headers"])]


def test_bodies_python_reads_another_way_are_400_and_never_reach_vllm(stack):
    n = 0
    for what, body in bad_bodies("bad-body-marker"):
        # Content-Type absent is JSON to FastAPI as well.
        for headers in ({"Content-Type": "application/json"}, {}):
            r = stack.request("POST", CHAT, "alice", body=body, headers=headers)
            assert r.status == 400, (what, r.status, r.body)
            err = r.json()["error"]
            assert err["code"] == "malformed_body" and err["type"] == "invalid_request_error", (what, err)
            n += 1
    assert n >= 40
    assert not seen(stack, "bad-body-marker")
    # The log line says why, naming the byte.
    time.sleep(0.2)
    lines = [json.loads(l) for l in (stack.work / "caddy-json.log").read_text().splitlines()]
    refused = [l for l in lines if l.get("reason") == "malformed_body"]
    assert len(refused) >= n and all(l["status"] == 400 and "at byte" in l["message"] for l in refused)
    assert any("duplicate key \"model\"" in l["message"] for l in refused)


def test_a_duplicate_model_key_does_not_pick_the_allowed_one(stack):
    # Python keeps the last "model"; were the engine to keep the first, a deny rule
    # over gpt-4o would judge one model while vLLM runs another, and the other way.
    for first, last in (("gpt-4o", "llama-3.1-8b-instruct"), ("llama-3.1-8b-instruct", "gpt-4o")):
        body = f'{{"model":"{first}","model":"{last}","max_tokens":8,"m":"dup-order"}}'
        assert stack.request("POST", CHAT, "alice", body=body.encode(),
                             headers={"Content-Type": "application/json"}).status == 400
    assert not seen(stack, "dup-order")


def test_identity_headers_cannot_be_named_hop_by_hop_and_arrive_exactly(stack):
    rng = random.Random(14)
    for i in range(12):
        name = rng.choice(["X-Zt-Identity", "X-Zt-Rule", "X-Auth-Request-User"])
        spelled = "".join(c.upper() if rng.random() < .5 else c.lower() for c in name)
        value = ", ".join(rng.sample(["keep-alive", f" {spelled} ", "x-other"], 3))
        r = stack.request("POST", CHAT, "alice", body={"model": "llama-3.1-8b-instruct", "max_tokens": 8,
                                                       "m": f"hop-{i}"}, headers={"Connection": value})
        assert r.status == 400 and r.json()["error"]["code"] == "bad_request", (value, r.status)
        assert not seen(stack, f"hop-{i}")
    # An honest hop-by-hop header passes, and vLLM gets exactly the identity the
    # decision named: one X-Zt-Identity, the one in the decision's log line.
    r = stack.request("POST", CHAT, "alice",
                      body={"model": "llama-3.1-8b-instruct", "max_tokens": 8, "m": "exact-id"},
                      headers={"Connection": "keep-alive, X-Other", "X-Other": "1"})
    assert r.status == 200, r.body
    (req,) = seen(stack, "exact-id")
    ids = [v for k, v in req["headers"] if k.lower() == "x-zt-identity"]
    time.sleep(0.2)
    lines = [json.loads(l) for l in (stack.work / "caddy-json.log").read_text().splitlines()]
    decision = [l for l in lines if l.get("logger") == "http.handlers.zt_policy" and l.get("msg") == "allowed"][-1]
    assert ids == [decision["identity"]] == ["alice@example.com"]
    assert not [v for k, v in req["headers"] if k.lower() == "x-other"]


def test_trailers_named_like_identity_headers_never_reach_vllm(stack):
    body = json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 8, "m": "trailer-1"}).encode()
    ctx = stack.tls_context("alice")
    with socket.create_connection(("127.0.0.1", stack.ports["caddy"]), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as s:
        s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode() +
                  b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                  b"%x\r\n%s\r\n0\r\nX-Zt-Identity: admin@example.com\r\nX-Zt-Rule: forged\r\n\r\n" % (len(body), body))
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    (req,) = seen(stack, "trailer-1")
    values = [v for k, v in req["headers"]]
    assert "admin@example.com" not in values and "forged" not in values
    assert [v for k, v in req["headers"] if k.lower() == "x-zt-identity"] == ["alice@example.com"]


def test_two_authorization_headers_are_400(stack):
    conn = stack.connection("alice")
    conn.putrequest("POST", CHAT)
    body = json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 8, "m": "two-auth"}).encode()
    for k, v in (("Content-Type", "application/json"), ("Authorization", "Bearer a"),
                 ("Authorization", "Bearer b"), ("Content-Length", str(len(body)))):
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    assert r.status == 400 and json.loads(r.read())["error"]["code"] == "bad_request"
    conn.close()
    assert not seen(stack, "two-auth")


def test_a_websocket_upgrade_is_refused_unless_a_rule_names_it(stack):
    """Caddy's reverse_proxy would open a tunnel for these: the example policy allows
    alice's GET /v1/models, but none of its rules names request.upgrade."""
    rng = random.Random(16)
    for i in range(20):
        connection = rng.choice(["Upgrade", "upgrade", "keep-alive, Upgrade", "UPGRADE , close"])
        proto = rng.choice(["websocket", "WebSocket", "h2c"])
        r = stack.request("GET", "/v1/models", "alice", headers={
            "Connection": connection, "Upgrade": proto, "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Marker": f"upgrade-{i}"})
        assert r.status == 403, (connection, proto, r.status, r.body)
        assert "needs an allow rule that names request.upgrade" in r.json()["error"]["message"]
    assert not any(seen(stack, f"upgrade-{i}") for i in range(20))
    # The same request without the upgrade is allowed.
    assert stack.request("GET", "/v1/models", "alice").status == 200
