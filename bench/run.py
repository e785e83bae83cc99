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
Caddy's admin /metrics before and after each phase), and where Caddy's CPU per request
goes (perf profiles of A, B0 and B: the engine, the cgo crossing, the module's Go, the
rest), which bounds B/A whatever the machine's drift. Then the cold path (a new token
each request), scale (1, 1,000, 100,000 identities against the real limits: latency
and Caddy's resident memory), the criterion decision benchmark and the Go benchmark of
the FFI round trip.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))
from stack import HOST, Stack, free_port, wait_port  # noqa: E402

import sizes  # noqa: E402  (bench/sizes.py: the long-prompt phase)

BUILD = ROOT / "build"
CHAT_BODY = json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "Summarise zero trust in one line."}]})
UPSTREAM_REPLY = json.dumps({"id": "cmpl-bench", "object": "chat.completion", "created": 0,
                             "model": "llama-3.1-8b-instruct", "choices": [{"index": 0, "message": {
                                 "role": "assistant", "content": "Verify every hop."}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


class Bench:
    def __init__(self, work: Path, seconds: float, conns: int):
        self.work, self.seconds, self.conns = work, seconds, conns
        # The end-to-end stack's IdP and oauth2-proxy serve setups B and C as they are.
        self.stack = Stack(work, BUILD / "caddy", oauth2_proxy=True)
        self.pki = self.stack.pki
        self.procs = []
        self.admin = {}
        self.ports = {"upstream": free_port(), "o2p": self.stack.ports["o2p"]}
        self.issuer = self.stack.issuer
        self.ec_key, self.ec_jwks = self.make_ec_key()

    def spawn(self, name, args, env=None, cpus=None):
        log = open(self.work / f"{name}.log", "ab")
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                             preexec_fn=pin)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if p in self.procs:
            self.procs.remove(p)

    def helper_pids(self):
        """The upstream, the IdP and oauth2-proxy, with their child processes."""
        pids = {p.pid for p in self.procs if p.poll() is None}
        pids |= {p.pid for p in self.stack.procs.values() if p.poll() is None}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in pids:
                pids.add(int(stat.parent.name))
        return pids

    def confine(self, cpus):
        """Moves every thread of the helpers, and this process (so the load generator
        started from it), to `cpus`."""
        os.sched_setaffinity(0, cpus)
        for pid in self.helper_pids():
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    os.sched_setaffinity(int(task.name), cpus)
                except OSError:
                    pass

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)
        self.stack.stop()

    def make_ec_key(self):
        """A P-256 signing key and its JWKS, so the load generator can mint 100,000
        identities' tokens quickly (ES256)."""
        key = self.work / "ec.pem"
        sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        import base64

        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
        pt = der[-65:]
        jwks = self.work / "bench-jwks.json"
        jwks.write_text(json.dumps({"keys": [{"kty": "EC", "kid": "bench-1", "crv": "P-256",
                                               "x": b64(pt[1:33]), "y": b64(pt[33:])}]}))
        return key, jwks

    # ---- the fixed parts ----

    def start_upstream(self):
        d = self.work / "upstream"
        d.mkdir(exist_ok=True)
        conf = d / "nginx.conf"
        user = "user root root;" if os.geteuid() == 0 else ""
        conf.write_text(f"""worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d};
  keepalive_requests 1000000;
  client_max_body_size 4m;
  server {{
    listen 127.0.0.1:{self.ports['upstream']};
    location / {{
      default_type application/json;
      return 200 '{UPSTREAM_REPLY}';
    }}
  }}
}}
""")
        p = self.spawn("upstream", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(d), "-c", str(conf),
                                    "-g", "daemon off;"])
        wait_port(self.ports["upstream"], p, "upstream nginx")

    def start_idp(self):
        self.stack.start_idp()
        self.token = self.stack.service_token("batch-svc")

    def start_oauth2_proxy(self):
        self.stack.start_oauth2_proxy()

    # ---- Caddy setups ----

    def caddyfile(self, port, admin, body):
        return f"""{{
	admin 127.0.0.1:{admin}
	storage file_system {self.work / 'caddy-data'}
	auto_https disable_redirects
	skip_install_trust
	servers {{
		protocols h1 h2
	}}
	log {{
		output discard
	}}
}}

https://{HOST}:{port} {{
	bind 127.0.0.1
	tls {self.pki.path('caddy.pem')} {self.pki.path('caddy.key')} {{
		client_auth {{
			mode require_and_verify
			trust_pool file {self.pki.path('ca.pem')}
		}}
	}}
{body}
}}
"""

    def setup_body(self, name, policy=None):
        up = f"reverse_proxy 127.0.0.1:{self.ports['upstream']}"
        if name == "A":
            return f"\t{up}"
        if name == "D":
            return f"\trespond `{UPSTREAM_REPLY}` 200"
        if name == "B0":
            return f"""	zt_policy {{
		policy_file {self.work / 'policy-one-rule.toml'}
	}}
	{up}"""
        if name == "B" or name.startswith("B-"):
            extra = (f"\n\t\tissuer {self.issuer}\n\t\taudience local-ai\n\t\tidp_ca_file {self.pki.path('mesh-ca.pem')}"
                     if name == "B" else "")
            return f"""	zt_policy {{
		policy_file {policy}
		strip_headers X-Auth-Request-User X-Auth-Request-Email{extra}
	}}
	{up}"""
        if name == "C":
            # The same decisions as far as Caddy can make them without us: request
            # size, identity from oauth2-proxy, path/method/device OU from the
            # certificate. No JSON body fields, no per-identity limits.
            return f"""	request_body {{
		max_size 256KB
	}}
	forward_auth 127.0.0.1:{self.ports['o2p']} {{
		uri /oauth2/auth
		copy_headers X-Auth-Request-User X-Auth-Request-Email Authorization
	}}
	@allowed {{
		expression `{{method}} == "POST" && ({{path}} == "/v1/chat/completions" || {{path}} == "/v1/completions")`
		vars_regexp {{http.request.tls.client.subject}} OU=ml-users
	}}
	handle @allowed {{
		{up}
	}}
	respond 403"""
        raise ValueError(name)

    def start_caddy(self, name, policy=None, cpus=None, binary=None, tag=None):
        """Setup `name` on `binary` (our build by default), logged as `tag`."""
        tag = tag or name
        port, admin = free_port(), free_port()
        cf = self.work / f"Caddyfile.{tag}"
        cf.write_text(self.caddyfile(port, admin, self.setup_body(name, policy)))
        env = dict(os.environ, HOME=str(self.work), XDG_DATA_HOME=str(self.work / "xdg"),
                   XDG_CONFIG_HOME=str(self.work / "xdg"))
        p = self.spawn(f"caddy-{tag}", [str(binary or BUILD / "caddy"), "run", "--config", str(cf),
                                        "--adapter", "caddyfile"], env=env, cpus=cpus)
        wait_port(port, p, f"caddy {tag}")
        self.admin[p.pid] = admin
        return p, port

    def decision_histogram(self, p):
        """zt_policy's decision_duration_seconds buckets from Caddy's admin /metrics:
        {upper bound in seconds: cumulative count}."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin[p.pid]}/metrics", timeout=10) as r:
            text = r.read().decode()
        buckets = {}
        for line in text.splitlines():
            if line.startswith('caddy_zt_policy_decision_duration_seconds_bucket{le="'):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        return buckets

    def load(self, port, *extra, n=None, seconds=None, conns=None):
        args = [str(BUILD / "loadgen"), "-url", f"https://{HOST}:{port}/v1/chat/completions",
                "-connect", f"127.0.0.1:{port}", "-ca", self.pki.path("ca.pem"),
                "-cert", self.pki.path("alice.pem"), "-key", self.pki.path("alice.key"),
                "-body", CHAT_BODY, "-c", str(conns or self.conns)]
        if n:
            args += ["-n", str(n)]
        else:
            args += ["-d", f"{seconds or self.seconds}s"]
        return json.loads(sh(*args, *extra))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_policy(work, raise_limits, jwks=None):
    text = (ROOT / "examples" / "policy" / "policy.toml").read_text()
    if raise_limits:
        for old, new in (('rate = "120/m"', 'rate = "1000000/s"'), ("burst = 20\n", "burst = 100000000\n"),
                         ('rate = "500000/h"', 'rate = "1000000000/s"'), ("burst = 131072", "burst = 100000000"),
                         # The same expression, but a 1 MiB prompt must not run the bucket dry.
                         ("cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens'",
                          "cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens / 1000000'")):
            assert old in text, f"the example policy no longer has {old!r}"
            text = text.replace(old, new)
    if jwks:
        text = re.sub(r'jwks_file = ".*"', f'jwks_file = "{jwks}"', text)
        text = text.replace('issuer = "https://idp.example.internal"', 'issuer = "https://bench.example"')
    else:
        text = re.sub(r'jwks_file = ".*"\n', "", text)
    p = work / ("policy-raised.toml" if raise_limits else "policy-real.toml")
    if jwks:
        p = p.with_name(p.stem + "-static.toml")
    p.write_text(text)
    return p


# B0's policy: one rule that allows everything, no identity required (the module's floor).
ONE_RULE_POLICY = '[settings]\nrequire_identity = false\n\n[[rule]]\nname = "all"\neffect = "allow"\nwhen = "true"\n'

SETUPS = [
    ("A", "reverse_proxy, no policy"),
    ("B", "A + zt_policy, example policy, token verified in-process"),
    ("B0", "A + zt_policy, one-rule policy (the module's floor)"),
    ("C", "CEL expression + request_body + forward_auth to oauth2-proxy"),
    ("D", "respond (no upstream)"),
]


def histogram_delta(before, after):
    return {le: after[le] - before.get(le, 0) for le in after}


def quantile_us(buckets, q):
    """Like Prometheus' histogram_quantile: linear within the bucket holding q."""
    total = buckets.get(float("inf"), 0)
    if total <= 0:
        return float("nan")
    lo, below = 0.0, 0.0
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            if le == float("inf"):
                return lo * 1e6
            return (lo + (le - lo) * (q * total - below) / max(1e-9, buckets[le] - below)) * 1e6
        lo, below = le, buckets[le]
    return lo * 1e6


def share_within(buckets, le):
    total = buckets.get(float("inf"), 0)
    return buckets.get(le, 0) / total if total else float("nan")


def interleaved(names, rounds):
    """(round, setup) pairs: each round starts with another setup, so none always runs first."""
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            yield i, name


def merged_statuses(runs):
    statuses = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return statuses


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3, help="per setup and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rate", type=float, default=2000, help="the fixed rate of the latency table")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-pin", action="store_true",
                    help="never give Caddy a core of its own (with 2+ cores it gets one, and a run with all sharing comes first)")
    ap.add_argument("--sizes-only", action="store_true",
                    help="only the long-prompt phase (1 KiB / 64 KiB / 1 MiB bodies), printed, no report written")
    ap.add_argument("--before-caddy", type=Path,
                    help="a Caddy built from another commit: the long-prompt phase measures it too (B-before)")
    a = ap.parse_args()
    if a.sizes_only:
        return sizes_only(a)
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
        by_size = sizes.phase(b, a, token, raised, caddy_cpus, median, interleaved, cpu_seconds,
                              other_caddy=a.before_caddy)

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
    gobench = run_gobench()
    sys.path.insert(0, str(ROOT / "bench" / "footprint"))
    import footprint  # noqa: E402

    touched = {setup: footprint.measure(setup=setup) for setup in ("B", "B0")}
    write_report(Path(a.out), (results, shared, caddy_cpus, cpus), fixed, held_time, (cold, warm, cold_cert, warm_cert),
                 scale, criterion, (gobench, touched), a, by_size)
    print(f"wrote {a.out}")


def sizes_only(a):
    """`--sizes-only`: the long-prompt phase alone, on the same pinning as a full run."""
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
        result = sizes.phase(b, a, ["-token", b.token], raised, caddy_cpus, median, interleaved, cpu_seconds,
                             other_caddy=a.before_caddy)
    finally:
        b.stop_all()
        os.sched_setaffinity(0, set(cpus))
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(sizes.section(result, a)))


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


def run_criterion():
    subprocess.run(["cargo", "bench", "-q", "-p", "zt-policy-core", "--bench", "decision"], cwd=ROOT, check=True,
                   capture_output=True)
    out = {}
    for est in sorted((ROOT / "target" / "criterion" / "decide").glob("*/new/estimates.json")):
        e = json.loads(est.read_text())
        out[est.parent.parent.name] = e["mean"]["point_estimate"] / 1000
    return out


def run_gobench():
    """The Go benchmarks: rows as go test prints them, and the evicted-cache decision
    times as {"hot/example": ns, …}."""
    env = dict(os.environ, CGO_ENABLED="1")
    rows = []
    # The evicted-cache runs write over up to twice the L3 cache before each decision,
    # so they get fewer iterations.
    for pattern, times in (("DecideFlat$|CgoCrossing|ServeHTTP(Example|Trivial)", "200000x"),
                           ("ServeHTTPBody", "3s"), ("DecideEvicted", "500x")):
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


def write_report(path, runs, fixed, held, cold_path, scale, criterion, gobench, a, by_size):
    r, shared, caddy_cpus, cpus = runs
    cold, warm, cold_cert, warm_cert = cold_path
    (gobench, evicted), touched = gobench
    def statuses(x):
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(x["statuses"].items()))

    A, B, B0 = (r[k] for k in ("A", "B", "B0"))
    fA, fB = fixed["A"], fixed["B"]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    if caddy_cpus:
        where = (f"Each Caddy runs on a core of its own (CPU {min(caddy_cpus)}, by CPU affinity); the load "
                 "generator, nginx, the IdP and oauth2-proxy on the other "
                 f"{'core' if len(cpus) == 2 else 'cores'}, as the edge runs in production, so what is "
                 "measured is what Caddy and the module cost, not how they fight the load generator for "
                 "cores. The same throughput rounds with everything sharing every core (how earlier runs "
                 "measured) follow the first table.")
    else:
        where = ("The load generator, nginx and Caddy share the machine's cores (one core, or `--no-pin`), "
                 "so absolute numbers are low; the ratios are the point.")
    lines = [
        "# zt_policy benchmark",
        "",
        f"Made by `make bench` (bench/run.py) on {time.strftime('%Y-%m-%d')}: {machine()}.",
        "Every setup gets the same requests: `POST /v1/chat/completions` with a JSON body, a",
        "device certificate (mTLS, keep-alive) and the IdP's bearer token; the upstream is",
        "nginx answering a fixed chat completion; the load generator is bench/loadgen. All",
        "setups run at once and are measured in interleaved rounds.",
        where,
        "",
    ]

    def throughput(r, title, bound):
        A, B, C, D = r["A"], r["B"], r["C"], r["D"]
        out = [
            f"## Throughput{title}: {a.conns} connections, closed loop, {a.rounds} rounds of {a.seconds:g} s per setup",
            "",
            "Requests/s and latency are the median of the rounds; CPU is Caddy's (user + system)",
            "over all rounds divided by the requests served; busy is Caddy's CPU over the time of",
            "a round (1.00 = one core kept busy).",
            "",
            "| setup | what | requests/s | rounds | p50 µs | p99 µs | Caddy CPU µs/request | Caddy busy | statuses |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, what in SETUPS:
            x = r[name]
            out.append(f"| {name} | {what} | {x['rps']:,.0f} | {' / '.join(f'{v:,.0f}' for v in x['rps_all'])} | "
                       f"{x['p50_us']:.0f} | {x['p99_us']:.0f} | {x['cpu_us_per_req']:.0f} | {x['busy']:.2f} | "
                       f"{statuses(x)} |")
        by_rps, by_cpu = B["rps"] / A["rps"], A["cpu_us_per_req"] / B["cpu_us_per_req"]
        paired = median([b / a for a, b in zip(A["rps_all"], B["rps_all"])])
        out += [
            "",
            f"- B/A throughput: **{by_rps:.3f}**; by Caddy CPU per request (A's over B's): **{by_cpu:.3f}** "
            f"(target ≥ {B_OVER_A_TARGET}, counted as met only when both are"
            + (f" and the module's own code fits in what {B_OVER_A_TARGET} leaves, which bounds B/A at {bound:.3f} in "
               "this run (see \"Where B's cost goes\")" if bound is not None else "")
            + f": {met(b_over_a_met(by_rps, by_cpu, bound))}).",
        ] + ([
            "- B does all that A does and more, so it cannot cost less CPU per request: a ratio above 1 "
            "is the machine's speed drifting between the rounds, and this table's ratios are not to be "
            "trusted on their own."
        ] if by_cpu > 1 else []) + [
            f"- Round by round (each B round against the A round of the same pass): median {paired:.3f}; "
            f"across all rounds B/A from {min(B['rps_all']) / max(A['rps_all']):.2f} to "
            f"{max(B['rps_all']) / min(A['rps_all']):.2f}. When the machine's speed drifts during a run (a VM's "
            "host is shared), throughput moves with it; the CPU a request costs moves less.",
            f"- B/C throughput: **{B['rps'] / C['rps']:.2f}×** (target: B ahead of C: {met(B['rps'] > C['rps'])}).",
            f"- D/A: {D['rps'] / A['rps']:.2f}× (what proxying to the upstream costs).",
            f"- At saturation latency is mostly queueing: p99 B {B['p99_us']:.0f} µs against A {A['p99_us']:.0f} µs.",
            "",
        ]
        return out

    # What the module's own code alone leaves of B/A at best (from the profiles, when taken).
    bound = own_code_bound(A, B)
    lines += throughput(r, " (Caddy on its own core)" if caddy_cpus else "", bound)
    lines += [
        "- Limits in B are raised in this run so every request takes the full allow path; C",
        "  cannot check JSON body fields or limit per identity at all.",
        "",
    ]
    lines += sizes.section(by_size, a)
    if shared:
        lines += throughput(shared[0], " (all sharing every core)", bound)
        lines += [
            "- Here Caddy's threads are preempted by the load generator and nginx, and their work",
            "  runs between Caddy's on the same cores; the ratio moves from run to run more than",
            "  with Caddy on its own core.",
            "",
        ]
    lines += [
        "## Latency zt_policy adds",
        "",
        "The time zt_policy holds each request (reading the body the policy needs, deciding,",
        "setting headers) is measured by the module itself: its histogram",
        "`caddy_zt_policy_decision_duration_seconds`, read from Caddy's admin `/metrics` before",
        "and after each phase. Quantiles are interpolated within the histogram's buckets",
        "(5, 10, 25, 50, 100, 250 µs, …), as Prometheus' `histogram_quantile` does.",
        "",
        "| setup | cores | phase | decisions | p50 µs | p99 µs | within 100 µs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    own = "Caddy on its own" if caddy_cpus else "all sharing"
    for name in ("B", "B0"):
        rows = [(own, "saturated", f"throughput rounds ({a.conns} connections, closed loop)", held[name]),
                (own, "fixed", f"{a.rate:,.0f} requests/s (open loop)", held[name])]
        if shared:
            rows.append(("all sharing", "saturated", f"throughput rounds ({a.conns} connections, closed loop)",
                         shared[1][name]))
        for cores, phase, what, hh in rows:
            h = hh[phase]
            lines.append(f"| {name} | {cores} | {what} | {h.get(float('inf'), 0):,.0f} | {quantile_us(h, 0.5):.1f} | "
                         f"{quantile_us(h, 0.99):.1f} | {100 * share_within(h, 100e-6):.2f}% |")
    hs, hf = held["B"]["saturated"], held["B"]["fixed"]
    lines += [
        "",
        f"- p99 of the latency zt_policy adds, example policy, "
        f"{'Caddy on its own core' if caddy_cpus else 'all sharing the cores'}: **{quantile_us(hs, 0.99):.0f} µs** at full load, "
        f"**{quantile_us(hf, 0.99):.0f} µs** at {a.rate:,.0f} requests/s (target ≤ 100 µs: "
        f"{met(quantile_us(hs, 0.99) <= 100 and quantile_us(hf, 0.99) <= 100)})"
        + (f"; with all sharing every core, **{quantile_us(shared[1]['B']['saturated'], 0.99):.0f} µs** at full "
           "load: there the tail is mostly Caddy's threads waiting for a core the load generator holds."
           if shared else "."),
        "",
        f"End to end, at a fixed {a.rate:,.0f} requests/s for every setup ({a.rounds} interleaved rounds of",
        f"{a.seconds:g} s, open loop: each request is sent when due and timed from then, so a stall",
        "counts in full; medians of the rounds):",
        "",
        "| setup | requests | p50 µs | p90 µs | p99 µs (each round) | max µs | statuses |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, _ in SETUPS:
        x = fixed[name]
        lines.append(f"| {name} | {x['requests']:,} | {x['p50_us']:.0f} | {x['p90_us']:.0f} | {x['p99_us']:.0f} "
                     f"({' / '.join(f'{v:.0f}' for v in x['p99_all'])}) | {x['max_us']:.0f} | {statuses(x)} |")
    lines += [
        "",
        f"- End-to-end p99, B − A: {fB['p99_us'] - fA['p99_us']:.0f} µs; p50: {fB['p50_us'] - fA['p50_us']:.0f} µs. "
        f"C: p50 {fixed['C']['p50_us']:.0f} µs, p99 {fixed['C']['p99_us']:.0f} µs.",
    ] + [
        f"- {name} serves at most {r[name]['rps']:,.0f} requests/s here (throughput table), less than "
        f"{a.rate:,.0f}: its requests queue, so its latencies at this rate measure the backlog, and it served "
        f"{fixed[name]['requests']:,} of the {a.rate * a.seconds * a.rounds:,.0f} due in its rounds."
        for name, _ in SETUPS if r[name]["rps"] < a.rate
    ] + [
        "- At this rate the machine idles much of the time, and a request's latency is mostly",
        "  the time the load generator, Caddy and nginx take to be woken and scheduled (compare",
        "  D, which does not proxy); the rounds of one setup show how much that varies. The",
        "  module's own histogram above measures what it adds without that noise.",
        "",
        "## Where B's cost goes",
        "",
        f"Caddy CPU per request: A {A['cpu_us_per_req']:.0f} µs; B0 (zt_policy with one rule) "
        f"{B0['cpu_us_per_req']:.0f} µs, so the module's fixed cost is "
        + (f"about {B0['cpu_us_per_req'] - A['cpu_us_per_req']:.0f} µs"
           if B0["cpu_us_per_req"] - A["cpu_us_per_req"] >= 0.5 else "not measurable in this run")
        + "; B (example policy: JSON body read and parsed,",
        f"token and certificate checked, 7 rules, 2 limits) {B['cpu_us_per_req']:.0f} µs, "
        f"{B['cpu_us_per_req'] - B0['cpu_us_per_req']:.0f} µs more. In process the same work takes",
        "the handler and decision times below (`BenchmarkServeHTTP*`, criterion); under load,",
        "between TLS, HTTP and proxying work on the same core, the same instructions run",
        "with cold caches, and every µs of CPU is throughput lost. These CPU figures come from",
        "the throughput rounds and move with the machine's drift; the profiles below split",
        "the CPU by code, which moves much less.",
        "",
    ] + engine_call_section(held) + profile_section(A, B0, B, bound) + [
        "How much cold caches cost one decision (encoding and the cgo call, as the handler",
        "makes them), measured in process by `BenchmarkDecideEvicted`, which writes over twice",
        "the L2 cache, or twice the L3 cache, before each decision and times the decision alone:",
        "",
        "| caches | example policy µs | one-rule policy µs |",
        "| --- | --- | --- |",
    ] + [f"| {lvl} | {evicted.get(lvl + '/example', float('nan')) / 1000:.1f} | "
         f"{evicted.get(lvl + '/one-rule', float('nan')) / 1000:.1f} |"
         for lvl in ("hot", "L2-evicted", "L3-evicted")] + [
        "",
    ] + footprint_section(touched, line_budget(A, B, B0, touched)) + [
        "## Cold path (B with a static JWKS, one request at a time)",
        "",
        "| requests | p50 µs | p99 µs |",
        "| --- | --- | --- |",
        f"| 3,000 each with a token never seen (ES256 signature verified) | {cold['p50_us']:.0f} | {cold['p99_us']:.0f} |",
        f"| 3,000 with the same token (verified once, cached) | {warm['p50_us']:.0f} | {warm['p99_us']:.0f} |",
        f"| 2,000 each on a new connection with a certificate never seen | {cold_cert['p50_us']:.0f} | "
        f"{cold_cert['p99_us']:.0f} |",
        f"| 2,000 each on a new connection with the same certificate (parsed once, cached) | "
        f"{warm_cert['p50_us']:.0f} | {warm_cert['p99_us']:.0f} |",
        "",
        f"A new token costs about {cold['p50_us'] - warm['p50_us']:.0f} µs at p50 over a cached one. "
        + (f"A new client certificate costs about {cold_cert['p50_us'] - warm_cert['p50_us']:.0f} µs over a known "
           "one on an equally new connection"
           if cold_cert["p50_us"] > warm_cert["p50_us"] else
           "A new client certificate costs nothing measurable end to end in this run (p50 "
           f"{cold_cert['p50_us']:.0f} against {warm_cert['p50_us']:.0f} µs for a known one): each request's full "
           "TLS handshake dominates and varies more than the parse"),
        f"(both pay the full TLS handshake; the certificate rows' statuses: {statuses(cold_cert)} / "
        f"{statuses(warm_cert)}). The engine's part alone is in the criterion numbers below "
        "(`cold_certificate`, `cold_token_rs256`).",
        "",
        "## Scale: identities against the real limits (20-request bursts, 2/s each)",
        "",
        "| identities | requests | requests/s | p50 µs | p99 µs | statuses | Caddy RSS before → after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ids, x in scale.items():
        lines.append(f"| {ids:,} | {x['requests']:,} | {x['rps']:,.0f} | {x['p50_us']:.0f} | {x['p99_us']:.0f} | "
                     f"{statuses(x)} | {x['rss_before_mib']:.0f} → {x['rss_after_mib']:.0f} MiB |")
    lines += [
        "",
        "Each of 1,000 identities makes 40 requests: the faster the run, the less its bucket",
        "refills (2/s after the burst of 20), so some runs see 429s there and some do not.",
        "With 100,000 identities every request brings a token outside the token cache (4,096),",
        "so each is verified (ES256 through jsonwebtoken's aws-lc-rs backend: the cold-path cost above); the",
        "bucket tables stay bounded (`max_keys`, swept as they go).",
        "",
        "## Below HTTP",
        "",
        "criterion (`cargo bench -p zt-policy-core --bench decision`), one decision, mean:",
        "",
        "| case | µs |",
        "| --- | --- |",
    ] + [f"| {k} | {v:.2f} |" for k, v in criterion.items()] + [
        "",
        "Go, across cgo and the whole handler in process",
        "(`cd go-module && go test -run X -bench 'DecideFlat$|Cgo|ServeHTTP(Example|Trivial)' -benchtime 200000x`,",
        "then `-bench ServeHTTPBody -benchtime 3s` and `-bench DecideEvicted -benchtime 500x`):",
        "",
        "```",
        *gobench,
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
