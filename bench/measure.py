"""What `make bench` measures: throughput and latency of every setup in interleaved
rounds, and the in-process benchmarks (criterion, Go). The profiling that explains
where the time goes is in deep.py (`make bench-deep`)."""

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from deep import cpu_profile, engine_call_times, merged_profile
from harness import ROOT, SETUPS, cpu_seconds, histogram_delta, interleaved, median, merged_statuses, sh

def http_phase(b, a, token, raised, cpus, fixed_rate):
    """Every setup's Caddy started (on `cpus` when given), then throughput in interleaved
    closed-loop rounds and, with `fixed_rate`, latency at one fixed rate for all; the
    module's own histogram read around each. The Caddys are stopped at the end."""
    caddies = {name: b.start_caddy(name, policy=raised, cpus=cpus) for name, _ in SETUPS}
    try:
        for name, (p, port) in caddies.items():
            b.load(port, *token, seconds=1)  # warm up: connections, caches
        held = {name: caddies[name][0] for name in ("B", "B0")}
        hist0 = {name: b.decision_histogram(p) for name, p in held.items()}
        rounds = {name: [] for name in caddies}
        names = list(caddies)
        tag = "pinned" if cpus else "shared"
        for i, name in interleaved(names, a.rounds):
            p, port = caddies[name]
            c0, t0 = cpu_seconds(p.pid), time.monotonic()
            r = b.load(port, *token)
            r["cpu_s"] = cpu_seconds(p.pid) - c0
            r["busy"] = r["cpu_s"] / (time.monotonic() - t0)
            rounds[name].append(r)
            print(tag, name, i, json.dumps({k: r[k] for k in ("rps", "p50_us", "p99_us", "cpu_s", "busy")}), flush=True)
        results = {}
        for name, rs in rounds.items():
            results[name] = {
                "rps": median([r["rps"] for r in rs]), "rps_all": [r["rps"] for r in rs],
                "p50_us": median([r["p50_us"] for r in rs]), "p99_us": median([r["p99_us"] for r in rs]),
                "cpu_us_per_req": sum(r["cpu_s"] for r in rs) * 1e6 / max(1, sum(r["requests"] for r in rs)),
                "busy": median([r["busy"] for r in rs]),
                "statuses": merged_statuses(rs), "errors": sum(r["errors"] for r in rs),
            }
        hist1 = {name: b.decision_histogram(p) for name, p in held.items()}
        held_time = {name: {"saturated": histogram_delta(hist0[name], hist1[name])} for name in held}
        if not fixed_rate:
            return results, held_time
        # Latency at one fixed rate for all: open loop, enough connections that the
        # load generator never waits for one; interleaved rounds again.
        fixed_rounds = {name: [] for name in caddies}
        for i, name in interleaved(names, a.rounds):
            r = b.load(caddies[name][1], *token, "-rate", f"{a.rate:g}", seconds=a.seconds, conns=16)
            fixed_rounds[name].append(r)
            print("fixed", name, i, json.dumps({k: r[k] for k in ("rps", "p50_us", "p99_us")}), flush=True)
        hist2 = {name: b.decision_histogram(p) for name, p in held.items()}
        fixed = {}
        for name, rs in fixed_rounds.items():
            fixed[name] = {k: median([r[k] for r in rs]) for k in ("p50_us", "p90_us", "p99_us", "max_us")}
            fixed[name]["p99_all"] = [r["p99_us"] for r in rs]
            fixed[name]["requests"] = sum(r["requests"] for r in rs)
            fixed[name]["statuses"] = merged_statuses(rs)
        for name in held:
            held_time[name]["fixed"] = histogram_delta(hist1[name], hist2[name])
        if not a.deep:
            return results, fixed, held_time
        for name in held:
            # Last, as tracing slows Caddy down: how much of the held time is the call
            # into the engine.
            held_time[name]["cgo_us"] = engine_call_times(b, caddies[name][0], caddies[name][1], token)
        # Also after the rounds, as sampling slows Caddy a little: where each setup's
        # CPU per request goes, from a perf profile of its Caddy under the same load.
        # Interleaved rounds, as above, so that drift falls on all three alike.
        profiles = {name: [] for name in ("A", "B0", "B")}
        for i, name in interleaved(list(profiles), a.rounds):
            profiles[name].append(cpu_profile(b, caddies[name][0], caddies[name][1], token))
        for name, ps in profiles.items():
            results[name]["profile"] = merged_profile(ps)
        return results, fixed, held_time
    finally:
        for p, _ in caddies.values():
            b.stop(p)


def run_criterion():
    subprocess.run(["cargo", "bench", "-q", "-p", "zt-policy-core", "--bench", "decision"], cwd=ROOT, check=True,
                   capture_output=True)
    out = {}
    for est in sorted((ROOT / "target" / "criterion" / "decide").glob("*/new/estimates.json")):
        e = json.loads(est.read_text())
        out[est.parent.parent.name] = e["mean"]["point_estimate"] / 1000
    return out


def run_gobench(deep):
    """The Go benchmarks: rows as go test prints them, and (deep) the evicted-cache
    decision times as {"hot/example": ns, …}."""
    env = dict(os.environ, CGO_ENABLED="1")
    rows = []
    # The evicted-cache runs write over up to twice the L3 cache before each decision,
    # so they get fewer iterations.
    # StoreClient: where the limits store's client lives (in the engine call, or Go).
    runs = [("DecideFlat$|CgoCrossing|ServeHTTP(Example|Trivial)", "200000x"), ("ServeHTTPBody", "3s"),
            ("StoreClient", "2s")]
    for pattern, times in runs + ([("DecideEvicted", "500x")] if deep else []):
        text = sh("go", "test", "-run", "XXX", "-bench", pattern, "-benchtime", times, "./...",
                  cwd=ROOT / "go-module", env=env)
        # Provisioning logs may interleave with the benchmark lines: pair each name with
        # the next "N ns/op" figures.
        name = None
        for line in text.splitlines():
            m = re.match(r"(Benchmark\S+)", line)
            if m:
                name = m.group(1)
            m = re.search(r"(\d+)\s+([\d.]+ ns/op.*)$", line)
            if name and m:
                rows.append(f"{name:<44} {m.group(1):>8} {m.group(2)}")
                name = None
    evicted = {}
    for row in rows:
        m = re.match(r"BenchmarkDecideEvicted/(\S+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op", row)
        if m:
            evicted[m.group(1)] = float(m.group(3))
    return rows, evicted


def machine():
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    mem = next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    return f"{os.cpu_count()} cores ({model}), {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}"
