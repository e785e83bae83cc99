"""The lab notebook's measurements, run by `make bench-deep` (bench/run.py --deep):
the call into the engine from a Go runtime trace, perf profiles of Caddy split by code
(engine, cgo, module, kernel, the rest), the bound the module's own code puts on B/A,
and what one decision touches (bench/footprint). Their sections of the report are here
too."""

import re
import shutil
import subprocess
import threading
import time
import urllib.request

from harness import cpu_seconds, quantile_us

def engine_call_times(b, p, port, token, seconds=1):
    """The wall time of each call into the engine (µs, sorted) under closed-loop load,
    from a Go runtime trace of Caddy (admin /debug/pprof/trace, read with
    `go tool trace -d=parsed`): from the cgo call's start to the goroutine running Go
    again. None when the trace cannot be had or read."""
    out = b.work / f"trace-{p.pid}.out"

    def trace():
        with urllib.request.urlopen(f"http://127.0.0.1:{b.admin[p.pid]}/debug/pprof/trace?seconds={seconds}",
                                    timeout=30) as r:
            out.write_bytes(r.read())
        return subprocess.run(["go", "tool", "trace", "-d=parsed", str(out)], capture_output=True, text=True,
                              timeout=120).stdout

    text, _, _ = during_load(b, p, port, token, lead=0.5, seconds=seconds + 1.5, collect=trace, scratch=out)
    return cgo_call_times(text) if text is not None else None


def during_load(b, p, port, token, lead, seconds, collect, scratch):
    """Drives Caddy `p` with closed-loop load for `seconds` and calls `collect` `lead`
    seconds in. Returns what collect returned (None if it failed: no tool, no answer),
    the load's result and Caddy's CPU seconds over the load. `scratch`, the file collect
    writes, is removed."""
    box = {}

    def drive():
        c0 = cpu_seconds(p.pid)
        box["run"] = b.load(port, *token, seconds=seconds)
        box["cpu_s"] = cpu_seconds(p.pid) - c0

    load = threading.Thread(target=drive)
    load.start()
    try:
        time.sleep(lead)
        got = collect()
    except (OSError, subprocess.SubprocessError):
        got = None
    finally:
        load.join()
        scratch.unlink(missing_ok=True)
    return got, box.get("run"), box.get("cpu_s")


def cgo_call_times(text):
    """From `go tool trace -d=parsed` output: the wall time (µs, sorted) of each cgo call
    into ztp_engine_decide that returned within the trace; None if there is none."""
    transition = re.compile(r"StateTransition Time=(\d+) GoID=(\d+) (\w+)->(\w+)")
    lines, started, times = text.splitlines(), {}, []
    for i, line in enumerate(lines):
        m = transition.search(line)
        if not m:
            continue
        t, g, before, after = int(m[1]), m[2], m[3], m[4]
        if before == "Running" and after == "Syscall":
            # The stack follows the event; its first frame says which call this is.
            frame = next((x for x in lines[i + 1:i + 4] if "TransitionStack" not in x), "")
            if "_Cfunc_ztp_engine_decide" in frame:
                started[g] = t
        elif before == "Syscall" and g in started:
            times.append((t - started.pop(g)) / 1000)
    return sorted(times) or None


# Where a profile sample of Caddy lands. The engine is everything the Rust library
# runs (demangled Rust names have "::"; its C entry points are ztp_*) and the libc it
# calls (Caddy's Go code calls no libc); the crossing is cgo's glue on both sides.
PROFILE_CLASSES = ("engine", "cgo", "module", "kernel", "rest")
CGO_GLUE = ("_cgo_", "x_cgo_", "crosscall", "runtime.cgocall", "runtime.asmcgocall", "runtime.cgoCheck",
            "runtime.cgoIsGoPointer", "runtime.cgoInRange")


def profile_class(dso, sym):
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith(("libc.", "libc-", "libm.", "ld-linux")) or "::" in sym or sym.startswith("ztp_"):
        return "engine"
    if sym.startswith(CGO_GLUE):
        return "cgo"
    if "zt-policy/zt-policy/go-module" in sym:
        return "module"
    return "rest"


def profile_counts(text):
    """Samples per class from `perf report --stdio -n --sort dso,sym` lines
    ("  1.52%   225  caddy  [.] aeshashbody")."""
    counts = dict.fromkeys(PROFILE_CLASSES, 0)
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[[.kgu]\]\s+(.*)$", line)
        if m:
            counts[profile_class(m[2], m[3].strip())] += int(m[1])
    return counts


def cpu_profile(b, p, port, token, seconds=3):
    """Caddy's CPU per request under closed-loop load, split by where perf's samples
    land ({class: µs per request}, plus "total", "samples" and "requests"). None without
    perf, or when it fails."""
    if not shutil.which("perf"):
        return None
    data = b.work / f"perf-{p.pid}.data"
    # perf keeps a copy of each binary it profiles in a cache keyed by the binary's GNU
    # build ID, and symbolizes from that copy. Go derives Caddy's build ID from its own
    # inputs, not from the Rust library's content: a Caddy relinked with a changed
    # engine keeps the ID of the last one profiled, and its samples would get that
    # binary's symbols. So perf gets an empty cache of its own and adds nothing to it:
    # symbols come from the binary that runs.
    perf = ["perf", "--buildid-dir", str(b.work / "perf-buildids")]

    def record():
        subprocess.run([*perf, "record", "--no-buildid-cache", "-q", "-F", "999", "-p", str(p.pid), "-o", str(data),
                        "--", "sleep", str(seconds)], capture_output=True, timeout=seconds + 60)
        return subprocess.run([*perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
                               "-q", "-n", "-g", "none", "--percent-limit", "0"],
                              capture_output=True, text=True, timeout=120).stdout

    text, r, cpu_s = during_load(b, p, port, token, lead=1, seconds=seconds + 2, collect=record, scratch=data)
    if text is None:
        return None
    counts = profile_counts(text)
    n = sum(counts.values())
    if not n or not r or not r["requests"]:
        return None
    total = cpu_s * 1e6 / r["requests"]
    out = {k: total * v / n for k, v in counts.items()}
    out.update(total=total, samples=n, requests=r["requests"])
    return out


def merged_profile(profiles):
    """Rounds of cpu_profile as one, each weighted by its requests; None if any failed."""
    if not profiles or None in profiles:
        return None
    n = sum(x["requests"] for x in profiles)
    out = {k: sum(x[k] * x["requests"] for x in profiles) / n for k in (*PROFILE_CLASSES, "total")}
    out.update(samples=sum(x["samples"] for x in profiles), requests=n)
    return out


def engine_call_section(held):
    """The call into the engine under load, against the time the module held requests."""
    out = [
        "How much of the held time is the call into the engine: each call's wall time in a",
        "1 s Go runtime trace of the same Caddy under closed-loop load, after the rounds above",
        "(tracing slows Caddy, so it is not done during them). The rest of the held time is the",
        "module's Go side: reading the body, encoding the request, decoding the decision,",
        "headers, vars and metrics.",
        "",
        "| setup | calls traced | p50 µs | p90 µs | p99 µs | max µs | over 20 µs | held p50 / p99 µs (throughput rounds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("B", "B0"):
        t, h = held[name].get("cgo_us"), held[name]["saturated"]
        if not t:
            out.append(f"| {name} | (no trace) | | | | | | {quantile_us(h, 0.5):.1f} / {quantile_us(h, 0.99):.1f} |")
            continue
        q = lambda x: t[min(len(t) - 1, int(x * len(t)))]  # noqa: E731
        out.append(f"| {name} | {len(t):,} | {q(0.5):.1f} | {q(0.9):.1f} | {q(0.99):.1f} | {t[-1]:.1f} | "
                   f"{100 * sum(1 for x in t if x > 20) / len(t):.1f}% | "
                   f"{quantile_us(h, 0.5):.1f} / {quantile_us(h, 0.99):.1f} |")
    return out + [""]


# The target for B/A, by throughput and by Caddy's CPU per request.
B_OVER_A_TARGET = 0.95


def own_code(profile):
    """CPU µs per request in the module's own code: the engine, the crossing, its Go."""
    return profile["engine"] + profile["cgo"] + profile["module"]


def own_code_bound(A, B):
    """The best B/A by CPU that B's own code alone leaves (A's CPU per request over A's
    plus that code's); None without profiles. A's CPU is the profiles' too: the own
    code was measured in those rounds, and the throughput rounds' CPU drifts apart
    from them (one run: A 167 µs there, 225 µs in the profiles a minute later)."""
    if not (A.get("profile") and B.get("profile")):
        return None
    a_cpu = A["profile"]["total"]
    return a_cpu / (a_cpu + own_code(B["profile"]))


def own_code_budget(A):
    """The µs per request B may cost over A, by A's profiled CPU (as in own_code_bound),
    for B/A to reach the target by CPU."""
    a_cpu = A["profile"]["total"]
    return a_cpu / B_OVER_A_TARGET - a_cpu


def lines_touched(t):
    """Distinct cache lines, code and data, one decision touches (footprint.measure)."""
    return t["code_lines"] + t["data_lines"]


def line_budget(A, B, B0, touched):
    """The engine's CPU under load per cache line one decision touches, for B and B0,
    and how many lines B's engine may touch for B/A to reach the target by CPU at B's
    rate, once the crossing and the handler's Go are paid; None without profiles."""
    if not all(x.get("profile") for x in (A, B, B0)):
        return None
    pb, p0 = B["profile"], B0["profile"]
    per_line = {n: p["engine"] * 1000 / lines_touched(touched[n]) for n, p in (("B", pb), ("B0", p0))}
    engine_budget = own_code_budget(A) - pb["cgo"] - pb["module"]
    return {"ns_per_line": per_line, "engine_budget_us": engine_budget,
            "lines": max(0, int(engine_budget * 1000 / per_line["B"]))}


def footprint_section(touched, budget):
    """What one decision of B and of B0 touches, and the line budget the target sets."""
    out = [
        "Under load a decision costs between the L2- and the L3-evicted rows, not the hot one:",
        "what it costs is mostly the cache lines and pages it touches (code and data), not the",
        "instructions it runs. That is where the module's cost in Caddy can still be cut. What",
        "one decision touches, counted by valgrind's lackey (`bench/footprint/footprint.py`,",
        "`--b0` for B0; unlike the timings these counts do not move with the machine's load):",
        "",
        "| setup | instructions | code lines / pages | data lines / pages | allocations |",
        "| --- | --- | --- | --- | --- |",
    ] + [f"| {n} | {t['instructions']:,} | {t['code_lines']} / {t['code_pages']} | "
         f"{t['data_lines']} / {t['data_pages']} | {t['allocations']} |" for n, t in touched.items()] + [""]
    if budget:
        b, b0 = lines_touched(touched["B"]), lines_touched(touched["B0"])
        nb, n0 = budget["ns_per_line"]["B"], budget["ns_per_line"]["B0"]
        alike = ("nearly the same for both, so a decision's cost under load follows the lines it touches"
                 if max(nb, n0) <= 1.25 * min(nb, n0) else
                 "not alike in this run, so the lines alone do not explain the cost under load")
        out += [
            f"Divided by those lines, the engine's CPU under load (the profiles above) is {nb:.1f} ns per line "
            f"for B and {n0:.1f} ns for B0: {alike}. At B's rate, B/A ≥ {B_OVER_A_TARGET} by CPU leaves the engine "
            f"{budget['engine_budget_us']:.1f} µs once the crossing and the handler's Go are paid, so "
            f"**{budget['lines']:,} lines** per decision, against B's {b:,} today. B0, which decodes the "
            f"request, evaluates `true` and encodes the decision, touches {b0:,}, which leaves "
            f"{max(0, budget['lines'] - b0):,} lines for all the example policy adds to that (the certificate and "
            f"token caches, the JSON body, its rules and limits), where it takes {b - b0:,} today. What one "
            "decision touches is the budget to work against, with the footprint tool, in seconds rather "
            "than minutes of noisy load.",
            "",
        ]
    return out


def b_over_a_met(by_rps, by_cpu, bound):
    """The B/A target: met only when the throughput ratio, the CPU ratio and, when
    profiles were taken, the bound B's own code puts on it all reach it."""
    return min(by_rps, by_cpu, 1 if bound is None else bound) >= B_OVER_A_TARGET


def profile_section(A, B0, B, bound):
    """Where Caddy's CPU per request goes, from perf profiles, and what that bounds B/A by
    (`bound`: own_code_bound(A, B))."""
    rows = [(n, x["profile"]) for n, x in (("A", A), ("B0", B0), ("B", B)) if x.get("profile")]
    if len(rows) < 3:
        return ["Where Caddy's CPU goes: (no perf profile: `perf` missing or not permitted)", ""]
    out = [
        "Where Caddy's CPU per request goes: perf profiles (999 samples/s) of each Caddy, 3 s in",
        "each of as many interleaved rounds as above, under the same closed-loop load, their",
        "samples split by the code they land in. CPU per request is Caddy's CPU over those",
        "loads' requests (sampling adds a little). *engine* is the Rust library and the libc it",
        "calls, *cgo* the glue of the crossing, *module* the handler's Go code; the rest is",
        "Caddy, the Go runtime (allocation, GC, scheduling) and the kernel, which every setup runs.",
        "",
        "| setup | samples | CPU µs/request | engine | cgo | module (Go) | kernel | Caddy and Go runtime |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in rows:
        out.append(f"| {name} | {x['samples']:,} | {x['total']:.0f} | {x['engine']:.1f} | {x['cgo']:.1f} | "
                   f"{x['module']:.1f} | {x['kernel']:.0f} | {x['rest']:.0f} |")
    pa, p0, pb = A["profile"], B0["profile"], B["profile"]
    budget = own_code_budget(A)
    out += [
        "",
        f"- The module's own code (engine + cgo + module) costs B **{own_code(pb):.1f} µs** per request "
        f"and B0 {own_code(p0):.1f} µs (A: {own_code(pa):.1f} µs, which is what this split "
        "misattributes).",
        f"- B/A ≥ {B_OVER_A_TARGET} by CPU leaves B {budget:.1f} µs per request more than A's {pa['total']:.0f} µs "
        "(in these profiles). The module's own code alone, not counting the allocation, GC and header work "
        f"it adds to the rest, bounds B/A by CPU at **{bound:.3f}** at best in this run.",
        f"- Outside the module's own code, B − A is {pb['kernel'] - pa['kernel']:+.1f} µs in the kernel and "
        f"{pb['rest'] - pa['rest']:+.1f} µs in Caddy and the Go runtime (B0 − A: {p0['kernel'] - pa['kernel']:+.1f} "
        f"and {p0['rest'] - pa['rest']:+.1f} µs).",
        "",
    ]
    return out
