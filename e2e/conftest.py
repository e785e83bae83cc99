import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import ROOT, Stack  # noqa: E402

CADDY = Path(os.environ.get("ZTP_CADDY", ROOT / "build" / "caddy"))


@pytest.fixture(scope="session")
def caddy_bin():
    if not CADDY.exists():
        pytest.fail(f"{CADDY} is missing: build it with xcaddy/build.sh (make test does)")
    return CADDY


def _stack(tmp_path_factory, caddy_bin, name):
    return _stack_with(tmp_path_factory, caddy_bin, name)


def _stack_with(tmp_path_factory, caddy_bin, name, **kw):
    s = Stack(tmp_path_factory.mktemp(name), caddy_bin, **kw)
    try:
        s.start()
    except Exception:
        s.stop()
        for log in ("caddy.log", "nginx.log", "upstream.log", "idp.log", "oauth2-proxy.log"):
            p = s.work / log
            if p.exists():
                print(f"--- {log}\n{p.read_text()[-3000:]}")
        raise
    return s


@pytest.fixture(scope="module")
def stack(tmp_path_factory, caddy_bin):
    s = _stack(tmp_path_factory, caddy_bin, "stack")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def ostack(tmp_path_factory, caddy_bin):
    """The stack with the test IdP: zt_policy verifies its tokens."""
    s = _stack_with(tmp_path_factory, caddy_bin, "oidc", oidc=True)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def pstack(tmp_path_factory, caddy_bin):
    """The stack with the test IdP and oauth2-proxy behind forward_auth."""
    s = _stack_with(tmp_path_factory, caddy_bin, "oauth2proxy", oauth2_proxy=True)
    yield s
    s.stop()
