"""`make demo` works: the stack starts and its printed curl commands show an allow, a
deny naming the rule, a 429 after the burst, and a refused handshake."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stack import ROOT


def test_demo_commands_do_what_they_say(caddy_bin):
    r = subprocess.run([sys.executable, str(ROOT / "e2e" / "demo.py"), "--check", "--caddy", str(caddy_bin)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "demo check: allow 200, deny 403 (model-allowed)" in r.stdout


def descendants(pid):
    """Every process below `pid`, found through /proc's parent links."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig,to", [
    (signal.SIGTERM, "make"),    # make forwards SIGTERM to the demo
    (signal.SIGHUP, "group"),    # a closed terminal: make and the demo both get it
    (signal.SIGTERM, "group"),
    (signal.SIGHUP, "demo"),
    (signal.SIGINT, "demo"),     # Ctrl-C
    (signal.SIGKILL, "demo"),    # no cleanup at all: the stack's own parent-death signal
])
def test_a_signal_stops_every_process_the_demo_started(caddy_bin, sig, to):
    # `-o demo-build`: the recipe `make demo` ends with, without rebuilding Caddy.
    make = subprocess.Popen(["make", "--no-print-directory", "-o", "demo-build", "demo",
                             f"DEMO_ARGS=--caddy {caddy_bin}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = []
    try:
        for line in make.stdout:
            out.append(line)
            if "stops the demo" in line:
                break
        else:
            pytest.fail("the demo did not start:\n" + "".join(out[-40:]))
        tree = descendants(make.pid)
        demo = next(p for p in tree if "demo.py" in Path(f"/proc/{p}/cmdline").read_text())
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in tree}
        assert {"caddy", "nginx", "oauth2-proxy", "test-idp"} <= names, names
        if to == "group":
            os.killpg(make.pid, sig)
        else:
            os.kill(make.pid if to == "make" else demo, sig)
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        left = [(p, Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:80])
                for p in tree if alive(p)]
        assert not left, f"still running after {signal.Signals(sig).name} to {to}: {left}"
    finally:
        for p in descendants(make.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        make.kill()
        make.wait()
