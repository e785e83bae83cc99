"""Several replicas, one budget (issue 18): three Caddy replicas with zt_policy (the
binary the build makes) share one limits store — Debian's redis-server, started on
loopback — in front of the same nginx mTLS sidecar and the upstream. The example policy
with its limits and cap made `scope = "cluster"`, the request limit raised to 20/s
(burst 20) and the token budget's refill slowed to 100 a day, burst 10,000 (so no refill
blurs the arithmetic; a cluster-scoped bucket refills within 104 days). Over a run, accepted requests stay within 5% of rate × time + burst;
a token budget settles across replicas; the in-flight cap holds across replicas;
killing the store keeps requests flowing in `local` mode and fails them closed in `deny`
mode, the shared limit resumes once it is back, and a reload keeps the connections. The
store runs as the example compose file runs Valkey: TLS only (Caddy verifies a mesh-CA
certificate) and one ACL user with the compose file's rules."""

import http.client
import json
import re
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from stack import EXAMPLE_POLICY, RedisServer, Stack, free_port
from test_examples import valkey_acl

RATE, BURST = 20, 20
# Six clients as fast as they can make this 2-core machine's every process wait for a
# core: the default 50ms is too short for a TLS store call here (the replicas would fall
# back to local buckets now and then, which the accuracy test must not see).
STORE_TIMEOUT = "500ms"
MSG = [{"role": "user", "content": "how much does this cost?"}]
EST = -(-(4 + len(MSG[0]["content"])) // 4)
TOKENS = "llm-tokens-per-identity"


def policy_dir(tmp):
    d = tmp / "policy"
    shutil.copytree(EXAMPLE_POLICY, d, dirs_exist_ok=True)
    p = d / "policy.toml"
    text = p.read_text()
    for old, new in (
            ('rate = "120/m"', f'rate = "{RATE}/s"\nscope = "cluster"'),
            ('rate = "500000/h"\nburst = 131072', 'rate = "100/d"\nburst = 10000\nscope = "cluster"'),
            ("max = 4\n", 'max = 4\nscope = "cluster"\n')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    p.write_text(text)
    return d


class Replicas:
    """The stack's upstream and sidecar, and three Caddy replicas sharing a store."""

    def __init__(self, tmp, caddy_bin):
        self.stack = Stack(tmp / "stack", caddy_bin, policy_dir=policy_dir(tmp))
        # The store as the example compose file runs it: TLS with a mesh-CA certificate,
        # and only its ACL user, with only the rules the compose file gives it.
        pki = self.stack.pki
        pki._leaf("store", "/CN=valkey", "DNS:valkey,IP:127.0.0.1", "serverAuth", "mesh-ca")
        # Ports the stack has chosen are not bound yet: draw ours apart from them.
        taken = set(self.stack.ports.values())

        def port():
            while (p := free_port()) in taken:
                pass
            taken.add(p)
            return p
        self.store = RedisServer(tmp / "redis", port=port(),
                                 tls=(pki.path("store.pem"), pki.path("store.key"), pki.path("mesh-ca.pem")),
                                 user=("zt", "zt-test-password", valkey_acl())).start()
        for name in ("dana", "erin", "frank", "gwen", "hank", "ivan"):
            self.stack.pki.client(name, "ml-users", f"{name}@example.com")
        self.names = ["caddy", "caddy2", "caddy3"]
        self.ports = {"caddy": (self.stack.ports["caddy"], self.stack.ports["admin"])}
        for n in self.names[1:]:
            self.ports[n] = (port(), port())
        self.mode = "local"

    def replica(self, name):
        port, admin = self.ports[name]
        return (name, port, admin)

    def zt_extra(self):
        return f"""
			limits_store {self.store.url()} {{
				ca_file {self.stack.pki.path('mesh-ca.pem')}
				timeout {STORE_TIMEOUT}
				on_failure {self.mode}
			}}"""

    def start(self):
        self.stack.start_upstream()
        self.stack.start_nginx()
        for n in self.names:
            self.stack.start_caddy(replica=self.replica(n), zt_extra=self.zt_extra())
        return self

    def reload(self, mode):
        self.mode = mode
        for n in self.names:
            self.stack.reload(replica=self.replica(n), zt_extra=self.zt_extra())

    def request(self, name, method, path, cert, body=None, headers=None):
        return self.stack.request(method, path, cert=cert, body=body, headers=headers, port=self.ports[name][0])

    def connection(self, name, cert):
        return self.stack.connection(cert, port=self.ports[name][0])

    def log(self, name):
        return [json.loads(l) for l in (self.stack.work / f"{name}-json.log").read_text().splitlines()]

    def metrics(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name][1]}/metrics", timeout=10) as r:
            return r.read().decode()

    def flood(self, cert, per_replica):
        """Requests of one identity from three clients at once, one per replica, each
        on one connection: (how many were accepted, seconds it took)."""
        def client(name):
            conn, ok = self.connection(name, cert), 0
            for _ in range(per_replica):
                conn.request("GET", "/v1/models")
                r = conn.getresponse()
                r.read()
                ok += r.status == 200
            conn.close()
            return ok
        start = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            ok = sum(pool.map(client, self.names))
        return ok, time.monotonic() - start

    def burst(self, cert, n):
        """n requests of one identity spread over the three replicas: their statuses."""
        return [self.request(self.names[i % 3], "GET", "/v1/models", cert).status for i in range(n)]

    def stop(self):
        self.stack.stop()
        self.store.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, caddy_bin):
    r = Replicas(tmp_path_factory.mktemp("replicas"), caddy_bin)
    try:
        r.start()
    except Exception:
        r.stop()
        raise
    yield r
    r.stop()


def chat(max_tokens, **extra):
    return {"model": "llama-3.1-8b-instruct", "max_tokens": max_tokens, "messages": MSG, **extra}


def tokens_left(headers):
    m = re.search(rf'"{TOKENS}";r=(\d+)', headers.get("ratelimit", ""))
    assert m, headers.get("ratelimit")
    return int(m.group(1))


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_three_replicas_admit_one_budget_within_five_percent(replicas):
    """Six clients, two per replica, as fast as they can for 10 s: the accepted
    requests are the shared bucket's, not three buckets' (which would be 3×)."""
    duration, counts, lock = 10.0, {"ok": 0, "limited": 0, "other": []}, threading.Lock()
    start = time.monotonic()
    stop_at = start + duration

    def client(name):
        conn = replicas.connection(name, "alice")
        try:
            while time.monotonic() < stop_at:
                conn.request("GET", "/v1/models")
                r = conn.getresponse()
                body = r.read()
                with lock:
                    if r.status == 200:
                        counts["ok"] += 1
                    elif r.status == 429 and json.loads(body)["error"]["code"] == "rate_limited":
                        counts["limited"] += 1
                    else:
                        counts["other"].append((r.status, body[:200]))
        finally:
            conn.close()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(client, replicas.names * 2))
    elapsed = time.monotonic() - start
    expected = RATE * elapsed + BURST
    assert not counts["other"], counts["other"][:3]
    assert counts["ok"] + counts["limited"] > 3 * expected, f"the load did not exceed the rate: {counts}"
    print(f"three replicas: {counts['ok']} of {counts['ok'] + counts['limited']} accepted in {elapsed:.2f} s; "
          f"rate x time + burst = {expected:.1f} ({(counts['ok'] - expected) / expected:+.2%})")
    assert abs(counts["ok"] - expected) <= 0.05 * expected, (counts, elapsed, expected)
    # Every replica took part in the one budget, and the store judged every decision.
    for n in replicas.names:
        text = replicas.metrics(n)
        assert metric(text, 'caddy_zt_policy_limits_store_decisions_total{outcome="shared"}') > 0
        assert metric(text, 'caddy_zt_policy_limits_store_decisions_total{outcome="local"}') == 0, n


def test_a_token_budget_settles_across_replicas(replicas):
    """Reserved on one replica, settled to the upstream's usage there; the next request
    on another replica sees the bucket moved by exactly that usage."""
    first = replicas.request("caddy", "POST", "/v1/chat/completions", "dana", body=chat(64))
    assert first.status == 200, first.body
    left_after_reserving = tokens_left(first.headers)
    used = first.json()["usage"]["total_tokens"]
    second = replicas.request("caddy2", "POST", "/v1/chat/completions", "dana", body=chat(5, stream=True))
    assert second.status == 200, second.body
    reported = json.loads(second.headers["x-upstream-usage"])
    assert tokens_left(second.headers) == left_after_reserving + (64 + EST) - used - (5 + EST)
    third = replicas.request("caddy3", "POST", "/v1/chat/completions", "dana", body=chat(1))
    assert tokens_left(third.headers) == (left_after_reserving + (64 + EST) - used
                                          - reported["total_tokens"] - (1 + EST))
    settled = [l for l in replicas.log("caddy2") if l.get("msg") == "settled" and l.get("identity") == "dana@example.com"]
    assert settled and settled[0]["rule"] == "usage" and settled[0]["charged"] == reported["total_tokens"], settled


def test_the_concurrency_cap_holds_across_replicas(replicas):
    """Nine held streams of one identity, three per replica, against a cap of four."""
    barrier = threading.Barrier(9)

    def one(i):
        name = replicas.names[i % 3]
        conn = replicas.connection(name, "erin")
        barrier.wait()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat(4, stream=True)),
                     headers={"Content-Type": "application/json", "X-Test-Hold": f"rep-{i}"})
        r = conn.getresponse()
        if r.status != 200:
            body = json.loads(r.read())
            conn.close()
            return (r.status, body["error"]["code"], i, None)
        r.read(1)  # the stream has begun: the request holds its slot
        return (200, "", i, (conn, r))

    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(one, range(9)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(ok) == 4, results
    assert {(s, code) for s, code, _, _ in refused} == {(429, "concurrency_limit")}, refused
    # One ends on one replica: a request on another replica gets its slot.
    _, _, i, (conn, r) = ok[0]
    replicas.stack.release(f"rep-{i}")
    r.read()
    conn.close()
    other = replicas.names[(i + 1) % 3]

    def fifth():
        return replicas.request(other, "POST", "/v1/chat/completions", "erin", body=chat(2)).status == 200
    deadline = time.time() + 10
    while not fifth():
        assert time.time() < deadline, "the slot did not come back"
        time.sleep(0.05)
    for _, _, i, (conn, r) in ok[1:]:
        replicas.stack.release(f"rep-{i}")
        r.read()
        conn.close()


class Load:
    """One client per replica sending requests of one identity until stopped, each on
    one connection: the statuses, in order, per replica."""

    def __init__(self, replicas, cert, pause=0.01):
        self.stop_at, self.statuses = None, {n: [] for n in replicas.names}
        self.threads = [threading.Thread(target=self.run, args=(replicas, n, cert, pause)) for n in replicas.names]
        for t in self.threads:
            t.start()

    def run(self, replicas, name, cert, pause):
        conn = replicas.connection(name, cert)
        while self.stop_at is None:
            conn.request("GET", "/v1/models")
            r = conn.getresponse()
            r.read()
            self.statuses[name].append(r.status)
            time.sleep(pause)
        conn.close()

    def stop(self):
        self.stop_at = time.monotonic()
        for t in self.threads:
            t.join()
        return [s for n in self.statuses for s in self.statuses[n]]


def test_store_down_local_keeps_flowing_then_the_shared_limit_resumes(replicas):
    assert replicas.burst("frank", 3) == [200] * 3
    # The store dies mid-run, under load: no request fails; every replica falls back
    # to its own bucket (burst 20, 20/s each) — under its rate, everything passes.
    load = Load(replicas, "frank", pause=0.1)
    time.sleep(1)
    replicas.store.stop()
    time.sleep(2)
    statuses = load.stop()
    assert set(statuses) == {200} and len(statuses) >= 30, statuses
    for n in replicas.names:
        lines = [l for l in replicas.log(n) if l.get("msg", "").startswith("limits store unavailable")]
        assert len(lines) == 1, (n, lines)
        assert lines[0]["on_failure"] == "local" and "127.0.0.1" in lines[0]["error"], lines
        text = replicas.metrics(n)
        assert metric(text, 'caddy_zt_policy_limits_store_decisions_total{outcome="local"}') > 0
        assert metric(text, "caddy_zt_policy_limits_store_up") == 0
    decisions = [l for l in replicas.log("caddy") if l.get("identity") == "frank@example.com"]
    assert decisions[-1]["limits_store"] == "local", decisions[-1]
    # Back (empty, as a restarted store is): within the probe interval the shared
    # bucket judges again — one bucket of 20 across the replicas, not three.
    replicas.store.start()
    deadline = time.time() + 10
    while not all(metric(replicas.metrics(n), "caddy_zt_policy_limits_store_up") == 1 for n in replicas.names):
        assert time.time() < deadline, "the store did not come back"
        replicas.burst("gwen", 3)
        time.sleep(0.2)
    ok, elapsed = replicas.flood("hank", 2 * BURST)
    # Three local buckets would accept at least 3 × BURST.
    assert BURST <= ok <= BURST + RATE * elapsed + 1, (ok, elapsed)
    for n in replicas.names:
        assert any(l.get("msg", "").startswith("limits store available again") for l in replicas.log(n)), n


def test_store_down_deny_fails_closed_and_a_reload_keeps_the_connections(replicas):
    replicas.burst("dana", 6)  # every replica has a pooled connection
    before = replicas.store.client()("INFO", "stats")
    opened = int(re.search(r"total_connections_received:(\d+)", before).group(1))
    replicas.reload("deny")
    assert replicas.burst("dana", 6) == [200] * 6
    after = replicas.store.client()("INFO", "stats")
    # (+1: the second INFO's own connection.)
    assert int(re.search(r"total_connections_received:(\d+)", after).group(1)) == opened + 1, \
        "a reload with the same limits_store must keep the pool"
    # The store dies mid-run, under load: from then on every request is refused, 503.
    load = Load(replicas, "ivan", pause=0.25)  # 12 requests a second, under the rate
    time.sleep(1)
    replicas.store.stop()
    time.sleep(1.5)
    load.stop()
    for name, statuses in load.statuses.items():
        assert set(statuses) == {200, 503}, (name, statuses)
        first = statuses.index(503)
        assert set(statuses[first:]) == {503}, (name, statuses)
    for name in replicas.names:
        r = replicas.request(name, "GET", "/v1/models", "dana")
        assert r.status == 503 and r.json()["error"]["code"] == "store_unavailable", (name, r.status, r.body)
        assert r.header("retry-after") == "1"
    replicas.store.start()
    deadline = time.time() + 10
    while replicas.request("caddy", "GET", "/v1/models", "dana").status != 200:
        assert time.time() < deadline, "deny mode did not recover"
        time.sleep(0.2)
    replicas.reload("local")


def test_caddy_adapt_and_validate_read_limits_store(replicas, tmp_path):
    import subprocess
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    replicas.mode = "deny"
    cf = tmp_path / "Caddyfile"
    cf.write_text(replicas.stack.caddyfile(log_to_file=False, zt_extra=replicas.zt_extra()))
    r = subprocess.run([str(replicas.stack.caddy_bin), "adapt", "--config", str(cf), "--adapter", "caddyfile"],
                       capture_output=True, text=True, env=env, check=True)
    ca = replicas.stack.pki.path("mesh-ca.pem")
    assert (f'"limits_store":{{"ca_file":"{ca}","on_failure":"deny","timeout":500000000,'
            f'"url":"{replicas.store.url()}"}}') in r.stdout
    replicas.mode = "local"
    for extra, says in (
            ("limits_store http://u:hunter2@store:6379", 'the scheme \\"http\\"'),
            ("limits_store redis://u:hunter2@store:6379 {\n timeout 1m\n }", "between 1ms and 10s"),
            ("", 'scope = \\"cluster\\", but no limits_store is configured')):
        cf.write_text(replicas.stack.caddyfile(log_to_file=False, zt_extra="\n\t\t\t" + extra))
        r = subprocess.run([str(replicas.stack.caddy_bin), "validate", "--config", str(cf), "--adapter", "caddyfile"],
                           capture_output=True, text=True, env=env)
        assert r.returncode != 0 and says in r.stderr, (extra, r.stderr[-800:])
        assert "hunter2" not in r.stderr
