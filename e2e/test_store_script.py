"""store/limits.lua, the script behind cluster-scoped limits, on a real redis-server
(Debian's, started on loopback by the test) against a model of the engine's GCRA
(rust/core/src/limits.rs) on generated sequences of admissions, refunds, charges and
time; periods of any nanoseconds; and caps with limits in one call: all or nothing, a released
slot comes back, an expired lease frees its slot, every key has a TTL."""

import random

import pytest

from stack import ROOT, RedisServer

SCRIPT = (ROOT / "store" / "limits.lua").read_text()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    r = server.client()
    sha = r("SCRIPT", "LOAD", SCRIPT)
    yield lambda *a: r("EVALSHA", sha, *a), r
    server.stop()


class Model:
    """The engine's GCRA (limits.rs), in nanoseconds: a key's state is its TAT."""

    def __init__(self):
        self.tat = {}
        self.stored_at = {}  # the time each key was last written (its TTL's start)

    def _store(self, key, tat, now):
        self.tat[key] = tat
        if tat > now:
            self.stored_at[key] = now

    def _from(self, key, now):
        return max(self.tat.get(key, now), now)

    def admit(self, now, limits):
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

    def refund(self, now, key, period, cells):
        v = self.tat.get(key)
        back = 0
        if v is not None and v > now:
            back = min(v - now, cells * period)
            self._store(key, v - back, now)
        return back // period

    def charge(self, now, key, period, tau, cells):
        start = self._from(key, now)
        room = max(0, now + tau - start)
        taken = min(cells * period, room) // period
        if taken > 0:
            self._store(key, start + taken * period, now)
        return taken


def test_the_script_is_the_engines_gcra_on_generated_sequences(redis):
    call, r = redis
    rng = random.Random(18)
    for case in range(200):
        r("FLUSHALL")
        model = Model()
        now = 1_800_000_000_000_000_000 + rng.randrange(10**9) * 100_000_000 + rng.randrange(10**9)
        tag = f"ztp:{{id-{case}}}"
        # Two limits of one request: periods and bursts in 100 ms steps, so every TTL
        # is at least 100 ms of real time and nothing expires under the test's feet.
        limits = [(f"{tag}:l:{n}", rng.choice([1, 2, 5, 10]) * 100_000_000 + rng.randrange(1000), None) for n in ("a", "b")]
        limits = [(k, p, p * rng.randint(1, 40)) for k, p, _ in limits]
        keys = [k for k, _, _ in limits]
        for step in range(60):
            what = rng.random()
            if what >= 0.85:
                now += rng.randint(0, 30) * 100_000_000 + rng.randrange(10**6)
                continue
            if what < 0.5:
                # admit: a cost (0-12) per limit, all or nothing.
                costs = [rng.randint(0, 12) for _ in limits]
                args = [x for (_, p, tau), c in zip(limits, costs) for x in ("l", p, tau, c)]
                got = call(len(keys), *keys, now, "admit", "lease", *args)
                want = model.admit(now, [(k, p, tau, c) for (k, p, tau), c in zip(limits, costs)])
            else:
                # settle: per limit a refund ("r") or a charge ("g") of 0-30 cells.
                kinds = [rng.choice("rg") for _ in limits]
                cells = [rng.randint(0, 30) for _ in limits]
                args, want = [], []
                for (k, p, tau), kind, c in zip(limits, kinds, cells):
                    if kind == "r":
                        args += ["r", p, c, 0]
                        want.append(model.refund(now, k, p, c))
                    else:
                        args += ["g", p, tau, c]
                        want.append(model.charge(now, k, p, tau, c))
                got = call(len(keys), *keys, now, "settle", "lease", *args)
            assert got == want, (case, step, got, want)
            for k, _, _ in limits:
                stored = r("GET", k)
                tat = model.tat.get(k)
                if stored is not None:
                    sec, ns = stored.split(":")
                    assert int(sec) * 10**9 + int(ns) == tat, (case, step, k, stored)
                    ttl = r("PTTL", k)
                    assert 0 < ttl <= -(-(tat - model.stored_at[k]) // 10**6), (case, step, ttl)
                else:
                    assert tat is None or tat <= now, (case, step, k, tat, now)


def test_fractional_periods_give_the_whole_burst(redis):
    """Periods of any nanoseconds (3/s: 333,333,333 ns), and the whole burst, exactly."""
    call, r = redis
    r("FLUSHALL")
    rng = random.Random(3)
    for case in range(200):
        # Periods of at least 140 ms: the keys' TTLs run in real time while the test's
        # clock stands still, so a burst must be taken before its first key expires.
        count, burst = rng.randint(1, 7), rng.randint(1, 50)
        period = 10**9 * rng.randint(1, 60) // count
        key, now = f"ztp:{{f{case}}}:l:x", 1_800_000_000_000_000_000 + rng.randrange(10**12)
        got = [call(1, key, now, "admit", "lease", "l", period, period * burst, 1)[0]
               for _ in range(burst + 1)]
        assert got == [1] * burst + [0], (count, burst, got)


def test_one_call_admits_caps_and_limits_together(redis):
    call, r = redis
    r("FLUSHALL")
    cap, lim, now = "ztp:{alice}:c:streams", "ztp:{alice}:l:req", 1_800_000_000_000_000_000
    s = 10**9
    both = lambda lease, cost: call(2, cap, lim, now, "admit", lease, "c", 2, 60_000, 0,
                                    "l", s, 3 * s, cost)
    assert both("lease-1", 1) == [1, 1, 0, 2, s]
    assert both("lease-2", 1) == [1, 2, 0, 1, 2 * s]
    # The cap is full: refused as key 1, and the bucket is not charged.
    assert both("lease-3", 1) == [0, 1, 2]
    assert r("GET", lim) == "1800000002:000000000"
    # A release frees the slot; a bucket that cannot pay refuses, and the slot stays free.
    assert call(1, cap, now, "settle", "lease-1", "x", 0, 0, 0) == [1]
    assert call(1, cap, now, "settle", "lease-1", "x", 0, 0, 0) == [0], "a lease ends once"
    assert both("lease-3", 2) == [0, 2, s]
    assert r("ZCARD", cap) == 1
    assert both("lease-3", 1) == [1, 2, 0, 0, 3 * s]
    assert 0 < r("PTTL", cap) <= 60_000, "the set lives as long as its longest lease"
    # A replica that crashed never releases: its leases expire and the slots come back.
    later = now + 60 * s + 1_000_000
    assert call(1, cap, later, "admit", "lease-4", "c", 2, 60_000, 0) == [1, 1, 0]
    with pytest.raises(RuntimeError, match="unknown operation"):
        call(1, cap, now, "nope", "lease")
    with pytest.raises(RuntimeError, match="unknown kind"):
        call(1, cap, now, "admit", "lease", "q", 0, 0, 0)
