"""Requests the module cannot read, and bodies over the limit, through the real Caddy:
each is refused at once with a clear status, one decision log line naming the cause,
and a metric."""

import json
import subprocess
import socket
import time
import urllib.request

import pytest

from conftest import _stack_with
from stack import HOST

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def small(tmp_path_factory, caddy_bin):
    """The example stack with max_body 1KiB: far under the 256 KiB net/http reads
    before replying when a handler leaves a body unread."""
    s = _stack_with(tmp_path_factory, caddy_bin, "faults")
    s.policy.write_text(s.policy.read_text().replace('max_body = "256KiB"', 'max_body = "1KiB"'))
    s.reload()
    yield s
    s.stop()


def raw(stack, head: bytes, body: bytes = b"", cert="alice"):
    """Sends raw bytes on a TLS connection and returns the socket, still open."""
    ctx = stack.tls_context(cert)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", stack.ports["caddy"]), timeout=10),
                           server_hostname=HOST)
    sock.sendall(head + body)
    return sock


def read_response(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def log_lines(stack):
    time.sleep(0.3)  # Caddy's log writer flushes; this waits for a file, it times nothing
    return [json.loads(l) for l in (stack.work / "caddy-json.log").read_text().splitlines()]


def test_a_declared_oversize_body_gets_413_at_once_and_the_connection_closes(small):
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    sock = raw(small, head, b'{"model":')  # a few bytes of the 100 kB, then nothing
    try:
        start = time.monotonic()
        data = read_response(sock, timeout=5)
        waited = time.monotonic() - start
        assert data.startswith(b"HTTP/1.1 413"), data[:200]
        assert b"\r\nConnection: close\r\n" in data, data[:400]
        # The reply did not wait for the body (the timeout above is 5 s; a waiting server
        # would not answer at all while the client sends nothing).
        assert waited < 5
    finally:
        sock.close()


@pytest.mark.parametrize("what,head,body,cause", [
    ("truncated", f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n",
     b'{"model":"llama-3.1-8b-instruct"', "truncated"),
    ("bad chunk size", f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"zz\r\n{}\r\n0\r\n\r\n", "bad_chunking"),
    ("chunk without its CRLF", f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"2\r\n{}XX0\r\n\r\n", "bad_chunking"),
])
def test_a_body_that_cannot_be_read_is_refused_logged_and_counted(small, what, head, body, cause):
    marker = f"unreadable-{cause}-{len(body)}"
    head = head.replace("\r\n\r\n", f"\r\nX-Marker: {marker}\r\n\r\n")
    sock = raw(small, head.encode(), body)
    if cause == "truncated":
        sock.close()  # the client hangs up mid-body: there is no one to answer
    else:
        data = read_response(sock, timeout=10)
        sock.close()
        assert data.startswith(b"HTTP/1.1 400"), (what, data[:200])
        assert b"\r\nConnection: close\r\n" in data, data[:400]
    lines = [l for l in log_lines(small) if l.get("reason") == "unreadable_request" and l.get("cause") == cause]
    assert lines, f"no decision log line for {what}"
    l = lines[-1]
    assert l["status"] == 400 and l["method"] == "POST" and l["uri"] == CHAT and l["remote_ip"] == "127.0.0.1"
    assert not [q for q in small.upstream_requests() if marker in json.dumps(q["headers"])]
    with urllib.request.urlopen(f"http://127.0.0.1:{small.ports['admin']}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'caddy_zt_policy_unreadable_requests_total{{cause="{cause}"}}' in metrics


OK_BODY = {"model": "llama-3.1-8b-instruct", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def openai_error(r):
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["message"] and "param" in err, err
    return err["code"]


def test_a_slow_upstream_gets_an_openai_504_at_the_configured_timeout(small):
    small.response_header_timeout = "2s"
    small.reload()
    try:
        start = time.monotonic()
        r = small.request("POST", CHAT, "alice", body=OK_BODY, headers={"X-Test-Stall": "stall-1"})
        waited = time.monotonic() - start
        assert r.status == 504 and openai_error(r) == "upstream_timeout", (r.status, r.body)
        assert waited < 30, f"the reply took {waited:.1f}s with a 2s response_header_timeout"
    finally:
        small.release("stall-1")
        small.response_header_timeout = "300s"
        small.reload()


def test_upstream_down_and_sidecar_down_get_an_openai_502_without_hanging(small):
    upstream = small.procs["upstream"]
    upstream.terminate()
    upstream.wait(timeout=10)
    r = small.request("POST", CHAT, "alice", body=OK_BODY)
    assert r.status == 502 and openai_error(r) == "upstream_unavailable", (r.status, r.body)  # from nginx
    nginx = small.procs["nginx"]
    os_kill_group(nginx)
    r = small.request("POST", CHAT, "alice", body=OK_BODY)
    assert r.status == 502 and openai_error(r) == "upstream_unavailable", (r.status, r.body)  # from Caddy
    # Both come back; so does service.
    small.start_upstream()
    small.start_nginx()
    assert small.request("POST", CHAT, "alice", body=OK_BODY).status == 200


def test_a_broken_policy_on_reload_keeps_the_old_configuration_serving(small):
    good = small.policy.read_text()
    broken = good.replace('effect = "allow"', 'effect = "allow"\nwhen_typo = 1', 1)
    line = broken.splitlines().index("when_typo = 1") + 1
    small.policy.write_text(broken)
    try:
        with pytest.raises(subprocess.CalledProcessError) as e:
            small.reload(extra_site="respond /reload-marker 299")
        message = e.value.stderr.decode() + e.value.stdout.decode()
        assert f"policy.toml:{line}" in message and "when_typo" in message, message[-1500:]
        # The old configuration still serves, and still decides.
        assert small.request("GET", "/reload-marker", "alice").status != 299
        assert small.request("POST", CHAT, "alice", body=OK_BODY).status == 200
        assert small.request("POST", CHAT, "carol", body=OK_BODY).status == 403
    finally:
        small.policy.write_text(good)
        small.reload()


def os_kill_group(proc):
    import os
    import signal
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_an_http2_body_longer_than_its_content_length_is_refused_and_counted(small):
    """curl sends the content-length it is told over HTTP/2 and then the longer body:
    the stream's length disagrees with its header, and Go's HTTP/2 server says so."""
    marker = "h2-mismatch"
    body = json.dumps(dict(OK_BODY, marker=marker))
    r = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
         "--cacert", small.pki.path("ca.pem"), "--cert", small.pki.path("alice.pem"),
         "--key", small.pki.path("alice.key"), "--resolve", f"{HOST}:{small.ports['caddy']}:127.0.0.1",
         "-H", "Content-Type: application/json", "-H", "Content-Length: 20", "--data-binary", body,
         f"https://{HOST}:{small.ports['caddy']}{CHAT}"], capture_output=True, text=True, timeout=30)
    code = r.stdout.split()[0]
    # Go's HTTP/2 server resets the stream as the extra bytes arrive: curl gets the 400,
    # or a reset stream (000) when the reset overtakes it. Never a 200.
    assert code in ("400", "000"), (r.stdout, r.stderr)
    assert not [q for q in small.upstream_requests() if marker in q["body"]]
    lines = [l for l in log_lines(small) if l.get("reason") == "unreadable_request" and l.get("cause") == "length_mismatch"]
    assert lines, "no decision log line for the HTTP/2 length mismatch"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def eventually(check, seconds=15):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture(scope="module")
def idp_down_at_start(tmp_path_factory, caddy_bin):
    """The OIDC stack with the IdP's JWKS down when Caddy starts."""
    from stack import Stack
    s = Stack(tmp_path_factory.mktemp("idp-down"), caddy_bin, oidc=True)
    try:
        s.start_upstream()
        s.start_nginx()
        s.start_idp()
        s.idp_control("jwks", {"mode": "down"})
        s.start_caddy()
    except Exception:
        s.stop()
        raise
    yield s
    s.stop()


def test_idp_down_at_start_then_back(idp_down_at_start):
    s = idp_down_at_start
    token = s.service_token("batch-svc")
    r = s.request("POST", CHAT, "carol", body=OK_BODY, headers=bearer(token))
    assert r.status == 401, (r.status, r.body)  # no keys yet: no token passes
    s.idp_control("jwks", {"mode": ""})
    # The module retries every jwks_min_interval (1 s here) until a fetch succeeds.
    assert eventually(lambda: s.request("POST", CHAT, "carol", body=OK_BODY, headers=bearer(token)).status == 200)


@pytest.mark.parametrize("mode", ["down", "garbage", "huge"])
def test_idp_faults_mid_run_keep_the_last_good_keys(idp_down_at_start, mode):
    s = idp_down_at_start
    s.idp_control("jwks", {"mode": ""})
    token = s.service_token("batch-svc")
    assert eventually(lambda: s.request("POST", CHAT, "carol", body=OK_BODY, headers=bearer(token)).status == 200)
    s.idp_control("jwks", {"mode": mode})
    try:
        time.sleep(2.5)  # jwks_refresh is 1 s: at least two refreshes meet the fault
        r = s.request("POST", CHAT, "carol", body=OK_BODY, headers=bearer(token))
        assert r.status == 200, (mode, r.status, r.body)
        lines = [l for l in log_lines(s) if "JWKS refresh failed" in l.get("msg", "")]
        assert lines, f"{mode}: no log line for the failed refresh"
    finally:
        s.idp_control("jwks", {"mode": ""})
