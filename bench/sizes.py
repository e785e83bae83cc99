"""What a long prompt costs: plain `reverse_proxy` (A) against zt_policy with the
example policy (B) on chat bodies of 1 KiB, 64 KiB and 1 MiB (the policy's max_body
raised to 2 MiB), Caddy's CPU per request and B/A per size, in interleaved rounds.
Part of `make bench` (run.py calls `phase` and `section`)."""

import json
import re

from harness import closed_loop_rounds, cpu_us_per_request, merged_statuses

SIZES = (("1 KiB", 1 << 10), ("64 KiB", 64 << 10), ("1 MiB", 1 << 20))

# Targets (issue: "The policy reads each request exactly as vLLM will, at memory speed").
ADDED_CPU_TARGET_US = {"64 KiB": 50, "1 MiB": 600}
B_OVER_A_TARGET = {"64 KiB": 0.85}


def chat_body(size):
    """A chat request of about `size` bytes: a system prompt, then user and assistant
    turns of prose with some non-ASCII and escapes (the same text as the criterion and
    Go benchmarks)."""
    prose = ("Zero trust means every hop is verified: the edge checks the device certificate, "
             "the token's signature and audience, and the request itself — “quotes”, naïve café, "
             "tabs\tand \"escapes\" included — before vLLM sees a byte. ")
    messages = [{"role": "system", "content": "You are a careful assistant."}]
    n, turn = 200, 0
    while n < size:
        take = min(size - n, 8192)
        content = (prose * (take // len(prose) + 1))[:take]
        m = {"role": ("user", "assistant")[turn % 2], "content": content}
        n += len(json.dumps(m, ensure_ascii=False).encode()) + 1
        messages.append(m)
        turn += 1
    return json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 256, "stream": True, "temperature": 0.2,
                       "messages": messages}, ensure_ascii=False).encode()


def policy_for_sizes(raised_policy, work):
    text = raised_policy.read_text()
    assert 'max_body = "256KiB"' in text, "the example policy's max_body changed"
    p = work / "policy-2mib.toml"
    p.write_text(text.replace('max_body = "256KiB"', 'max_body = "2MiB"'))
    return p


def other_policy(caddy, work):
    """The example policy of the checkout a Caddy was built in (`<checkout>/build/caddy`),
    every limit raised out of the way and max_body 2 MiB, as for B."""
    text = (caddy.resolve().parent.parent / "examples" / "policy" / "policy.toml").read_text()
    text = re.sub(r'rate = "[^"]*"', 'rate = "1000000000/s"', text)
    text = re.sub(r"burst = \d+", "burst = 100000000", text)
    text = re.sub(r"(?m)^max = \d+", "max = 1000000", text)
    text = re.sub(r'max_body = "[^"]*"', 'max_body = "2MiB"', text)
    text = re.sub(r'jwks_file = ".*"\n', "", text)
    p = work / "policy-before.toml"
    p.write_text(text)
    return p


def phase(b, a, token, raised_policy, cpus, median, other_caddy=None):
    """{size: {setup: result}} for A and B (and `B-before` with `other_caddy`, a Caddy
    built in another checkout, with that checkout's example policy)."""
    policy = policy_for_sizes(raised_policy, b.work)
    setups = {"A": b.start_caddy("A", cpus=cpus), "B": b.start_caddy("B", policy=policy, cpus=cpus)}
    if other_caddy:
        setups["B-before"] = b.start_caddy("B", policy=other_policy(other_caddy, b.work), cpus=cpus,
                                           binary=other_caddy, tag="B-before")
    out = {}
    try:
        for label, size in SIZES:
            body = b.work / f"body-{size}.json"
            body.write_bytes(chat_body(size))
            extra = [*token, "-body-file", str(body)]
            rounds, _ = closed_loop_rounds(b, setups, extra, a.rounds, f"size {label}")
            out[label] = {}
            for name, rs in rounds.items():
                out[label][name] = {
                    "bytes": body.stat().st_size,
                    "rps": median([r["rps"] for r in rs]), "rps_all": [r["rps"] for r in rs],
                    "p50_us": median([r["p50_us"] for r in rs]),
                    "cpu_us_per_req": cpu_us_per_request(rs),
                    "statuses": merged_statuses(rs), "errors": sum(r["errors"] for r in rs),
                }
    finally:
        for p, _ in setups.values():
            b.stop(p)
    return out


def section(sizes, a):
    """The report's section: one row a size."""
    before = any("B-before" in s for s in sizes.values())
    lines = [
        f"## Long prompts: 1 KiB, 64 KiB and 1 MiB chat bodies ({a.rounds} rounds of {a.seconds:g} s per setup and size)",
        "",
        "A is `reverse_proxy` alone, B adds zt_policy with the example policy (max_body raised to",
        "2 MiB), which reads the whole body as vLLM does before deciding. CPU is Caddy's per",
        "request over all rounds; added is B's minus A's.",
        "",
        "| body | A req/s | B req/s | B/A | A CPU µs/req | B CPU µs/req | added µs/req | target |"
        + (" B before this change: CPU µs/req, added |" if before else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if before else ""),
    ]
    for label, s in sizes.items():
        A, B = s["A"], s["B"]
        added = B["cpu_us_per_req"] - A["cpu_us_per_req"]
        ratio = B["rps"] / A["rps"]
        goals = []
        if label in ADDED_CPU_TARGET_US:
            t = ADDED_CPU_TARGET_US[label]
            goals.append(f"added ≤ {t} µs: {'met' if added <= t else 'NOT met'}")
        if label in B_OVER_A_TARGET:
            t = B_OVER_A_TARGET[label]
            goals.append(f"B/A ≥ {t}: {'met' if ratio >= t else 'NOT met'}")
        ok = all(set(x["statuses"]) == {"200"} for x in s.values())
        row = (f"| {label} ({B['bytes']:,} B) | {A['rps']:,.0f} | {B['rps']:,.0f} | {ratio:.3f} | "
               f"{A['cpu_us_per_req']:.0f} | {B['cpu_us_per_req']:.0f} | **{added:.0f}** | "
               f"{'; '.join(goals) or '–'}{'' if ok else ' (not every answer was 200: see the log)'} |")
        if before:
            o = s["B-before"]
            row += f" {o['cpu_us_per_req']:.0f}, {o['cpu_us_per_req'] - A['cpu_us_per_req']:.0f} |"
        lines.append(row)
    lines.append("")
    return lines


def summary(sizes):
    """Added CPU per size, for the README: `1 KiB +x µs, 64 KiB +y µs, 1 MiB +z µs`."""
    return ", ".join(f"{label} +{s['B']['cpu_us_per_req'] - s['A']['cpu_us_per_req']:.0f} µs "
                     f"(B/A {s['B']['rps'] / s['A']['rps']:.2f})" for label, s in sizes.items())


if __name__ == "__main__":
    # The body the benchmarks send, to look at: python3 bench/sizes.py 65536 | head -c 400
    import sys
    sys.stdout.buffer.write(chat_body(int(sys.argv[1]) if len(sys.argv) > 1 else 1024))
