"""The deployable examples say what the README says: the hardened compose file, the
Caddy image on glibc, and the PKI script's separation of the device and mesh CAs."""

import subprocess
from pathlib import Path

import yaml

from stack import ROOT

EX = ROOT / "examples"


def compose():
    return yaml.safe_load((EX / "docker-compose.yml").read_text())


def test_compose_is_hardened_and_only_caddy_is_published():
    c = compose()
    services = c["services"]
    assert set(services) == {"caddy", "oauth2-proxy", "vllm", "vllm-mtls", "valkey"}
    for name, svc in services.items():
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["cap_drop"] == ["ALL"], name
        if name != "vllm":  # the model cache must be writable; vLLM shares the sidecar's namespace
            assert svc["read_only"] is True, name
    published = [n for n, s in services.items() if s.get("ports")]
    assert published == ["caddy"]
    assert c["networks"]["internal"]["internal"] is True
    assert services["vllm"]["network_mode"] == "service:vllm-mtls"
    assert "--host 127.0.0.1" in services["vllm"]["command"]
    assert set(services["caddy"]["networks"]) == {"public", "internal"}
    for name in ("oauth2-proxy", "vllm-mtls", "valkey"):
        assert services[name]["networks"] == ["internal"], name
    # The limits store: TLS only, no default user, no persistence, a bounded memory.
    cmd = services["valkey"]["command"]
    assert cmd[cmd.index("--port") + 1] == "0" and "--tls-port" in cmd
    assert cmd[cmd.index("--tls-auth-clients") + 1] == "no"
    assert cmd[cmd.index("--save") + 1] == "" and cmd[cmd.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in cmd and services["valkey"]["tmpfs"] == ["/data"]
    image = services["oauth2-proxy"]["image"]
    assert image.rsplit(":v", 1)[1] >= "7.15", image


def test_compose_mounts_files_that_exist():
    subprocess.run([str(EX / "pki" / "make-pki.sh")], check=True, capture_output=True)
    for svc in compose()["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("./"):
                assert (EX / src).exists(), src


def test_pki_keeps_devices_off_the_sidecar():
    subprocess.run([str(EX / "pki" / "make-pki.sh")], check=True, capture_output=True)
    out = EX / "pki" / "out"

    def verifies(ca, cert):
        return subprocess.run(["openssl", "verify", "-CAfile", str(out / ca), str(out / cert)],
                              capture_output=True).returncode == 0

    assert verifies("root_ca.crt", "caddy.crt") and verifies("root_ca.crt", "client-devops.crt")
    assert verifies("mesh_ca.crt", "vllm_server.crt") and verifies("mesh_ca.crt", "caddy_upstream_client.crt")
    assert verifies("mesh_ca.crt", "valkey_server.crt")
    # nginx trusts only the mesh CA: a device certificate does not verify there.
    assert not verifies("mesh_ca.crt", "client-devops.crt")
    assert "mesh_ca.crt" in (EX / "nginx.conf").read_text()


def test_caddy_image_is_glibc_and_not_root():
    text = (EX / "Dockerfile").read_text()
    assert "bookworm" in text and "alpine" not in text and "musl" not in text
    assert "USER 65532" in text
    assert "xcaddy/build.sh" in text


def test_the_example_caddyfile_strips_every_header_oauth2_proxy_can_set():
    from stack import OAUTH2_PROXY_HEADERS
    stripped = set()
    for line in (EX / "Caddyfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["strip_headers"]:
            stripped |= {w.lower() for w in words[1:]}
    missing = {h for h in OAUTH2_PROXY_HEADERS if h.lower() not in stripped}
    assert not missing, missing


def valkey_acl():
    """The ACL rules of the compose file's limits-store user `zt` (after its password)."""
    cmd = compose()["services"]["valkey"]["command"]
    users = [i for i, c in enumerate(cmd) if c == "--user"]
    assert cmd[users[0] + 1:users[0] + 3] == ["default", "off"], cmd
    at = users[1]
    assert cmd[at + 1:at + 4] == ["zt", "on", ">${VALKEY_PASSWORD:?set it}"], cmd[at:at + 4]
    rules = []
    for word in cmd[at + 4:]:
        if word.startswith("--"):
            break
        rules.append(word)
    assert "~ztp:*" in rules and "-@all" in rules, rules
    return rules
