"""What settling a token budget from usage costs (`make bench`, and `--settle-only`):
B (the example policy, limits raised) with its token budget settling from usage against
the same policy without `settle`, on plain and on streamed responses. CPU per request is
Caddy's over interleaved closed-loop rounds; time to first byte and latency come from
open-loop runs at one fixed rate (a saturated server would hide them in queueing)."""

import json

from harness import CHAT_BODY, closed_loop_rounds, cpu_us_per_request, merged_statuses

SETTLE_LINE = 'settle = "usage"\n'
TARGET_CPU_US = 5  # settlement may add this much CPU per response
FIXED_RATE = 400  # requests/s of the open-loop runs


def policies(raised_policy, work):
    text = raised_policy.read_text()
    assert SETTLE_LINE in text, "the example policy's token budget no longer settles"
    with_settle = work / "policy-settle.toml"
    with_settle.write_text(text)
    without = work / "policy-no-settle.toml"
    without.write_text(text.replace(SETTLE_LINE, ""))
    return with_settle, without


def phase(b, a, token, raised_policy, cpus, median):
    """{workload: {setup: result}} for B and B-settle, plain and streamed."""
    with_settle, without = policies(raised_policy, b.work)
    setups = {"B": b.start_caddy("B", policy=without, cpus=cpus, tag="B-no-settle"),
              "B-settle": b.start_caddy("B", policy=with_settle, cpus=cpus, tag="B-settle")}
    body = json.loads(CHAT_BODY)
    body["stream"] = True
    added = b.work / "body-stream.json"
    added.write_text(json.dumps(body))
    body["stream_options"] = {"include_usage": True}
    asked = b.work / "body-stream-usage.json"
    asked.write_text(json.dumps(body))
    stream = ["-header", "X-Bench-Stream: 1"]
    workloads = {
        "plain": [*token],
        # The client asks for the usage chunk: the module reads it as it passes.
        "streamed, client asks for usage": [*token, "-body-file", str(asked), *stream],
        # It does not: the module adds include_usage and removes the usage chunk.
        "streamed, usage added and removed": [*token, "-body-file", str(added), *stream],
    }
    out = {}
    try:
        for label, extra in workloads.items():
            rounds, fixed = closed_loop_rounds(
                b, setups, extra, a.rounds, f"settle {label}",
                also=lambda port: b.load(port, *extra, "-rate", str(FIXED_RATE), seconds=2))
            out[label] = {}
            for name in setups:
                rs, fs = rounds[name], fixed[name]
                out[label][name] = {
                    "rps": median([r["rps"] for r in rs]),
                    "cpu_us_per_req": cpu_us_per_request(rs),
                    "ttfb_p50_us": median([f["ttfb_p50_us"] for f in fs]),
                    "ttfb_p99_us": median([f["ttfb_p99_us"] for f in fs]),
                    "p50_us": median([f["p50_us"] for f in fs]),
                    "p99_us": median([f["p99_us"] for f in fs]),
                    "statuses": merged_statuses(rs + fs),
                }
    finally:
        for p, _ in setups.values():
            b.stop(p)
    return out


def section(result, a):
    lines = [
        f"## Budgets that settle from usage ({a.rounds} rounds of {a.seconds:g} s per setup and workload)",
        "",
        "B is the example policy (limits raised) with `settle` removed from its token budget;",
        "B-settle is the same policy as shipped: the budget reserves at admission and settles to",
        "the response's usage (a lease, the response read as it passes, one more call into the",
        "engine). Streamed twice: the client asks for the usage chunk, or it does not and the",
        "module adds `include_usage` and removes the chunk. The upstream answers a fixed chat",
        "completion, or (streamed, chunked as vLLM streams) eight content chunks, a usage chunk",
        "and `[DONE]`. CPU is Caddy's per request over the closed-loop rounds, and includes the",
        "settle log line (one more line per response, as Caddy writes it); time to first byte",
        f"and latency are from open-loop runs at {FIXED_RATE} requests/s. On this VM the same",
        "setup differs by up to ±10 µs between rounds, so smaller differences here are noise;",
        "the cost alone is measured in process by `BenchmarkServeHTTPSettle` (go-module).",
        "",
        "| response | B CPU µs/req | B-settle CPU µs/req | added µs/req | target ≤ 5 µs | "
        "TTFB p50 B → B-settle (µs) | TTFB p99 B → B-settle (µs) | latency p50 B → B-settle (µs) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in result.items():
        B, S = s["B"], s["B-settle"]
        added = S["cpu_us_per_req"] - B["cpu_us_per_req"]
        ok = all(set(x["statuses"]) == {"200"} for x in s.values())
        lines.append(
            f"| {label} | {B['cpu_us_per_req']:.1f} | {S['cpu_us_per_req']:.1f} | **{added:+.1f}** | "
            f"{'met' if added <= TARGET_CPU_US else 'NOT met'} | {B['ttfb_p50_us']:.0f} → {S['ttfb_p50_us']:.0f} | "
            f"{B['ttfb_p99_us']:.0f} → {S['ttfb_p99_us']:.0f} | {B['p50_us']:.0f} → {S['p50_us']:.0f} |"
            + ("" if ok else " (not every answer was 200: see the log)"))
    lines.append("")
    return lines


def summary(result):
    """For the cost table: `plain +x µs, streamed +y µs; time to first byte p50 a → b µs`."""
    parts = [f"{label} {s['B-settle']['cpu_us_per_req'] - s['B']['cpu_us_per_req']:+.1f} µs"
             for label, s in result.items()]
    st = result.get("streamed, usage added and removed")
    ttfb = (f"; time to first byte p50 (usage added) {st['B']['ttfb_p50_us']:.0f} → "
            f"{st['B-settle']['ttfb_p50_us']:.0f} µs" if st else "")
    return ", ".join(parts) + ttfb
