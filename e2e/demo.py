"""`make demo`: the reference stack on loopback — the custom Caddy with zt_policy behind
oauth2-proxy's forward_auth, the OIDC provider, the nginx mTLS sidecar and the
OpenAI-compatible upstream — with the example policy, and curl commands that show an
allow, a deny, a 429 and a service token. Ctrl-C stops everything.

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
from stack import ROOT, Stack, die_with_parent  # noqa: E402

CHAT = "/v1/chat/completions"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true", help="run the commands, check the statuses, stop")
    p.add_argument("--caddy", default=str(ROOT / "build" / "caddy"))
    a = p.parse_args()
    # Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop the stack: each raises here, wherever
    # the demo is (starting, or waiting), and `finally` stops every process. If whoever
    # started the demo (make) dies, the demo gets SIGTERM too.
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop_on_signal)
    die_with_parent()
    work = ROOT / "build" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    s = Stack(work, Path(a.caddy), oauth2_proxy=True)
    try:
        s.start()
        msgs = [{"role": "user", "content": "hello"}]
        tokens = f"{s.token_command('TOKEN', 'batch-svc')}; {s.token_command('TOKEN2', 'report-svc')}"
        allow = s.curl("alice", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "max_tokens": 16, "messages": msgs},
                       token_var="TOKEN")
        stream = s.curl("alice", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "stream": True, "messages": msgs},
                        token_var="TOKEN").replace("curl -sS", "curl -sSN")
        deny = s.curl("alice", "POST", CHAT, {"model": "gpt-4o", "max_tokens": 16}, token_var="TOKEN")
        metrics = s.curl("alice", "GET", "/metrics", token_var="TOKEN")
        one = s.curl("alice", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "max_tokens": 1}, token_var="TOKEN2") \
            .replace("curl -sS", "curl -sS -o /dev/null -w '%{http_code} '")
        burst = f"for i in $(seq 25); do {one}; done; echo"
        nocert = s.curl(None, "GET", "/v1/models")
        notoken = s.curl("alice", "GET", "/v1/models")
        svc = s.curl("carol", "POST", CHAT, {"model": "llama-3.1-8b-instruct", "max_tokens": 16, "messages": msgs},
                     token_var="TOKEN")
        print(f"""
zt_policy demo: Caddy https://ai.example.internal:{s.ports['caddy']} (client certificates required)
  [forward_auth -> oauth2-proxy 127.0.0.1:{s.ports['o2p']}] [zt_policy]
  -> nginx mTLS sidecar 127.0.0.1:{s.ports['nginx']} -> OpenAI-compatible upstream 127.0.0.1:{s.ports['upstream']}
OIDC provider: {s.issuer}   policy: {s.policy}
logs: {work}/caddy-json.log, {work}/access.log, {work}/oauth2-proxy.log

first, service tokens from the IdP (client-credentials grant) into $TOKEN (batch-svc, group
ml-users) and $TOKEN2 (report-svc); every API call needs an OIDC session or a token:
  {tokens}

allowed (alice's ml-users device, batch-svc's token):
  {allow}
streamed:
  {stream}
denied, 403 naming the rule (a model that is not served):
  {deny}
denied, 403 (only sre may read /metrics):
  {metrics}
rate limited: the 21st request in a burst (one identity: report-svc) gets 429 with
Retry-After and RateLimit headers:
  {burst}
no client certificate: refused in the TLS handshake:
  {nocert}
no session and no token: oauth2-proxy refuses (401):
  {notoken}
carol's intern device may chat because the token's groups say ml-users (zt_policy verifies
the token itself against the IdP's JWKS):
  {svc}
a person logs in through oauth2-proxy at https://ai.example.internal:{s.ports['caddy']}/oauth2/start
  (in a browser holding a device certificate from {s.pki.path('ca.pem')})
""", flush=True)
        if a.check:
            return check(s, *(f"{tokens}; {c}" for c in (allow, deny, burst, svc)), nocert)
        print("Ctrl-C (or SIGTERM, SIGHUP) stops the demo.", flush=True)
        while True:
            signal.pause()
    except Stopped as e:
        print(f"\n{signal.Signals(e.signum).name}: stopping the demo's processes", flush=True)
        return 0
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stop short
        s.stop()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    def __init__(self, signum):
        self.signum = signum


def stop_on_signal(signum, _frame):
    raise Stopped(signum)


def sh(cmd):
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)


def check(s, allow, deny, burst, svc, nocert):
    r = sh(allow)
    assert r.returncode == 0 and json.loads(r.stdout)["choices"][0]["message"]["content"], r
    r = sh(deny)
    assert json.loads(r.stdout)["error"]["rule"] == "model-allowed", r.stdout
    codes = sh(burst).stdout.split()
    assert codes[:20] == ["200"] * 20 and "429" in codes, codes
    r = sh(nocert)
    assert r.returncode != 0 and r.stdout == "", r
    r = sh(svc)
    assert json.loads(r.stdout)["choices"][0]["message"]["content"], r
    print("demo check: allow 200, deny 403 (model-allowed), burst " + " ".join(codes)
          + ", no certificate refused, service token 200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
