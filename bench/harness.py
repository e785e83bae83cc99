"""The benchmark's harness: the processes (upstream nginx, the IdP, oauth2-proxy, one
Caddy per setup), the policies they run, the load generator, and the small arithmetic
every phase shares. run.py drives it; measure.py and deep.py measure with it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))
from stack import HOST, Stack, free_port, wait_port  # noqa: E402

BUILD = ROOT / "build"
CHAT_BODY = json.dumps({"model": "llama-3.1-8b-instruct", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "Summarise zero trust in one line."}]})
UPSTREAM_REPLY = json.dumps({"id": "cmpl-bench", "object": "chat.completion", "created": 0,
                             "model": "llama-3.1-8b-instruct", "choices": [{"index": 0, "message": {
                                 "role": "assistant", "content": "Verify every hop."}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


def _stream_reply():
    """A streamed chat completion as vLLM writes it: eight content chunks, the
    usage-only chunk (include_usage), [DONE]."""
    events = []
    for w in ["Verify", " every", " hop", ",", " every", " time", ",", " always."]:
        events.append({"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 0,
                       "model": "llama-3.1-8b-instruct",
                       "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
    events.append({"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 0,
                   "model": "llama-3.1-8b-instruct", "choices": [],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


# The upstream answers requests carrying `X-Bench-Stream: 1` with this stream.
UPSTREAM_STREAM = _stream_reply()


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
      if ($http_x_bench_stream) {{
        rewrite ^ /__stream last;
      }}
      default_type application/json;
      return 200 '{UPSTREAM_REPLY}';
    }}
    location = /__stream {{
      default_type text/event-stream;
      # A filter that may change the length makes nginx send the stream chunked,
      # without Content-Length, as vLLM sends its streams.
      sub_filter_types text/event-stream;
      sub_filter '[DONE]' '[DONE]';
      return 200 '{UPSTREAM_STREAM}';
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

    def setup_body(self, name, policy=None, zt_extra=""):
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
		strip_headers X-Auth-Request-User X-Auth-Request-Email{extra}{zt_extra}
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

    def start_caddy(self, name, policy=None, cpus=None, binary=None, tag=None, zt_extra=""):
        """Setup `name` on `binary` (our build by default), logged as `tag`; `zt_extra`:
        more lines for its zt_policy block."""
        tag = tag or name
        port, admin = free_port(), free_port()
        cf = self.work / f"Caddyfile.{tag}"
        cf.write_text(self.caddyfile(port, admin, self.setup_body(name, policy, zt_extra)))
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
                         ("max = 4\n", "max = 1000000\n"),
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


def closed_loop_rounds(b, setups, extra, rounds, tag, also=None):
    """Warm-up, then interleaved closed-loop rounds of every setup ({name: (process,
    port)}) with the load generator's `extra` arguments: {name: [result + Caddy's
    cpu_s]}. `also(port)` runs after each round (an open-loop run), its results in
    {name: [...]} as the second value."""
    for _, port in setups.values():
        b.load(port, *extra, seconds=1)  # warm-up: connections, caches, buffers
    out = {name: [] for name in setups}
    extra_runs = {name: [] for name in setups}
    for i, name in interleaved(list(setups), rounds):
        p, port = setups[name]
        c0 = cpu_seconds(p.pid)
        r = b.load(port, *extra)
        r["cpu_s"] = cpu_seconds(p.pid) - c0
        out[name].append(r)
        if also:
            extra_runs[name].append(also(port))
        print(tag, name, i, json.dumps({k: r[k] for k in ("rps", "p50_us", "cpu_s")}), flush=True)
    return out, extra_runs


def cpu_us_per_request(runs):
    return sum(r["cpu_s"] for r in runs) * 1e6 / max(1, sum(r["requests"] for r in runs))


def merged_statuses(runs):
    statuses = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return statuses


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
