"""The reference stack on loopback, without Docker: the custom Caddy (client_auth
require_and_verify + zt_policy + reverse_proxy over mTLS), Debian's nginx as the mTLS
sidecar, and the OpenAI-compatible upstream. Used by the end-to-end tests and by
`make demo`. Certificates are made here with openssl; nothing is shared with the host.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = ROOT / "examples" / "policy"
HOST = "ai.example.internal"


# Every identity header oauth2-proxy can set (v7.15: set_xauthrequest, pass_user_headers,
# pass_access_token, GAP-Auth), and X-Real-Ip: a client-sent copy of any of them must
# never reach vLLM, so zt_policy strips them all (forward_auth strips only what it copies).
OAUTH2_PROXY_HEADERS = (
    "X-Auth-Request-User X-Auth-Request-Email X-Auth-Request-Preferred-Username X-Auth-Request-Groups "
    "X-Auth-Request-Access-Token X-Forwarded-User X-Forwarded-Email X-Forwarded-Preferred-Username "
    "X-Forwarded-Groups X-Forwarded-Access-Token GAP-Auth X-Real-Ip").split()


def die_with_parent(sig=signal.SIGTERM):
    """Linux's parent-death signal: the calling process gets `sig` when its parent
    exits, however it exits (even SIGKILL), so nothing the stack started outlives it."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class Resp:
    """The least of a Redis client: RESP2 commands over one socket."""

    def __init__(self, port, tls=None, auth=None):
        """tls: an SSLContext; auth: (user, password)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.buf = self.sock.makefile("rb")
        if auth:
            self("AUTH", *auth)

    def __call__(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self.buf.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


class RedisServer:
    """Debian's redis-server (or valkey-server) on loopback, started and stopped by PID.
    With `tls` ((cert, key, ca) files) it listens for TLS only; with `user` ((name,
    password, [ACL rules])) that user is the store's and the default user is off (the
    tests talk to it as an admin user of their own)."""

    ADMIN = ("test-admin", "test-admin-pw")

    def __init__(self, work: Path, port=None, tls=None, user=None):
        self.work, self.port, self.proc, self.tls, self.user = work, port or free_port(), None, tls, user
        work.mkdir(parents=True, exist_ok=True)

    def start(self):
        server = shutil.which("redis-server") or shutil.which("valkey-server")
        if not server:
            raise RuntimeError("redis-server is missing: scripts/install-deps.sh installs it")
        listen = ["--port", str(self.port)]
        if self.tls:
            cert, key, _ = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                      "--tls-auth-clients", "no"]
        users = []
        if self.user:
            name, password, rules = self.user
            users = ["--user", "default", "off", "--user", name, "on", f">{password}", *rules,
                     "--user", self.ADMIN[0], "on", f">{self.ADMIN[1]}", "~*", "&*", "+@all"]
        self.proc = subprocess.Popen(
            [server, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work), *users], stdout=open(self.work / "redis.log", "ab"), stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent)
        deadline = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                # Not ours to talk to, whatever listens there: the port was taken.
                log = (self.work / "redis.log").read_text()[-500:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                self.client()("PING")
                return self
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def client(self):
        tls = None
        if self.tls:
            tls = ssl.create_default_context(cafile=self.tls[2])
        return Resp(self.port, tls=tls, auth=self.ADMIN if self.user else None)

    def url(self):
        scheme = "rediss" if self.tls else "redis"
        creds = f"{self.user[0]}:{self.user[1]}@" if self.user else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}/0"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Pki:
    """The device CA of the example policy, an unrelated CA, the mesh CA of the hop to
    the sidecar, and the certificates of each party: Caddy's edge server, the callers,
    the sidecar's server, and Caddy's client certificate for the sidecar."""

    def __init__(self, d: Path):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self._ca("ca", "/O=Example Corp/CN=zt-policy Example Device CA")
        self._ca("other-ca", "/O=Example Corp/CN=Untrusted CA")
        # The hop to the sidecar has a CA of its own: were nginx to trust the device CA,
        # any device could skip Caddy and call the sidecar directly.
        self._ca("mesh-ca", "/O=Example Corp/CN=Example Internal Mesh CA")
        self._leaf("caddy", "/CN=" + HOST, f"DNS:{HOST},DNS:localhost,IP:127.0.0.1", "serverAuth", "ca")
        self._leaf("idp", "/CN=idp", "DNS:localhost,IP:127.0.0.1", "serverAuth", "mesh-ca")
        self._leaf("sidecar", "/CN=vllm-mtls", "DNS:vllm-mtls,IP:127.0.0.1", "serverAuth", "mesh-ca")
        self._leaf("caddy-upstream", "/O=Example Corp/CN=caddy-upstream", "DNS:caddy-upstream", "clientAuth", "mesh-ca")
        self.client("alice", "ml-users", "alice@example.com")
        self.client("bob", "sre", "bob@example.com")
        self.client("carol", "interns", "carol@example.com")
        self.client("burst", "ml-users", "burst@example.com")
        self.client("mallory", "ml-users", "alice@example.com", ca="other-ca")

    def path(self, name):
        return str(self.d / name)

    def _run(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def _ca(self, name, subject):
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-days", "30", "-subj", subject, "-keyout", self.path(f"{name}.key"),
                  "-out", self.path(f"{name}.pem"), "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _leaf(self, name, subject, san, eku, ca):
        ext = self.d / f"{name}.ext"
        ext.write_text(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage={eku}\nsubjectAltName={san}\n")
        self._run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-subj", subject, "-keyout", self.path(f"{name}.key"), "-out", self.path(f"{name}.csr"))
        self._run("x509", "-req", "-in", self.path(f"{name}.csr"), "-CA", self.path(f"{ca}.pem"),
                  "-CAkey", self.path(f"{ca}.key"), "-CAcreateserial", "-days", "30",
                  "-extfile", str(ext), "-out", self.path(f"{name}.pem"))

    def client(self, name, ou, email, ca="ca"):
        self._leaf(name, f"/O=Example Corp/OU={ou}/CN={name}", f"email:{email}", "clientAuth", ca)


class Response:
    def __init__(self, status, headers, body, raw_headers=()):
        self.status, self.headers, self.body = status, headers, body
        self.raw_headers = list(raw_headers)

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())


IDP_CLIENT_SECRET = "local-ai-client-secret"
SERVICES = {"batch-svc": {"secret": "batch-secret", "groups": ["ml-users"]},
            "report-svc": {"secret": "report-secret", "groups": ["reporting"]}}


def tool(name):
    for p in (shutil.which(name), str(Path.home() / "go" / "bin" / name)):
        if p and Path(p).exists():
            return p
    raise RuntimeError(f"{name} is not installed (scripts/install-deps.sh installs it)")


class Stack:
    """oidc: also run the test IdP and verify bearer tokens from it in zt_policy;
    oauth2_proxy: also run oauth2-proxy behind Caddy's forward_auth, as the article does."""

    def __init__(self, work: Path, caddy_bin: Path, policy_dir: Path = EXAMPLE_POLICY, verbose=False,
                 oidc=False, oauth2_proxy=False):
        self.work = work
        self.caddy_bin = Path(caddy_bin)
        self.verbose = verbose
        self.oidc = oidc or oauth2_proxy
        self.oauth2_proxy = oauth2_proxy
        self.procs = {}
        work.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(work / "pki")
        shutil.copytree(policy_dir, work / "policy", dirs_exist_ok=True)
        self.policy = work / "policy" / "policy.toml"
        self.ports = {k: free_port() for k in ("caddy", "admin", "nginx", "upstream", "control", "idp", "o2p")}
        self.issuer = f"https://127.0.0.1:{self.ports['idp']}/oidc"
        self.upstream_log = work / "upstream-requests.jsonl"
        # reverse_proxy's response_header_timeout (the example's; tests of a slow
        # upstream set a short one and reload).
        self.response_header_timeout = "300s"

    # ---- processes ----

    def _spawn(self, name, args, **kw):
        log = open(self.work / f"{name}.log", "ab")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=die_with_parent, **kw)
        self.procs[name] = p
        return p

    def start(self):
        self.start_upstream()
        self.start_nginx()
        if self.oidc:
            self.start_idp()
        if self.oauth2_proxy:
            self.start_oauth2_proxy()
        self.start_caddy()
        return self

    def start_idp(self):
        idp_bin = ROOT / "build" / "test-idp"
        p = self._spawn("idp", [str(idp_bin), "--addr", f"127.0.0.1:{self.ports['idp']}",
                                "--cert", self.pki.path("idp.pem"), "--key", self.pki.path("idp.key"),
                                "--client-id", "local-ai", "--client-secret", IDP_CLIENT_SECRET,
                                "--services", json.dumps(SERVICES)])
        wait_port(self.ports["idp"], p, "test IdP")

    def start_oauth2_proxy(self):
        cookie_secret = "0123456789abcdef0123456789abcdef"
        p = self._spawn("oauth2-proxy", [
            tool("oauth2-proxy"),
            f"--http-address=127.0.0.1:{self.ports['o2p']}",
            "--provider=oidc", f"--oidc-issuer-url={self.issuer}",
            f"--provider-ca-file={self.pki.path('mesh-ca.pem')}",
            "--client-id=local-ai", f"--client-secret={IDP_CLIENT_SECRET}",
            f"--cookie-secret={cookie_secret}", "--cookie-secure=true", "--cookie-samesite=lax",
            "--email-domain=*", "--upstream=static://200", "--reverse-proxy=true",
            "--set-xauthrequest=true", "--set-authorization-header=true", "--pass-access-token=false",
            f"--redirect-url=https://{HOST}:{self.ports['caddy']}/oauth2/callback",
            f"--whitelist-domain={HOST}:{self.ports['caddy']}",
            "--skip-jwt-bearer-tokens=true", "--skip-provider-button=true",
            "--code-challenge-method=S256", "--scope=openid email profile groups",
        ])
        wait_port(self.ports["o2p"], p, "oauth2-proxy")

    def idp_control(self, what, body=None):
        ctx = ssl.create_default_context(cafile=self.pki.path("mesh-ca.pem"))
        req = urllib.request.Request(f"https://127.0.0.1:{self.ports['idp']}/control/{what}", method="POST",
                                     data=json.dumps(body or {}).encode())
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.read()

    def service_token(self, client="batch-svc", cert=None):
        """A token from the client-credentials grant; over mTLS with `cert`, bound to it."""
        ctx = ssl.create_default_context(cafile=self.pki.path("mesh-ca.pem"))
        if cert:
            ctx.load_cert_chain(self.pki.path(f"{cert}.pem"), self.pki.path(f"{cert}.key"))
        data = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client,
                                       "client_secret": SERVICES[client]["secret"]}).encode()
        req = urllib.request.Request(f"{self.issuer}/token", data=data, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return json.loads(r.read())["access_token"]

    def start_upstream(self):
        p = self._spawn("upstream", [sys.executable, str(ROOT / "e2e" / "upstream.py"),
                                     "--port", str(self.ports["upstream"]),
                                     "--control-port", str(self.ports["control"]),
                                     "--log", str(self.upstream_log)])
        wait_port(self.ports["upstream"], p, "upstream")

    def nginx_conf(self):
        """examples/nginx.conf with this stack's paths and ports."""
        tmp = self.work / "nginx"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / sub, 0o777)
        text = (ROOT / "examples" / "nginx.conf").read_text()
        text = (text.replace("listen 8443 ssl;", f"listen 127.0.0.1:{self.ports['nginx']} ssl;")
                .replace("/etc/nginx/pki/server.crt", self.pki.path("sidecar.pem"))
                .replace("/etc/nginx/pki/server.key", self.pki.path("sidecar.key"))
                .replace("/etc/nginx/pki/mesh_ca.crt", self.pki.path("mesh-ca.pem"))
                .replace("http://127.0.0.1:8000", f"http://127.0.0.1:{self.ports['upstream']}")
                .replace("events {}", "events {}\npid %s;\nerror_log %s info;%s" % (
                    tmp / "nginx.pid", tmp / "error.log",
                    # As root, workers would run as nobody, who cannot reach the test's
                    # private temp folders for request bodies.
                    "\nuser root root;" if os.geteuid() == 0 else ""))
                .replace("http {", "http {\n  access_log %s;\n  client_body_temp_path %s;\n  proxy_temp_path %s;\n"
                         "  fastcgi_temp_path %s;\n  uwsgi_temp_path %s;\n  scgi_temp_path %s;"
                         % (tmp / "access.log", tmp / "client_body", tmp / "proxy", tmp / "fastcgi",
                            tmp / "uwsgi", tmp / "scgi"), 1))
        conf = tmp / "nginx.conf"
        conf.write_text(text)
        return conf

    def start_nginx(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.nginx_conf()
        p = self._spawn("nginx", [nginx, "-p", str(self.work / "nginx"), "-c", str(conf), "-g", "daemon off;"])
        wait_port(self.ports["nginx"], p, "nginx")

    def caddyfile(self, policy=None, extra_site="", log_to_file=True, zt_extra="", replica=None):
        """replica: (its name, its port, its admin port) for another Caddy of the stack."""
        name, port, admin = replica or ("caddy", self.ports["caddy"], self.ports["admin"])
        log = f"""
	log {{
		output file {self.work / f'{name}-json.log'}
		format json
	}}""" if log_to_file else ""
        return f"""{{
	admin 127.0.0.1:{admin}
	storage file_system {self.work / 'caddy-data'}
	auto_https disable_redirects
	skip_install_trust
	servers {{
		protocols h1 h2
	}}{log}
}}

https://{HOST}:{port}, https://localhost:{port} {{
	bind 127.0.0.1
	tls {self.pki.path('caddy.pem')} {self.pki.path('caddy.key')} {{
		client_auth {{
			mode require_and_verify
			trust_pool file {self.pki.path('ca.pem')}
		}}
	}}
	log {{
		output file {self.work / (f'{name}-access.log' if replica else 'access.log')}
		format json
	}}
	{extra_site}{self._oauth2_routes()}
	@openai_api path /v1/* /metrics
	handle @openai_api {{{self._forward_auth()}
		zt_policy {{
			policy_file {policy or self.policy}
			strip_headers {' '.join(OAUTH2_PROXY_HEADERS)}{self._oidc_options()}{zt_extra}
		}}
		reverse_proxy https://127.0.0.1:{self.ports['nginx']} {{
			transport http {{
				dial_timeout 5s
				response_header_timeout {self.response_header_timeout}
				tls_server_name vllm-mtls
				tls_trust_pool file {self.pki.path('mesh-ca.pem')}
				tls_client_auth {self.pki.path('caddy-upstream.pem')} {self.pki.path('caddy-upstream.key')}
			}}
		}}
	}}
	respond 404
	handle_errors 502 503 {{
		header Content-Type application/json
		respond `{{"error":{{"message":"the model server is unavailable","type":"server_error","code":"upstream_unavailable","param":null}}}}` 502
	}}
	handle_errors 504 {{
		header Content-Type application/json
		respond `{{"error":{{"message":"the model server did not answer in time","type":"server_error","code":"upstream_timeout","param":null}}}}` 504
	}}
}}
"""

    def _oauth2_routes(self):
        if not self.oauth2_proxy:
            return ""
        return f"""
	handle /oauth2/* {{
		reverse_proxy 127.0.0.1:{self.ports['o2p']}
	}}"""

    def _forward_auth(self):
        if not self.oauth2_proxy:
            return ""
        return f"""
		# OIDC session or service token, checked by oauth2-proxy (the article's setup).
		forward_auth 127.0.0.1:{self.ports['o2p']} {{
			uri /oauth2/auth
			copy_headers X-Auth-Request-User X-Auth-Request-Email Authorization
		}}"""

    def _oidc_options(self):
        if not self.oidc:
            return ""
        return f"""
			issuer {self.issuer}
			audience local-ai
			idp_ca_file {self.pki.path('mesh-ca.pem')}
			jwks_refresh 1s
			jwks_min_interval 1s"""

    def write_caddyfile(self, **kw):
        name = kw["replica"][0] if kw.get("replica") else "caddy"
        path = self.work / ("Caddyfile" if name == "caddy" else f"Caddyfile.{name}")
        path.write_text(self.caddyfile(**kw))
        return path

    def start_caddy(self, **kw):
        path = self.write_caddyfile(**kw)
        name, port, _ = kw.get("replica") or ("caddy", self.ports["caddy"], None)
        env = dict(os.environ, HOME=str(self.work), XDG_DATA_HOME=str(self.work / "xdg"),
                   XDG_CONFIG_HOME=str(self.work / "xdg"))
        p = self._spawn(name, [str(self.caddy_bin), "run", "--config", str(path), "--adapter", "caddyfile"], env=env)
        wait_port(port, p, name)
        return p

    def reload(self, **kw):
        path = self.write_caddyfile(**kw)
        admin = kw["replica"][2] if kw.get("replica") else self.ports["admin"]
        subprocess.run([str(self.caddy_bin), "reload", "--config", str(path), "--adapter", "caddyfile",
                        "--address", f"127.0.0.1:{admin}", "--force"],
                       check=True, capture_output=True, timeout=60)

    def stop(self):
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def rss_kib(self, name):
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    # ---- clients ----

    def tls_context(self, cert=None, ca="ca", pki_ca=None):
        ctx = ssl.create_default_context(cafile=pki_ca or self.pki.path(f"{ca}.pem"))
        if cert:
            ctx.load_cert_chain(self.pki.path(f"{cert}.pem"), self.pki.path(f"{cert}.key"))
        return ctx

    def connection(self, cert=None, port=None, server_name=HOST, ca="ca"):
        """An HTTPS connection to Caddy (or another port) on loopback, with SNI."""
        ctx = self.tls_context(cert, ca)
        port = port or self.ports["caddy"]

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                self.sock = ctx.wrap_socket(sock, server_hostname=server_name)

        return Conn(server_name, port, context=ctx, timeout=30)

    def request(self, method, path, cert="alice", headers=None, body=None, port=None, server_name=HOST, ca="ca"):
        conn = self.connection(cert, port, server_name, ca)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            hdrs = {"Content-Type": "application/json"} if isinstance(body, (dict, list)) else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(), r.getheaders())
        finally:
            conn.close()

    def upstream_requests(self):
        if not self.upstream_log.exists():
            return []
        return [json.loads(line) for line in self.upstream_log.read_text().splitlines() if line]

    def token_command(self, var, client):
        """A shell line that gets a client-credentials token from the IdP into $var."""
        return (f"{var}=$(curl -sS --cacert {self.pki.path('mesh-ca.pem')} -d grant_type=client_credentials "
                f"-d client_id={client} -d client_secret={SERVICES[client]['secret']} {self.issuer}/token "
                f"| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")

    def release(self, key):
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.ports['control']}/release/{key}", method="POST"), timeout=10)

    def curl(self, cert, method, path, body=None, token_var=None):
        """The curl command a person would type to make this request."""
        parts = ["curl", "-sS", "--resolve", f"{HOST}:{self.ports['caddy']}:127.0.0.1",
                 "--cacert", self.pki.path("ca.pem")]
        if token_var:
            parts += ["-H", f'"Authorization: Bearer ${token_var}"']
        if cert:
            parts += ["--cert", self.pki.path(f"{cert}.pem"), "--key", self.pki.path(f"{cert}.key")]
        if method != "GET":
            parts += ["-X", method]
        if body is not None:
            parts += ["-H", "'Content-Type: application/json'", "-d", "'" + json.dumps(body) + "'"]
        parts.append(f"https://{HOST}:{self.ports['caddy']}{path}")
        return " ".join(parts)
