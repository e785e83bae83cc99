"""Issue 18 groundwork: store/limits.lua on a real redis-server (Debian's, started on
loopback by the test) against a model of the engine's GCRA (rust/core/src/limits.rs) on
generated sequences of takes, refunds, charges and time; and the in-flight leases:
a cap holds, a released slot comes back, an expired lease frees its slot, every key
has a TTL. Not yet called by the module."""

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from stack import ROOT, die_with_parent, free_port

SCRIPT = (ROOT / "store" / "limits.lua").read_text()


class Resp:
    """The least of a Redis client: RESP2 commands over one socket."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = self.sock.makefile("rb")

    def __call__(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self.buf.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = shutil.which("redis-server") or shutil.which("valkey-server")
    if not server:
        pytest.fail("redis-server is missing: scripts/install-deps.sh installs it")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    p = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(d)], stdout=open(d / "redis.log", "wb"), stderr=subprocess.STDOUT,
                         preexec_fn=die_with_parent)
    deadline = time.time() + 10
    while True:
        try:
            r = Resp(port)
            r("PING")
            break
        except OSError:
            if time.time() > deadline or p.poll() is not None:
                raise
            time.sleep(0.05)
    sha = r("SCRIPT", "LOAD", SCRIPT)
    yield lambda *a: r("EVALSHA", sha, *a), r
    p.terminate()
    p.wait(timeout=10)


class Model:
    """The engine's GCRA (limits.rs), in microseconds: a key's state is its TAT."""

    def __init__(self):
        self.tat = {}
        self.stored_at = {}  # the time each key was last written (its TTL's start)

    def _store(self, key, tat, now):
        self.tat[key] = tat
        if tat > now:
            self.stored_at[key] = now

    def _from(self, key, now):
        return max(self.tat.get(key, now), now)

    def take(self, now, limits):
        news, out = [], [1]
        for i, (key, period, tau, cost) in enumerate(limits, 1):
            new = self._from(key, now) + cost * period
            if new - now > tau:
                return [0, i, new - now - tau]
            news.append(new)
            out += [(tau - (new - now)) // period, new - now]
        for (key, _, _, cost), new in zip(limits, news):
            if cost > 0:
                self._store(key, new, now)
        return out

    def refund(self, now, limits):
        out = []
        for key, period, cells in limits:
            v = self.tat.get(key)
            back = 0
            if v is not None and v > now:
                back = min(v - now, cells * period)
                self._store(key, v - back, now)
            out.append(back // period)
        return out

    def charge(self, now, limits):
        out = []
        for key, period, tau, cells in limits:
            start = self._from(key, now)
            room = max(0, now + tau - start)
            taken = min(cells * period, room) // period
            if taken > 0:
                self._store(key, start + taken * period, now)
            out.append(taken)
        return out


def test_the_script_is_the_engines_gcra_on_generated_sequences(redis):
    call, r = redis
    rng = random.Random(18)
    for case in range(200):
        r("FLUSHALL")
        model = Model()
        now = 1_800_000_000_000_000 + rng.randrange(10**9) * 100_000
        tag = f"ztp:{{id-{case}}}"
        # Two limits of one request: periods and bursts in 100 ms steps, so every TTL
        # is at least 100 ms of real time and nothing expires under the test's feet.
        limits = [(f"{tag}:lim:{n}", rng.choice([1, 2, 5, 10]) * 100_000, None) for n in ("a", "b")]
        limits = [(k, p, p * rng.randint(1, 40)) for k, p, _ in limits]
        keys = [k for k, _, _ in limits]
        for step in range(60):
            what = rng.random()
            if what >= 0.85:
                now += rng.randint(0, 30) * 100_000
                continue
            # take (cost, 0-12), refund or charge (cells, 0-30): the script's arguments per
            # limit are period and cells (refund) or period, tau and cells.
            op = "take" if what < 0.5 else "refund" if what < 0.7 else "charge"
            n = [rng.randint(0, 12 if op == "take" else 30) for _ in limits]
            per = [(p, c) if op == "refund" else (p, tau, c) for (_, p, tau), c in zip(limits, n)]
            got = call(len(keys), *keys, now, op, *[x for args in per for x in args])
            want = getattr(model, op)(now, [(k, *args) for k, args in zip(keys, per)])
            assert got == want, (case, step, got, want)
            for k, _, _ in limits:
                stored = r("GET", k)
                tat = model.tat.get(k)
                if stored is not None:
                    assert int(stored) == tat, (case, step, k)
                    ttl = r("PTTL", k)
                    assert 0 < ttl <= -(-(tat - model.stored_at[k]) // 1000), (case, step, ttl)
                else:
                    assert tat is None or tat <= now, (case, step, k, tat, now)


def test_leases_cap_release_and_expire(redis):
    call, r = redis
    r("FLUSHALL")
    key, now = "ztp:{alice}:cap:streams", 1_800_000_000_000_000
    assert call(1, key, now, "acquire", 2, "lease-1", 60_000_000) == [1, 1]
    assert call(1, key, now, "acquire", 2, "lease-2", 60_000_000) == [1, 2]
    assert call(1, key, now, "acquire", 2, "lease-3", 60_000_000) == [0, 2]
    assert call(1, key, now, "release", "lease-1") == 1
    assert call(1, key, now, "release", "lease-1") == 0, "a lease ends once"
    assert call(1, key, now, "acquire", 2, "lease-3", 60_000_000) == [1, 2]
    assert 0 < r("PTTL", key) <= 60_000, "the set lives as long as its longest lease"
    # A replica that crashed never releases: its leases expire and the slots come back.
    later = now + 60_000_001
    assert call(1, key, later, "acquire", 2, "lease-4", 60_000_000) == [1, 1]
    with pytest.raises(RuntimeError, match="unknown operation"):
        call(1, key, now, "nope")
