"""`make demo` works: the stack starts and its printed curl commands show an allow, a
deny naming the rule, a 429 after the burst, and a refused handshake."""

import subprocess
import sys

from stack import ROOT


def test_demo_commands_do_what_they_say(caddy_bin):
    r = subprocess.run([sys.executable, str(ROOT / "e2e" / "demo.py"), "--check", "--caddy", str(caddy_bin)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "demo check: allow 200, deny 403 (model-allowed)" in r.stdout
