"""The side-by-side benchmark of the edge: one command (`make bench`), a few minutes,
writes bench/RESULTS.md. Every setup runs on loopback with the same certificates, the
same fast upstream (nginx answering a chat completion) and the same load generator
(bench/loadgen: keep-alive mTLS connections with a device certificate):

  A  Caddy reverse_proxy, no policy (the ceiling)
  B  A + zt_policy with the example policy, bearer tokens verified in-process
  C  what a user builds without us: Caddy's CEL `expression` matchers and
     `request_body max_size`, with forward_auth to oauth2-proxy for identity
  D  Caddy answering with `respond` (the machine's limit for Caddy with mTLS)

plus B0, zt_policy with a one-rule policy (what the module costs before any policy).
With two or more cores each Caddy runs on a core of its own (CPU affinity) and the
load generator, nginx, the IdP and oauth2-proxy on the others, as the edge runs in
production; before that the same throughput rounds run with everything sharing every
core, as earlier runs measured (`--no-pin` keeps to that alone).
Every setup gets the same requests (device certificate, bearer token, JSON body). All
setups run at once and are measured in interleaved rounds, so drift on the machine
falls on all of them alike; throughput is closed loop (the most a setup serves),
latency is also taken open loop at one fixed rate for all. What zt_policy itself adds
comes from its own histogram (caddy_zt_policy_decision_duration_seconds, read from
Caddy's admin /metrics before and after each phase). Then long prompts (sizes.py), the
cold path (a new token each request), scale (1, 1,000, 100,000 identities against the
real limits: latency and Caddy's resident memory), the criterion decision benchmark and
the Go benchmarks. With --deep (`make bench-deep`) also the lab notebook (deep.py): perf
profiles of A, B0 and B split by code, the call into the engine from a Go runtime
trace, cold caches, and what one decision touches. report.py writes RESULTS.md, which
leads with what it costs.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import settle  # the settle phase
import store  # the cluster-scoped limits phase
import sizes  # the long-prompt phase
from harness import ONE_RULE_POLICY, ROOT, Bench, bench_policy, median, rss_mib
from measure import http_phase, run_criterion, run_gobench
from report import write_report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3, help="per setup and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rate", type=float, default=2000, help="the fixed rate of the latency table")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-pin", action="store_true",
                    help="never give Caddy a core of its own (with 2+ cores it gets one, and a run with all sharing comes first)")
    ap.add_argument("--deep", action="store_true",
                    help="also the lab notebook: perf profiles, the engine call's trace, cold caches and the "
                         "footprint of one decision (`make bench-deep`)")
    ap.add_argument("--sizes-only", action="store_true",
                    help="only the long-prompt phase (1 KiB / 64 KiB / 1 MiB bodies), printed, no report written")
    ap.add_argument("--settle-only", action="store_true",
                    help="only the settle phase (B with and without a budget that settles), printed, no report written")
    ap.add_argument("--store-only", action="store_true",
                    help="only the store phase (B with limits in the process and on a store), printed, no report written")
    ap.add_argument("--before-caddy", type=Path,
                    help="a Caddy built from another commit: the long-prompt phase measures it too (B-before)")
    a = ap.parse_args()
    if a.sizes_only or a.settle_only or a.store_only:
        return one_phase(a)
    work = Path(tempfile.mkdtemp(prefix="ztp-bench-"))
    b = Bench(work, a.seconds, a.conns)
    cpus = sorted(os.sched_getaffinity(0))
    try:
        b.start_upstream()
        b.start_idp()
        b.start_oauth2_proxy()
        raised = bench_policy(work, raise_limits=True)
        (work / "policy-one-rule.toml").write_text(ONE_RULE_POLICY)
        # The same requests for every setup: A and D carry the token too.
        token = ["-token", b.token]
        pin = len(cpus) >= 2 and not a.no_pin
        shared = None
        if pin:
            # First as earlier runs measured: Caddy, the load generator and nginx share
            # every core.
            shared = http_phase(b, a, token, raised, cpus=None, fixed_rate=False)
            # Then Caddy on a core of its own, everything else on the others, as the
            # edge runs in production: what Caddy and the module cost, not how they
            # fight the load generator for cores.
            b.confine(set(cpus[:-1]))
        caddy_cpus = {cpus[-1]} if pin else None
        results, fixed, held_time = http_phase(b, a, token, raised, cpus=caddy_cpus, fixed_rate=True)
        # Long prompts: what the module adds per request as bodies grow.
        by_size = sizes.phase(b, a, token, raised, caddy_cpus, median, other_caddy=a.before_caddy)
        # Budgets that settle from usage: what the settlement adds, plain and streamed.
        settled = settle.phase(b, a, token, raised, caddy_cpus, median)
        # Several replicas: limits on a store every replica shares, against in the process.
        shared_store = store.phase(b, a, token, raised, caddy_cpus, median)

        # Cold path: every request a token never seen (signature verified), against
        # the same tokens seen before (cache hits). One connection, sequential.
        static = bench_policy(work, raise_limits=True, jwks=b.ec_jwks)
        p, port = b.start_caddy("B-static", policy=static, cpus=caddy_cpus)
        sign = ["-sign-key", str(b.ec_key), "-kid", "bench-1", "-iss", "https://bench.example", "-aud", "local-ai"]
        b.load(port, *sign, "-identities", "1", n=200, conns=1)
        cold = b.load(port, *sign, "-identities", "3000", n=3000, conns=1)
        warm = b.load(port, *sign, "-identities", "1", n=3000, conns=1)
        # The same for certificates: every request on a new connection (a full
        # handshake each time), with a certificate never seen against the same one.
        fresh = ["-fresh", *sign, "-identities", "1"]
        cold_cert = b.load(port, *fresh, "-mint-certs", "2000", "-ca-key", b.pki.path("ca.key"), n=2000, conns=1)
        warm_cert = b.load(port, *fresh, n=2000, conns=1)
        b.stop(p)

        # Scale: the real limits (20-request bursts per identity), 1 / 1,000 / 100,000 callers.
        real = bench_policy(work, raise_limits=False, jwks=b.ec_jwks)
        scale = {}
        for ids in (1, 1000, 100000):
            p, port = b.start_caddy(f"B-scale-{ids}", policy=real, cpus=caddy_cpus)
            rss0 = rss_mib(p.pid)
            # 10,000 requests for one caller and 40 each for 1,000: buckets run dry;
            # 100,000 callers make 2 each (the bucket table and the token cache churn).
            r = b.load(port, *sign, "-identities", str(ids), n=max(10000, 40 * min(ids, 1000), 2 * ids))
            r["rss_before_mib"], r["rss_after_mib"] = rss0, rss_mib(p.pid)
            scale[ids] = r
            print("scale", ids, json.dumps(r), flush=True)
            b.stop(p)
    except BaseException:
        print(f"bench: failed; the servers' logs are in {work}", file=sys.stderr)
        raise
    finally:
        b.stop_all()
        # The in-process benchmarks below run on every core again.
        os.sched_setaffinity(0, set(cpus))
    shutil.rmtree(work, ignore_errors=True)

    criterion = run_criterion()
    gobench = run_gobench(a.deep)
    touched = None
    if a.deep:
        sys.path.insert(0, str(ROOT / "bench" / "footprint"))
        import footprint  # noqa: E402

        touched = {setup: footprint.measure(setup=setup) for setup in ("B", "B0")}
    write_report(Path(a.out), (results, shared, caddy_cpus, cpus), fixed, held_time, (cold, warm, cold_cert, warm_cert),
                 scale, criterion, (gobench, touched), a, (by_size, settled, shared_store))
    print(f"wrote {a.out}")


def one_phase(a):
    """`--sizes-only` / `--settle-only` / `--store-only`: that phase alone, on the same pinning as a full run."""
    work = Path(tempfile.mkdtemp(prefix="ztp-bench-"))
    b = Bench(work, a.seconds, a.conns)
    cpus = sorted(os.sched_getaffinity(0))
    try:
        b.start_upstream()
        b.start_idp()
        raised = bench_policy(work, raise_limits=True)
        caddy_cpus = None
        if len(cpus) >= 2 and not a.no_pin:
            b.confine(set(cpus[:-1]))
            caddy_cpus = {cpus[-1]}
        phase_module = settle if a.settle_only else store if a.store_only else sizes
        if a.settle_only or a.store_only:
            result = phase_module.phase(b, a, ["-token", b.token], raised, caddy_cpus, median)
        else:
            result = sizes.phase(b, a, ["-token", b.token], raised, caddy_cpus, median, other_caddy=a.before_caddy)
    finally:
        b.stop_all()
        os.sched_setaffinity(0, set(cpus))
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(phase_module.section(result, a)))


if __name__ == "__main__":
    main()
