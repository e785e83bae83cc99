"""Budgets that settle from usage and in-flight caps, end to end: the official `openai`
SDK through Caddy with zt_policy, Debian's nginx sidecar (mTLS) and the upstream that
reports usage as vLLM does. The example policy, with the token budget's refill slowed to
100 a day so no refill blurs the arithmetic (the bucket must move by exactly the
reported usage) and the request limit raised out of the way."""

import json
import re
import shutil
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from stack import EXAMPLE_POLICY
from test_openai_sdk import client

import openai

TOKENS = "llm-tokens-per-identity"
MSG = [{"role": "user", "content": "how much does this cost?"}]
# The engine's prompt estimate: the bytes of "user" and the content, four to a token.
EST = -(-(4 + len(MSG[0]["content"])) // 4)


@pytest.fixture(scope="module")
def bstack(tmp_path_factory, caddy_bin):
    from conftest import _stack_with
    policy_dir = tmp_path_factory.mktemp("budget-policy")
    shutil.copytree(EXAMPLE_POLICY, policy_dir, dirs_exist_ok=True)
    p = policy_dir / "policy.toml"
    text = p.read_text()
    for old, new in (('rate = "500000/h"', 'rate = "100/d"'), ('rate = "120/m"', 'rate = "1000000/s"'),
                     ("burst = 20\n", "burst = 1000000\n")):
        assert old in text, old
        text = text.replace(old, new)
    p.write_text(text)
    s = _stack_with(tmp_path_factory, caddy_bin, "budgets", oidc=True, policy_dir=policy_dir)
    yield s
    s.stop()


def tokens_left(headers):
    """The token budget's remaining cells, from the RateLimit field (a list)."""
    m = re.search(rf'"{TOKENS}";r=(\d+)', headers.get("ratelimit", ""))
    assert m, headers.get("ratelimit")
    return int(m.group(1))


def settle_lines(stack, identity):
    lines = []
    for line in (stack.work / "caddy-json.log").read_text().splitlines():
        if '"settled"' in line and identity in line:
            entry = json.loads(line)
            if entry.get("msg") == "settled" and entry.get("identity") == identity:
                lines.append(entry)
    return lines


def wait_for(what, check, timeout=10):
    deadline = time.time() + timeout
    while True:
        got = check()
        if got or time.time() > deadline:
            assert got, what
            return got
        time.sleep(0.05)


def metrics(stack):
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['admin']}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_plain_and_streamed_completions_settle_to_the_reported_usage(bstack):
    c = client(bstack, "carol", bstack.service_token("batch-svc"))
    # Plain: reserve max_tokens + the prompt's estimate, settle to the usage in the body.
    first = c.chat.completions.with_raw_response.create(model="llama-3.1-8b-instruct", max_tokens=64, messages=MSG)
    usage = first.parse().usage
    left_after_reserving = tokens_left(first.headers)
    (s1,) = wait_for("a settle line", lambda: settle_lines(bstack, "batch-svc"))
    t = s1
    assert t["limit"] == TOKENS and t["cause"] == "usage", t
    assert (t["rule"], t["used"], t["charged"]) == ("usage", usage.total_tokens, usage.total_tokens), s1
    assert t["reserved"] == 64 + EST
    assert t["settled"] == usage.total_tokens - t["reserved"]
    # Streamed, without include_usage: the module adds it, settles to the usage chunk,
    # and the client sees no usage chunk it did not ask for.
    second = c.chat.completions.with_raw_response.create(model="qwen2.5-7b-instruct", max_tokens=5, stream=True,
                                                         messages=MSG)
    reserved2 = 5 + EST
    # The budget moved by exactly the first request's usage (no refill at 100 a day).
    assert tokens_left(second.headers) == left_after_reserving + t["reserved"] - usage.total_tokens - reserved2
    chunks = list(second.parse())
    assert chunks and all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks), chunks[-1]
    reported = json.loads(second.headers["x-upstream-usage"])
    s1, s2 = wait_for("two settle lines", lambda: len(settle_lines(bstack, "batch-svc")) == 2
                      and settle_lines(bstack, "batch-svc"))
    assert (s2["limit"], s2["used"], s2["charged"]) == (TOKENS, reported["total_tokens"], reported["total_tokens"]), s2
    assert s2.get("usage_chunks_removed") == 1
    (req,) = [r for r in bstack.upstream_requests() if '"max_tokens": 5' in r["body"] or '"max_tokens":5' in r["body"]]
    assert json.loads(req["body"])["stream_options"] == {"include_usage": True}
    # The third request sees both settlements, to the token.
    third = c.chat.completions.with_raw_response.create(model="llama-3.1-8b-instruct", max_tokens=1, messages=MSG)
    assert tokens_left(third.headers) == (left_after_reserving + t["reserved"] - usage.total_tokens
                                          - reported["total_tokens"] - (1 + EST))
    # A client that asked for usage gets its usage chunk.
    stream = c.chat.completions.create(model="qwen2.5-7b-instruct", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True}, messages=MSG)
    last = list(stream)[-1]
    assert last.choices == [] and last.usage.completion_tokens == 3
    text = metrics(bstack)
    assert metric(text, f'caddy_zt_policy_tokens_reserved_total{{limit="{TOKENS}"}}') >= t["reserved"] + reserved2
    assert metric(text, f'caddy_zt_policy_tokens_settled_total{{limit="{TOKENS}",rule="usage"}}') >= \
        usage.total_tokens + reported["total_tokens"]


def test_eight_parallel_streams_against_a_cap_of_four_and_a_dropped_stream_frees_its_slot(bstack):
    c = client(bstack, "alice", bstack.service_token("batch-svc", cert="alice"))
    barrier = threading.Barrier(8)

    def one(i):
        barrier.wait()
        try:
            s = c.chat.completions.create(model="llama-3.1-8b-instruct", max_tokens=8, stream=True, messages=MSG,
                                          extra_headers={"X-Test-Hold": f"cap-{i}"})
            return ("ok", i, s)
        except openai.RateLimitError as e:
            return ("429", e.response.headers.get("ratelimit"), e.body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    ok = [r for r in results if r[0] == "ok"]
    limited = [r for r in results if r[0] == "429"]
    assert len(ok) == 4 and len(limited) == 4, results
    for _, ratelimit, body in limited:
        assert body["code"] == "concurrency_limit" and ratelimit == '"generations-per-identity";r=0;t=1', body
    # Drop one stream (the client goes away mid-stream): its slot comes back.
    _, dropped, stream = ok[0]
    next(iter(stream))
    stream.close()

    def fifth():
        try:
            return c.chat.completions.create(model="llama-3.1-8b-instruct", max_tokens=2, messages=MSG)
        except openai.RateLimitError:
            return None

    assert wait_for("a slot freed by the dropped stream", fifth).choices
    for _, i, s in ok[1:]:
        bstack.release(f"cap-{i}")
        assert len([ch for ch in s if ch.choices]) == 8
    bstack.release(f"cap-{dropped}")


def test_a_thousand_streams_with_disconnects_and_upstream_errors_leave_nothing_in_flight(bstack):
    """1,000 streamed requests: a third disconnect mid-stream, a sixth hit upstream
    errors (before generating or mid-stream); afterwards nothing is in flight and the
    cap still holds at exactly four."""
    body = json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 8, "stream": True, "messages": MSG})
    outcomes = {"done": 0, "dropped": 0, "failed": 0, "retried_429": 0}
    lock = threading.Lock()

    def one(i):
        cert = ("alice", "burst")[i % 2]
        kind = "drop" if i % 3 == 0 else ("fail-before" if i % 12 == 1 else "fail-midstream") if i % 6 == 1 else "ok"
        headers = {"Content-Type": "application/json", "X-Test-Delay": "10"}
        if kind.startswith("fail"):
            headers["X-Test-Fail"] = kind[5:]
        while True:
            conn = bstack.connection(cert)
            try:
                conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
                r = conn.getresponse()
                if r.status == 429:
                    r.read()
                    with lock:
                        outcomes["retried_429"] += 1
                    time.sleep(0.02)
                    continue
                if kind == "drop":
                    assert r.status == 200
                    r.read(20)  # part of the first event, then the client is gone
                    conn.sock.shutdown(socket.SHUT_RDWR)
                    key = "dropped"
                else:
                    try:
                        r.read()
                    except Exception:
                        pass  # the upstream dropped mid-stream
                    key = "failed" if kind.startswith("fail") else "done"
                with lock:
                    outcomes[key] += 1
                return
            finally:
                conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(1000)))
    assert outcomes["done"] + outcomes["dropped"] + outcomes["failed"] == 1000, outcomes
    assert outcomes["dropped"] == 334 and outcomes["failed"] == 167, outcomes
    # Nothing in flight once the server has seen every end.
    wait_for("no request in flight",
             lambda: metric(metrics(bstack), "caddy_zt_policy_requests_in_flight") == 0, timeout=20)
    # And every slot came back: four held streams of one identity pass, a fifth is 429.
    conns = []
    try:
        for i in range(4):
            conn = bstack.connection("alice")
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Content-Type": "application/json", "X-Test-Hold": f"k-{i}"})
            r = conn.getresponse()
            assert r.status == 200, (i, r.status, r.read())
            conns.append((conn, r))
        r = bstack.request("POST", "/v1/chat/completions", "alice", body=json.loads(body))
        assert r.status == 429 and r.json()["error"]["code"] == "concurrency_limit", r.body
    finally:
        for i, (conn, r) in enumerate(conns):
            bstack.release(f"k-{i}")
            r.read()
            conn.close()


def test_open_slots_survive_a_reload(bstack):
    """Two streams held open across `caddy reload` keep their slots: after the reload
    only two more of the same identity fit under the cap of four."""
    body = {"model": "llama-3.1-8b-instruct", "max_tokens": 8, "stream": True, "messages": MSG}

    def hold(key):
        conn = bstack.connection("burst")
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Test-Hold": key})
        r = conn.getresponse()
        assert r.status == 200, (key, r.status, r.read())
        return conn, r

    held = {}
    try:
        for key in ("before-1", "before-2"):
            held[key] = hold(key)
        bstack.reload(extra_site="respond /reload-marker 205")
        assert wait_for("the new configuration", lambda: bstack.request("GET", "/reload-marker", "burst").status == 205)
        for key in ("after-1", "after-2"):
            held[key] = hold(key)
        r = bstack.request("POST", "/v1/chat/completions", "burst", body=body)
        assert r.status == 429 and r.json()["error"]["code"] == "concurrency_limit", r.body
    finally:
        for key, (conn, r) in held.items():
            bstack.release(key)
            r.read()
            conn.close()
    # Every slot came back, those taken before the reload too.
    for key in ("again-1", "again-2", "again-3", "again-4"):
        held[key] = hold(key)
    for key in ("again-1", "again-2", "again-3", "again-4"):
        conn, r = held[key]
        bstack.release(key)
        r.read()
        conn.close()
