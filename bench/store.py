"""What cluster-scoped limits cost (`make bench`, and `--store-only`): B (the example
policy, limits raised) with its request limit, token budget and in-flight cap kept in
this process, against the same policy with all three `scope = "cluster"` on a limits
store (Debian's redis-server on loopback, the store every replica would share). CPU per
request is Caddy's (and the store's, apart) over interleaved closed-loop rounds; latency
comes from open-loop runs at one fixed rate, where queueing does not hide it."""

import json
import sys

from harness import ROOT, closed_loop_rounds, cpu_seconds, cpu_us_per_request, merged_statuses

sys.path.insert(0, str(ROOT / "e2e"))
from stack import RedisServer  # noqa: E402

TARGET_P99_US = 500  # cluster-scoped limits may add this much to p99 on loopback
FIXED_RATE = 400  # requests/s of the open-loop runs
SCOPED = ('rate = "1000000/s"\n', 'rate = "1000000000/s"\n', "max = 1000000\n")


def cluster_policy(raised_policy, work):
    text = raised_policy.read_text()
    for line in SCOPED:
        assert text.count(line) == 1, f"the raised policy no longer has {line!r}"
        text = text.replace(line, line + 'scope = "cluster"\n')
    p = work / "policy-cluster.toml"
    p.write_text(text)
    return p


def phase(b, a, token, raised_policy, cpus, median):
    """{setup: result} for B-local and B-cluster."""
    store = RedisServer(b.work / "redis").start()
    extra = f"""
		limits_store {store.url()} {{
			timeout 50ms
			on_failure deny
		}}"""
    setups = {"B-local": b.start_caddy("B", policy=raised_policy, cpus=cpus, tag="B-local"),
              "B-cluster": b.start_caddy("B", policy=cluster_policy(raised_policy, b.work), cpus=cpus,
                                         tag="B-cluster", zt_extra=extra)}

    def fixed(port):
        return b.load(port, *token, "-rate", str(FIXED_RATE), seconds=2)

    try:
        rounds, fixeds = closed_loop_rounds(b, setups, token, a.rounds, "store", also=fixed)
        # The store's CPU per request, at full load (at a fixed low rate its idle work
        # would be most of it).
        c0 = cpu_seconds(store.proc.pid)
        full = b.load(setups["B-cluster"][1], *token)
        store_us = (cpu_seconds(store.proc.pid) - c0) * 1e6 / max(1, full["requests"])
        out = {}
        for name in setups:
            rs, fs = rounds[name], fixeds[name]
            out[name] = {
                "rps": median([r["rps"] for r in rs]),
                "cpu_us_per_req": cpu_us_per_request(rs),
                "store_cpu_us_per_req": store_us,
                "p50_us": median([f["p50_us"] for f in fs]),
                "p99_us": median([f["p99_us"] for f in fs]),
                "statuses": merged_statuses(rs + fs),
            }
        print("store", json.dumps(out), flush=True)
        return out
    finally:
        for p, _ in setups.values():
            b.stop(p)
        store.stop()


def section(result, a):
    L, C = result["B-local"], result["B-cluster"]
    p50, p99 = C["p50_us"] - L["p50_us"], C["p99_us"] - L["p99_us"]
    ok = all(set(x["statuses"]) == {"200"} for x in result.values())
    return [
        f"## Several replicas: cluster-scoped limits on a store ({a.rounds} rounds of {a.seconds:g} s per setup)",
        "",
        "What a request pays when its limits live in the store every replica shares: B-local is the",
        "example policy (limits raised) with its request limit, token budget and in-flight cap in",
        "the process; B-cluster is the same policy with all three `scope = \"cluster\"` on Debian's",
        "redis-server on loopback (one EVALSHA to admit, one to settle, per request). Latency from",
        f"open-loop runs at {FIXED_RATE} requests/s; Caddy's CPU over the closed-loop rounds, the",
        "store's over one more closed-loop run. Loopback only: a store across a network adds its",
        "round trip twice (admit before the request goes on; settle after the response). While a",
        "store call waits, its cgo call blocks an OS thread and Go hands that thread's P to another",
        "(sysmon, after 20 µs): with Caddy on one core that handoff is most of the CPU added;",
        "`BenchmarkStoreClient` (go-module; its rows are in the Go benchmarks table) compares a",
        "Go client that waits in the netpoller, then tells the engine the outcome in a second call.",
        "",
        "| | B-local | B-cluster | added | target |",
        "| --- | --- | --- | --- | --- |",
        f"| latency p50 (µs) | {L['p50_us']:.0f} | {C['p50_us']:.0f} | **{p50:+.0f}** | |",
        f"| latency p99 (µs) | {L['p99_us']:.0f} | {C['p99_us']:.0f} | **{p99:+.0f}** | ≤ {TARGET_P99_US} µs: "
        f"{'met' if p99 <= TARGET_P99_US else 'NOT met'} |",
        f"| Caddy CPU µs/request | {L['cpu_us_per_req']:.1f} | {C['cpu_us_per_req']:.1f} | "
        f"**{C['cpu_us_per_req'] - L['cpu_us_per_req']:+.1f}** | |",
        f"| store CPU µs/request | – | {C['store_cpu_us_per_req']:.1f} | | |",
        f"| closed-loop requests/s | {L['rps']:.0f} | {C['rps']:.0f} | | |",
        "" if ok else "(not every answer was 200: see the log)",
        "",
    ]


def summary(result):
    L, C = result["B-local"], result["B-cluster"]
    return (f"p50 {C['p50_us'] - L['p50_us']:+.0f} µs, p99 {C['p99_us'] - L['p99_us']:+.0f} µs, "
            f"Caddy CPU {C['cpu_us_per_req'] - L['cpu_us_per_req']:+.1f} µs/request (+ store {C['store_cpu_us_per_req']:.1f})")
