"""`make demo`: the reference stack on loopback — the custom Caddy with zt_policy, the
nginx mTLS sidecar and the OpenAI-compatible upstream — with the example policy, and
curl commands that show an allow, a deny and a 429. Ctrl-C stops everything.

    python3 e2e/demo.py [--check]   # --check runs the commands, verifies them, exits
"""

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import ROOT, Stack  # noqa: E402

CHAT = "/v1/chat/completions"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true", help="run the commands, check the statuses, stop")
    p.add_argument("--caddy", default=str(ROOT / "build" / "caddy"))
    a = p.parse_args()
    work = ROOT / "build" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    s = Stack(work, Path(a.caddy))
    try:
        s.start()
        allow = s.curl("alice", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "max_tokens": 16,
                                                "messages": [{"role": "user", "content": "hello"}]})
        stream = s.curl("alice", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "stream": True,
                                                 "messages": [{"role": "user", "content": "hello"}]}) \
            .replace("curl -sS", "curl -sSN")
        deny = s.curl("alice", "POST", CHAT, {"model": "gpt-4o", "max_tokens": 16})
        metrics = s.curl("alice", "GET", "/metrics")
        one = s.curl("burst", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "max_tokens": 1}) \
            .replace("curl -sS", "curl -sS -o /dev/null -w '%{http_code} '")
        burst = f"for i in $(seq 25); do {one}; done; echo"
        nocert = s.curl(None, "GET", "/v1/models")
        print(f"""
zt_policy demo: Caddy https://ai.example.internal:{s.ports['caddy']} (client certificates required)
  -> nginx mTLS sidecar 127.0.0.1:{s.ports['nginx']} -> OpenAI-compatible upstream 127.0.0.1:{s.ports['upstream']}
policy: {s.policy}   logs: {work}/caddy-json.log, {work}/access.log

allowed (alice, an ml-users device):
  {allow}
streamed:
  {stream}
denied, 403 naming the rule (a model that is not served):
  {deny}
denied, 403 (only sre may read /metrics):
  {metrics}
rate limited: the 21st request in a burst gets 429 with Retry-After and RateLimit headers:
  {burst}
no client certificate: refused in the TLS handshake:
  {nocert}
""", flush=True)
        if a.check:
            return check(s, allow, deny, burst, nocert)
        print("Ctrl-C stops the demo.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        s.stop()


def sh(cmd):
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)


def check(s, allow, deny, burst, nocert):
    r = sh(allow)
    assert r.returncode == 0 and json.loads(r.stdout)["choices"][0]["message"]["content"], r
    r = sh(deny)
    assert json.loads(r.stdout)["error"]["rule"] == "model-allowed", r.stdout
    codes = sh(burst).stdout.split()
    assert codes[:20] == ["200"] * 20 and "429" in codes, codes
    r = sh(nocert)
    assert r.returncode != 0 and r.stdout == "", r
    print("demo check: allow 200, deny 403 (model-allowed), burst " + " ".join(codes) + ", no certificate refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
