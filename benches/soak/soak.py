#!/usr/bin/env python3
"""Soak and chaos: two stsgate instances sharing a real Redis, for SOAK_SECONDS.

Started by benches/soak/run.sh (which installs what this needs and builds the
binary). Everything runs on loopback:

  * an STS that checks passwords like ADFS (`soak.py sts`, a process of its
    own): the right password of USER is right(USER); every answer it gives
    carries `X-Soak-Sts: 1`, so the driver tells a forwarded answer from the
    gate's refusal (both are SOAP faults, on purpose);
  * a webhook receiver for alerts (`soak.py webhook`, a process of its own so
    that it can be killed): it checks the HMAC signature, appends each alert
    to a file, then answers 200;
  * redis-server (appendonly, so a restart keeps the state);
  * gates A and B (`stsgate run`), TLS on both, sharing the rule file, the
    certificate files, the GeoIP database and Redis;
  * steady mixed traffic over HTTP/1.1 and HTTP/2 (python3-h2) over TLS,
    each request's expected outcome computed from the rules in force;
  * waves: password sprays, IP sprays and brute forces against one user (they
    raise lockout, compromise_suspected and spray alerts);
  * a chaos loop: rule pushes (good and broken), blocks added and removed
    through the API, SIGHUP, certificate swaps, GeoIP database swaps, Redis
    restarts, webhook receiver kills, and kill -9 of gate B with a restart.

At the end it prints the report and writes it as markdown (--report).
Exit status: 0 when every target is met, 1 when one is missed, 2 when the
run itself failed.
"""

import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PATH_2005 = "/adfs/services/trust/2005/usernamemixed"
TOKEN = "soak-admin-token-0123456789"
ALERT_KEY = b"soak-alert-signing-key-0123456789"
INF = float("inf")


def right(user):
    """The right password of `user` at the soak's STS."""
    return "Pw-" + hashlib.sha256(user.lower().encode()).hexdigest()[:12]


def envelope(user, password):
    esc = lambda s: (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                     .replace("'", "&apos;").replace('"', "&quot;"))
    return ('<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
            '<a:Action>http://schemas.xmlsoap.org/ws/2005/02/trust/RST/Issue</a:Action>'
            '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
            '<wsse:UsernameToken><wsse:Username>%s</wsse:Username><wsse:Password>%s</wsse:Password>'
            '</wsse:UsernameToken></wsse:Security></s:Header><s:Body>'
            '<t:RequestSecurityToken xmlns:t="http://schemas.xmlsoap.org/ws/2005/02/trust">'
            '<t:RequestType>http://schemas.xmlsoap.org/ws/2005/02/trust/Issue</t:RequestType>'
            '</t:RequestSecurityToken></s:Body></s:Envelope>' % (esc(user), esc(password))).encode()


# ---- the STS and the webhook receiver (processes of their own) -------------

USERNAME = re.compile(rb"<(?:[\w.-]+:)?Username(?:\s[^>]*)?>(.*?)</", re.S)
PASSWORD = re.compile(rb"<(?:[\w.-]+:)?Password(?:\s[^>]*)?>(.*?)</", re.S)


def unxml(b):
    return (b.decode().replace("&lt;", "<").replace("&gt;", ">").replace("&apos;", "'")
            .replace("&quot;", '"').replace("&amp;", "&"))


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass     # a connection reset by a gate killed with kill -9


def serve_sts(port):
    success = open(os.path.join(ROOT, "testdata/wstrust/rstr-2005-success.xml"), "rb").read()
    fault = open(os.path.join(ROOT, "testdata/wstrust/fault-failed-authentication.xml"), "rb").read()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            u, p = USERNAME.search(body), PASSWORD.search(body)
            ok = bool(u and p) and right(unxml(u.group(1))) == unxml(p.group(1))
            answer = success if ok else fault
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(answer)))
            self.send_header("X-Soak-Sts", "1")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    QuietServer(("127.0.0.1", port), Handler).serve_forever()


def serve_webhook(port, out):
    f = open(out, "ab", buffering=0)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            sig = self.headers.get("X-Stsgate-Signature", "")
            good = hmac.compare_digest(sig, "sha256=" + hmac.new(ALERT_KEY, body, hashlib.sha256).hexdigest())
            line = json.dumps({"t": time.time(), "signature_ok": good, "alert": json.loads(body)})
            with lock:
                f.write(line.encode() + b"\n")   # written before the answer
            self.send_response(200 if good else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    QuietServer(("127.0.0.1", port), Handler).serve_forever()


# ---- helpers -----------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all('%s="%s"' % (k, v) in head for k, v in labels.items()):
            total += float(value)
    return total


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(math.ceil(q * len(v))) - 1)]


def slope_per_hour(samples):
    """Least-squares slope of (t seconds, value) in value units per hour."""
    if len(samples) < 3:
        return float("nan")
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in samples) / den * 3600


class Timeline:
    """A value in force on one instance over time, with the windows in which
    a change was under way (written, not yet confirmed): a request that
    overlaps such a window may see either value."""

    def __init__(self, value):
        self.lock = threading.Lock()
        self.changes = []          # (written, confirmed or INF, new value)
        self.initial = value

    def change(self, written, new):
        with self.lock:
            self.changes.append([written, INF, new])
            return len(self.changes) - 1

    def confirm(self, i, t):
        with self.lock:
            self.changes[i][1] = t

    def set(self, t, new):
        """Known to be `new` from `t` on (a restart read the files)."""
        with self.lock:
            self.changes.append([t, t, new])

    def possible(self, t0, t1):
        with self.lock:
            cur, out = self.initial, set()
            for w, c, new in self.changes:
                if w > t1:
                    break
                if c < t0:
                    cur = new
                    continue
                out.add(cur)
                out.add(new)
                cur = new
            out.add(cur)
            return out

    def last(self):
        with self.lock:
            return self.changes[-1][2] if self.changes else self.initial


# ---- a gate process ------------------------------------------------------------

class Gate:
    def __init__(self, name, binary, work, ports, common):
        self.name, self.binary, self.work = name, binary, work
        self.port, self.admin = ports
        self.common = common
        self.dir = os.path.join(work, "gate-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.lifetime = 0
        self.instance = None
        self.started = None
        self.generation = 0        # bumped at each kill: connections of older ones are dropped
        self.up = threading.Event()

    def start(self):
        self.lifetime += 1
        self.instance = "soak-%s.%d" % (self.name, self.lifetime)
        c = self.common
        with open(os.path.join(self.dir, "stsgate.toml"), "w") as f:
            f.write(f"""rules = "../conf/rules.toml"
[listen]
addr = "127.0.0.1:{self.port}"
tls_cert = "../conf/tls/cert.pem"
tls_key = "../conf/tls/key.pem"
drain_timeout = "5s"
[upstream]
url = "http://127.0.0.1:{c['sts']}"
connect_timeout = "2s"
timeout = "10s"
[client_ip]
trusted_proxies = ["127.0.0.1"]
[admin]
addr = "127.0.0.1:{self.admin}"
token_file = "../conf/admin.token"
[state]
dir = "state"
redis_url = "redis://127.0.0.1:{c['redis']}/0"
instance = "{self.instance}"
[geoip]
country_db = "../conf/geo/country.mmdb"
[log]
format = "json"
[alerts]
webhook_url = "http://127.0.0.1:{c['webhook']}/hook"
signing_key_file = "../conf/alerts.key"
timeout = "2s"
""")
        self.stdout = open(os.path.join(self.dir, "decisions.%d.jsonl" % self.lifetime), "wb")
        self.logpath = os.path.join(self.dir, "gate.%d.log" % self.lifetime)
        self.stderr = open(self.logpath, "wb")
        self.proc = subprocess.Popen([self.binary, "run", "--config", os.path.join(self.dir, "stsgate.toml")],
                                     stdin=subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr,
                                     env=dict(os.environ, STSGATE_LOG="info"), cwd=self.dir)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gate %s exited at start: %s" % (self.name, open(self.logpath).read()[-2000:]))
            if "stsgate ready" in open(self.logpath, errors="replace").read():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("gate %s did not get ready" % self.name)
        self.started = time.time()
        self.up.set()

    def kill9(self):
        self.up.clear()
        self.generation += 1
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.stdout.close()
        self.stderr.close()

    def stop(self):
        self.up.clear()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdout.close()
        self.stderr.close()

    def api(self, method, path, body=None, timeout=5):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.admin, path), data=data, method=method,
                                     headers={"Authorization": "Bearer " + TOKEN,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, None

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin, timeout=5) as r:
            return r.read().decode()

    def explain(self, ip, user=None, headers=()):
        q = {"ip": ip, "peer": "127.0.0.1", "headers": list(headers)}
        if user:
            q["user"] = user
        return self.api("POST", "/api/v1/explain", q)

    def rss_fds(self):
        """RSS, its anonymous part (heap) in KiB, and the open descriptors."""
        pid = self.proc.pid
        with open("/proc/%d/status" % pid) as f:
            kib = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS:", "RssAnon:"))}
        return kib["VmRSS"], kib["RssAnon"], len(os.listdir("/proc/%d/fd" % pid))


# ---- clients -----------------------------------------------------------------

class H1:
    def __init__(self, port, ctx):
        self.c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)

    def request(self, headers, body):
        self.c.request("POST", PATH_2005, body, dict(headers))
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self):
        self.c.close()


class H2:
    def __init__(self, port, ctx):
        import h2.config
        import h2.connection
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(sock, server_hostname="localhost")
        if self.sock.selected_alpn_protocol() != "h2":
            raise ConnectionError("ALPN did not select h2")
        self.authority = "localhost:%d" % port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def request(self, headers, body):
        import h2.events
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", "POST"), (":scheme", "https"), (":authority", self.authority), (":path", PATH_2005)]
        hdrs += [(k.lower(), v) for k, v in headers] + [("content-length", str(len(body)))]
        self.conn.send_headers(sid, hdrs)
        self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, rh, data, done = None, {}, bytearray(), False
        while not done:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("HTTP/2 connection closed before the answer")
            for ev in self.conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    rh = {k.decode().lower(): v.decode() for k, v in ev.headers}
                    status = int(rh[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    if ev.stream_id == sid:
                        data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise ConnectionError("HTTP/2 stream reset (code %s)" % ev.error_code)
                elif isinstance(ev, h2.events.ConnectionTerminated) and not done:
                    raise ConnectionError("HTTP/2 GOAWAY (code %s, last stream %s)" % (ev.error_code, ev.last_stream_id))
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return status, rh, bytes(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- the soak --------------------------------------------------------------------

LEGIT = ["user%03d@contoso.com" % i for i in range(50)]
HOME = {u: "100.64.0.%d" % (i + 1) for i, u in enumerate(LEGIT)}
TRAVEL = ["100.65.0.%d" % (i + 1) for i in range(10)]
VICTIMS = ["victim%04d@contoso.com" % i for i in range(500)]
TOGGLE_PROBE = "192.0.2.5"
GEO_PROBE = "175.16.199.1"       # ZZ in GeoLite2-Country-Test, CN in GeoIP2-Country-Test
BT_PROBE = "67.43.156.1"
GEO_DBS = {"GeoIP2-Country-Test.mmdb": "CN", "GeoLite2-Country-Test.mmdb": "ZZ"}
UA_OK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
APP = "Microsoft.Exchange.ActiveSync"


def rules_text(variant, serial):
    ips = '"203.0.113.0/24"' + (', "192.0.2.0/28"' if variant == 1 else "")
    return f"""# soak rule file, push {serial}, variant {variant}
[request_blocking]
enabled = true
use_adaptive = true
logic = "or"
mode = "enforce"

[request_blocking.ip]
rule = "deny"
entries = [{ips}]

[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests", "BAV2ROPC"]

[adaptive.ip_country]
enabled = true
restriction = "country"
list = "deny"
entries = ["BT", "CN"]
failure_action = "refuse"

[lockout]
enabled = true
mode = "enforce"
threshold = 5
observation_window = "2m"
familiar_for = "5m"

[spray]
enabled = true
distinct_users = 10
same_password_users = 5
window = "1m"
block_for = "2m"
"""


BROKEN = [
    ("a TOML syntax error", lambda s: s.replace('logic = "or"', 'logic = "or', 1)),
    ("an IP entry that does not parse", lambda s: s.replace('"203.0.113.0/24"', '"203.0.113.0/24", "300.1.2.3"', 1)),
    ("an unknown key", lambda s: s.replace("[request_blocking]\n", "[request_blocking]\nenabeld = true\n", 1)),
    ("a bad action", lambda s: s.replace('failure_action = "refuse"', 'failure_action = "refuze"', 1)),
]


def atomic_write(path, data, mode="w"):
    tmp = path + ".tmp-%d" % random.randrange(1 << 30)
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


class Soak:
    def __init__(self, args):
        self.args = args
        self.seconds = args.seconds
        self.work = args.work
        self.rng = random.Random(args.seed)
        self.t_start = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records = []                 # one per request (dicts)
        self.errors = {}                  # kind -> count
        self.error_examples = {}
        self.explain_checks = dict(done=0, disagree=0, examples=[])
        self.waves = []
        self.chaos = {}                   # action -> count
        self.chaos_notes = []             # findings of the chaos checks
        self.blocks = []                  # API blocks
        self.samples = []                 # (t, gate, lifetime, rss_kib, fds)
        self.scrapes = {}                 # instance name -> last metrics text
        self.lifetimes = []               # (instance name, log path, ended by)
        self.down = []                    # [t_kill, t_ready] of gate B
        self.serial = 0
        self.variant = 0
        self.next_block = 0
        self.rate = args.rate

    # -- setup --
    def setup(self):
        w = self.work
        conf = os.path.join(w, "conf")
        for d in ("conf/tls", "conf/geo", "redis"):
            os.makedirs(os.path.join(w, d), exist_ok=True)
        with open(os.path.join(conf, "admin.token"), "w") as f:
            f.write(TOKEN + "\n")
        with open(os.path.join(conf, "alerts.key"), "wb") as f:
            f.write(ALERT_KEY)
        # A CA and two leaf certificates for localhost / 127.0.0.1.
        tls = os.path.join(conf, "tls")
        ossl = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=tls)
        ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3",
             "-subj", "/CN=soak CA", "-keyout", "ca.key", "-out", "ca.pem")
        with open(os.path.join(tls, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.leaves = []
        for n in (1, 2):
            ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", "/CN=localhost-%d" % n, "-keyout", "key%d.pem" % n, "-out", "req%d.csr" % n)
            ossl("x509", "-req", "-in", "req%d.csr" % n, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "3", "-extfile", "ext.cnf", "-out", "leaf%d.pem" % n)
            pem = open(os.path.join(tls, "leaf%d.pem" % n)).read()
            self.leaves.append(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())
        self.cert_in_force = 0
        self.install_cert(0)
        self.ctx_h1 = ssl.create_default_context(cafile=os.path.join(tls, "ca.pem"))
        self.ctx_h1.set_alpn_protocols(["http/1.1"])
        self.ctx_h2 = ssl.create_default_context(cafile=os.path.join(tls, "ca.pem"))
        self.ctx_h2.set_alpn_protocols(["h2"])
        self.geo_db = "GeoIP2-Country-Test.mmdb"
        shutil.copy(os.path.join(ROOT, "testdata/maxmind", self.geo_db), os.path.join(conf, "geo/country.mmdb"))
        atomic_write(os.path.join(conf, "rules.toml"), rules_text(0, 0))
        self.ports = dict(sts=free_port(), webhook=free_port(), redis=free_port())
        self.procs = {}
        self.procs["sts"] = subprocess.Popen([sys.executable, __file__, "sts", str(self.ports["sts"])])
        self.alerts_file = os.path.join(w, "alerts.jsonl")
        self.start_webhook()
        self.start_redis()
        if not wait_port(self.ports["sts"]):
            raise RuntimeError("the STS did not start")
        self.gates = {}
        for name in ("a", "b"):
            self.gates[name] = Gate(name, self.args.stsgate, w, (free_port(), free_port()), self.ports)
        for g in self.gates.values():
            g.start()
        self.t_start = time.time()
        self.rules_tl = {n: Timeline(0) for n in self.gates}
        self.geo_tl = {n: Timeline(self.country_of(g)) for n, g in self.gates.items()}
        # Every legitimate user signs in once from home first (familiar IP).
        for i, u in enumerate(LEGIT):
            g = self.gates["ab"[i % 2]]
            st, h, _ = H1(g.port, self.ctx_h1).request(self.headers(HOME[u]), envelope(u, right(u)))
            if st != 200 or h.get("x-soak-sts") != "1":
                raise RuntimeError("the first sign-in of %s got %s" % (u, st))

    def install_cert(self, n):
        tls = os.path.join(self.work, "conf/tls")
        # The key first, then the chain: the gate retries a pair caught half-written.
        atomic_write(os.path.join(tls, "key.pem"), open(os.path.join(tls, "key%d.pem" % (n + 1))).read())
        atomic_write(os.path.join(tls, "cert.pem"), open(os.path.join(tls, "leaf%d.pem" % (n + 1))).read()
                     + open(os.path.join(tls, "ca.pem")).read())
        self.cert_in_force = n

    def start_webhook(self):
        self.procs["webhook"] = subprocess.Popen(
            [sys.executable, __file__, "webhook", str(self.ports["webhook"]), self.alerts_file])
        if not wait_port(self.ports["webhook"]):
            raise RuntimeError("the webhook receiver did not start")

    def start_redis(self):
        self.procs["redis"] = subprocess.Popen(
            ["redis-server", "--port", str(self.ports["redis"]), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", os.path.join(self.work, "redis"), "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.ports["redis"]):
            raise RuntimeError("redis-server did not start")

    def headers(self, ip, ua=UA_OK):
        return [("Content-Type", "application/soap+xml; charset=utf-8"), ("X-MS-Forwarded-Client-IP", ip),
                ("X-MS-Client-Application", APP), ("X-MS-Client-User-Agent", ua)]

    def now(self):
        return time.time() - self.t_start

    def country_of(self, g):
        st, r = g.explain(GEO_PROBE)
        return (r or {}).get("country", "?") if st == 200 else "?"

    # -- requests --
    def send(self, conns, gname, proto, ip, user, password, ua=UA_OK):
        """One request through a kept-alive connection; a record of it."""
        g = self.gates[gname]
        key = (gname, proto)
        rec = dict(gate=gname, proto=proto, ip=ip, user=user, t0=time.time())
        c = conns.get(key)
        if c is not None and (c[1] != g.generation or time.time() - c[2] > 30):
            c[0].close()
            c = None
        try:
            if c is None:
                c = [(H2 if proto == "h2" else H1)(g.port, self.ctx_h2 if proto == "h2" else self.ctx_h1),
                     g.generation, 0]
                conns[key] = c
            status, h, body = c[0].request(self.headers(ip, ua), envelope(user, password))
            c[2] = time.time()
            rec.update(status=status, sts=h.get("x-soak-sts") == "1", t1=time.time())
            rec["outcome"] = ("forward_ok" if status == 200 else "forward_fail") if rec["sts"] else "refuse"
            if not rec["sts"] and not (status == 500 and b"Fault" in body):
                rec["outcome"] = "other"
                rec["error"] = "HTTP %d without the STS's mark: %r" % (status, body[:120])
        except (OSError, http.client.HTTPException, ConnectionError, ssl.SSLError) as e:
            rec.update(t1=time.time(), outcome="error", error="%s: %s" % (type(e).__name__, e))
            try:
                c[0].close()
            except Exception:
                pass
            conns.pop(key, None)
        except Exception as e:   # the h2 library's protocol errors
            rec.update(t1=time.time(), outcome="error", error="%s: %s" % (type(e).__name__, e))
            conns.pop(key, None)
        return rec

    def b_down_during(self, t0, t1):
        with self.lock:
            return any(k <= t1 and (r is None or r + 0.5 >= t0) for k, r in self.down)

    def judge(self, rec, expect):
        """expect: a set of outcomes the rules in force allow ('forward', 'refuse')."""
        rec["expect"] = sorted(expect)
        if rec["outcome"] == "error" or rec["outcome"] == "other":
            if rec["gate"] == "b" and self.b_down_during(rec["t0"], rec["t1"]):
                kind = "expected: gate B down (kill -9)"
            else:
                kind = "unexpected: " + re.sub(r"\d+", "N", rec["error"])[:90]
            rec["error_kind"] = kind
            with self.lock:
                self.errors[kind] = self.errors.get(kind, 0) + 1
                self.error_examples.setdefault(kind, "%s %s %s at %.1fs: %s" % (
                    rec["gate"], rec["proto"], rec.get("cls"), rec["t0"] - self.t_start, rec["error"]))
        else:
            got = "refuse" if rec["outcome"] == "refuse" else "forward"
            rec["wrong"] = got not in expect
        with self.lock:
            self.records.append(rec)

    def expected(self, cls, gname, ip, user, t0, t1):
        if cls in ("legit", "mistype", "travel"):
            return {"forward"}
        if cls in ("deny_ip", "deny_ua", "deny_country"):
            return {"refuse"}
        if cls == "toggle":
            return {"refuse" if v == 1 else "forward" for v in self.rules_tl[gname].possible(t0, t1)}
        if cls == "geo_flip":
            return {"refuse" if c == "CN" else "forward" for c in self.geo_tl[gname].possible(t0, t1)}
        raise ValueError(cls)

    def traffic(self, wid):
        rng = random.Random(self.args.seed * 1000 + wid)
        conns = {}
        classes = [("legit", 40), ("mistype", 4), ("travel", 5), ("deny_ip", 8), ("deny_ua", 8),
                   ("deny_country", 6), ("geo_flip", 7), ("toggle", 10), ("blocked", 12)]
        names = [c for c, _ in classes]
        weights = [w for _, w in classes]
        interval = self.args.workers / self.rate
        next_at = time.time() + rng.random() * interval
        n = 0
        while not self.stop.is_set():
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            if next_at < time.time() - 1:
                next_at = time.time()     # fell behind: do not burst
            cls = rng.choices(names, weights)[0]
            gname = rng.choice("ab")
            proto = rng.choice(("h1", "h2"))
            ua = UA_OK
            if cls in ("legit", "mistype", "travel"):
                user = rng.choice(LEGIT)
                ip = HOME[user] if cls != "travel" else rng.choice(TRAVEL)
                password = right(user) if cls != "mistype" else "Stale-" + user
            elif cls == "deny_ip":
                ip, user, password = "203.0.113.%d" % rng.randint(1, 254), "x%d@contoso.com" % rng.randint(0, 999), "guess"
            elif cls == "deny_ua":
                ip, user = "100.66.%d.%d" % (rng.randint(0, 3), rng.randint(1, 254)), rng.choice(LEGIT)
                password, ua = right(user), "python-requests/2.31.0"
            elif cls == "deny_country":
                ip, user, password = "67.43.156.%d" % rng.randint(1, 254), rng.choice(LEGIT), "guess"
            elif cls == "geo_flip":
                ip = "175.16.199.%d" % rng.randint(1, 50)
                user = "geo%02d@contoso.com" % rng.randint(0, 19)
                password = right(user)
            elif cls == "toggle":
                ip = "192.0.2.%d" % rng.randint(1, 14)
                user = "toggle%02d@contoso.com" % rng.randint(0, 19)
                password = right(user)
            else:  # blocked: a target of an API block, live or ended lately
                with self.lock:
                    recent = [b for b in self.blocks[-40:]]
                if not recent:
                    continue
                b = rng.choice(recent)
                if b["kind"] == "ip":
                    ip, user = b["target"], "blk%02d@contoso.com" % rng.randint(0, 19)
                else:
                    ip, user = "100.71.%d.%d" % (rng.randint(0, 3), rng.randint(1, 254)), b["target"]
                password = right(user)
            if not self.gates[gname].up.is_set() and rng.random() < 0.8:
                # Mostly what a load balancer does; some still try the gate that is down.
                gname = "a"
            rec = self.send(conns, gname, proto, ip, user, password, ua)
            rec["cls"] = cls
            if cls == "blocked":
                expect = self.block_expect(b, gname, rec["t0"], rec["t1"])
            else:
                expect = self.expected(cls, gname, ip, user, rec["t0"], rec["t1"])
            self.judge(rec, expect)
            if rec["outcome"] in ("forward_ok", "forward_fail") and cls in ("legit", "travel", "geo_flip", "toggle") \
                    and rec["outcome"] != "forward_ok":
                rec["wrong"] = True
                rec["why"] = "a right password forwarded but not answered 200"
            n += 1
            if n % 25 == 0 and cls != "blocked" and rec["outcome"] != "error":
                self.explain_check(rec, cls, ua)
        for c in conns.values():
            c[0].close()

    def explain_check(self, rec, cls, ua):
        g = self.gates[rec["gate"]]
        if not g.up.is_set():
            return
        t = time.time()
        st, r = g.explain(rec["ip"], rec["user"], ["X-MS-Client-User-Agent: " + ua, "X-MS-Client-Application: " + APP])
        t1 = time.time()
        if st != 200:
            return
        said = "forward" if r.get("action") == "forward" else "refuse"
        expect = self.expected(cls, rec["gate"], rec["ip"], rec["user"], t, t1)
        with self.lock:
            self.explain_checks["done"] += 1
            if said not in expect:
                self.explain_checks["disagree"] += 1
                if len(self.explain_checks["examples"]) < 5:
                    self.explain_checks["examples"].append("%s on %s: explain says %s/%s, rules say %s" % (
                        cls, rec["gate"], r.get("stage"), r.get("action"), expect))

    # -- waves (sequential sign-ins of one actor) --
    def waves_loop(self):
        rng = random.Random(self.args.seed + 7)
        conns = {}
        n = 0
        while not self.stop.wait(rng.uniform(6, 10)):
            n += 1
            kind = ("password_spray", "ip_spray", "brute_force")[n % 3]
            gname = rng.choice("ab")
            if not self.gates[gname].up.is_set():
                gname = "a"
            proto = rng.choice(("h1", "h2"))
            wave = dict(kind=kind, gate=gname, n=n, recs=[], t0=self.now())
            if kind == "password_spray":
                ip = "198.18.%d.%d" % (n // 250 % 250, n % 250 + 1)
                pw = "Spray-%d-%d!" % (n, rng.randrange(10 ** 6))
                for u in rng.sample(VICTIMS, 12):
                    wave["recs"].append(self.send(conns, gname, proto, ip, u, pw))
                    ip = "198.18.%d.%d" % (rng.randint(100, 249), rng.randint(1, 254))  # from many IPs
                wave["limit"] = 5
            elif kind == "ip_spray":
                ip = "198.19.%d.%d" % (n // 250 % 250, n % 250 + 1)
                for u in rng.sample(VICTIMS, 14):
                    wave["recs"].append(self.send(conns, gname, proto, ip, u, "Guess-%d" % rng.randrange(10 ** 9)))
                wave["limit"] = 10
            else:
                user = "target%05d@contoso.com" % n
                home = "100.67.%d.%d" % (n // 250 % 250, n % 250 + 1)
                first = self.send(conns, gname, proto, home, user, right(user))
                guesses = [self.send(conns, gname, proto, "198.20.%d.%d" % (n % 250, k + 1), user,
                                     "Brute-%d-%d" % (n, k)) for k in range(7)]
                stolen = self.send(conns, gname, proto, "198.21.%d.1" % (n % 250), user, right(user))
                back = self.send(conns, gname, proto, home, user, right(user))
                wave["recs"] = [first] + guesses + [stolen, back]
                wave["limit"] = 5
                wave["shape"] = dict(first=first["outcome"], guesses=[r["outcome"] for r in guesses],
                                     stolen=stolen["outcome"], back=back["outcome"])
            wave["t1"] = self.now()
            outcomes = [r["outcome"] for r in wave["recs"]]
            wave["aborted"] = "error" in outcomes
            for r in wave["recs"]:
                r["cls"] = kind
                self.judge(r, {"forward", "refuse"})   # errors counted; the checks are the wave's below
            if wave["aborted"]:
                wave["ok"] = None
            elif kind == "brute_force":
                s = wave["shape"]
                wave["ok"] = (s["first"] == "forward_ok" and s["guesses"] == ["forward_fail"] * 5 + ["refuse"] * 2
                              and s["stolen"] == "refuse" and s["back"] == "forward_ok")
            else:
                fwd = sum(1 for o in outcomes if o.startswith("forward"))
                wave["forwarded"] = fwd
                first_refusal = outcomes.index("refuse") if "refuse" in outcomes else len(outcomes)
                wave["ok"] = fwd <= wave["limit"] and "refuse" in outcomes and \
                    all(o == "refuse" for o in outcomes[first_refusal:]) if kind == "ip_spray" else fwd <= wave["limit"]
            with self.lock:
                self.waves.append(wave)

    # -- blocks --
    def block_expect(self, b, gname, t0, t1):
        """Whether a request to `gname` in [t0, t1] for the target of block `b` must be refused."""
        with self.lock:
            on = b["on"][gname]          # list of (from, to) windows in which it may or must be in force
        must, may = False, False
        for (w, c, end_w, end_c) in on:
            # may be in force in [w, end_c]; must be in [c, end_w]
            if w <= t1 and t0 <= end_c:
                may = True
            if c <= t0 and t1 <= end_w:
                must = True
        if must:
            return {"refuse"}
        return {"refuse", "forward"} if may else {"forward"}

    def add_block(self, rng, origin=None):
        origin = origin or rng.choice("ab")
        if not self.gates[origin].up.is_set():
            origin = "a"
        other = "b" if origin == "a" else "a"
        self.next_block += 1
        k = self.next_block
        if k % 2:
            kind, target = "ip", "100.70.%d.%d" % (k // 250 % 250, k % 250 + 1)
        else:
            kind, target = "user", "blocked%05d@contoso.com" % k
        ttl = rng.choice((45, 60, 90, 120))
        g = self.gates[origin]
        t_sent = time.time()
        st, body = g.api("POST", "/api/v1/blocks", {kind: target, "ttl": "%ds" % ttl, "reason": "soak %d" % k})
        t_ack = time.time()
        if st != 201:
            self.note("block add on %s answered %s: %s" % (origin, st, body))
            return
        expires = t_sent + ttl
        b = dict(id=body["id"], kind=kind, target=target, origin=origin, other=other, added=t_sent - self.t_start,
                 ttl=ttl, seen=None, removed=None, removal_seen=None, expires=expires,
                 # per gate: [may-from, must-from, must-until, may-until]
                 on={origin: [[t_sent, t_ack, expires - 1.5, expires + 2.5]],
                     other: [[t_sent, INF, expires - 1.5, expires + 2.5]]})
        with self.lock:
            self.blocks.append(b)
        threading.Thread(target=self.watch_block, args=(b, t_sent), daemon=True).start()

    def watch_block(self, b, t_sent):
        """Polls the other gate until it has the block (and, once removed, until it has not)."""
        other = self.gates[b["other"]]
        while not self.stop.is_set() and time.time() < b["expires"] - 1.5:
            if b["removed"] is not None:
                break
            if other.up.is_set():
                try:
                    st, _ = other.api("GET", "/api/v1/blocks/" + b["id"], timeout=2)
                except OSError:
                    st = 0
                if st == 200:
                    t = time.time()
                    with self.lock:
                        b["seen"] = t - t_sent
                        b["on"][b["other"]][-1][1] = t
                    break
            time.sleep(0.05)

    def remove_block(self, rng):
        with self.lock:
            live = [b for b in self.blocks if b["removed"] is None and b["expires"] - time.time() > 10]
        if not live:
            return
        b = rng.choice(live)
        remover = rng.choice("ab")
        if not self.gates[remover].up.is_set():
            remover = "a"
        other = "b" if remover == "a" else "a"
        t_sent = time.time()
        st, _ = self.gates[remover].api("DELETE", "/api/v1/blocks/" + b["id"])
        t_ack = time.time()
        if st != 204:
            self.note("block remove of %s on %s answered %s" % (b["id"], remover, st))
            return
        with self.lock:
            b["removed"] = t_sent - self.t_start
            b["remover"] = remover
            for gname, (must_until, may_until) in ((remover, (t_sent, t_ack)), (other, (t_sent, INF))):
                win = b["on"][gname][-1]
                win[2] = min(win[2], must_until)
                win[3] = min(win[3], may_until)
        # until the other gate no longer has it
        g = self.gates[other]
        deadline = time.time() + 60
        while time.time() < deadline and not self.stop.is_set():
            if g.up.is_set():
                try:
                    st, _ = g.api("GET", "/api/v1/blocks/" + b["id"], timeout=2)
                except OSError:
                    st = 0
                if st == 404:
                    t = time.time()
                    with self.lock:
                        b["removal_seen"] = t - t_sent
                        b["on"][other][-1][3] = min(b["on"][other][-1][3], t)
                    return
            time.sleep(0.05)

    def note(self, text):
        with self.lock:
            self.chaos_notes.append("%.1fs: %s" % (self.now(), text))

    # -- chaos --
    def wait_explain(self, gname, probe, want, timeout=10, **kw):
        g = self.gates[gname]
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not g.up.is_set():
                return None
            try:
                st, r = g.explain(probe, **kw)
            except OSError:
                st, r = 0, None
            if st == 200 and want(r):
                return time.time()
            time.sleep(0.1)
        return False

    def push_rules(self, rng, broken):
        path = os.path.join(self.work, "conf/rules.toml")
        self.serial += 1
        if broken:
            what, breaker = rng.choice(BROKEN)
            before = {}
            for n, g in self.gates.items():
                if g.up.is_set():
                    try:
                        before[n] = metric_sum(g.metrics(), "stsgate_rule_reloads_total", result="failure")
                    except OSError:
                        pass
            atomic_write(path, breaker(rules_text(self.variant, self.serial)))
            for n, count in before.items():
                g = self.gates[n]
                deadline = time.time() + 10
                seen = False
                while time.time() < deadline and g.up.is_set():
                    try:
                        if metric_sum(g.metrics(), "stsgate_rule_reloads_total", result="failure") > count:
                            seen = True
                            break
                    except OSError:
                        pass
                    time.sleep(0.1)
                if not seen and g.up.is_set():
                    self.note("broken rule file (%s) not refused by gate %s within 10 s" % (what, n))
                # The rules in force must not have moved.
                want = "refuse" if self.variant == 1 else "forward"
                if g.up.is_set() and self.wait_explain(n, TOGGLE_PROBE, lambda r: r.get("action") == want, 1) is False:
                    self.note("gate %s changed its rules on a broken file (%s)" % (n, what))
            self.chaos["rule push, broken (%s)" % what] = self.chaos.get("rule push, broken (%s)" % what, 0) + 1
            return
        self.variant = 1 - self.variant
        t = time.time()
        idx = {n: tl.change(t, self.variant) for n, tl in self.rules_tl.items()}
        atomic_write(path, rules_text(self.variant, self.serial))
        want = "refuse" if self.variant == 1 else "forward"
        for n in self.gates:
            got = self.wait_explain(n, TOGGLE_PROBE, lambda r: r.get("action") == want)
            if got:
                self.rules_tl[n].confirm(idx[n], got)
            elif got is False:
                self.note("rule push not in force on gate %s after 10 s" % n)
        self.chaos["rule push, good"] = self.chaos.get("rule push, good", 0) + 1

    def swap_geo(self):
        conf = os.path.join(self.work, "conf/geo")
        new = [d for d in GEO_DBS if d != self.geo_db][0]
        t = time.time()
        idx = {n: tl.change(t, GEO_DBS[new]) for n, tl in self.geo_tl.items()}
        shutil.copy(os.path.join(ROOT, "testdata/maxmind", new), os.path.join(conf, "country.mmdb.tmp"))
        os.replace(os.path.join(conf, "country.mmdb.tmp"), os.path.join(conf, "country.mmdb"))
        self.geo_db = new
        for n in self.gates:
            got = self.wait_explain(n, GEO_PROBE, lambda r: r.get("country") == GEO_DBS[new])
            if got:
                self.geo_tl[n].confirm(idx[n], got)
            elif got is False:
                key = "GeoIP database replaced, gate %s still on the old one 10 s later" % n
                if key not in self.chaos:
                    self.note(key + " (PRODUCT.md §2: reloaded when the file changes)")
                self.chaos[key] = self.chaos.get(key, 0) + 1
                # The old database stays in force: judge against it.
                with self.geo_tl[n].lock:
                    self.geo_tl[n].changes.pop(idx[n])
        self.chaos["GeoIP database swap"] = self.chaos.get("GeoIP database swap", 0) + 1

    def swap_cert(self):
        n = 1 - self.cert_in_force
        self.install_cert(n)
        for name, g in self.gates.items():
            deadline = time.time() + 10
            while time.time() < deadline and g.up.is_set():
                try:
                    s = self.ctx_h1.wrap_socket(socket.create_connection(("127.0.0.1", g.port), timeout=3),
                                                server_hostname="localhost")
                    fp = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
                    s.close()
                    if fp == self.leaves[n]:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                if g.up.is_set():
                    self.note("gate %s still serves the old certificate 10 s after the swap" % name)
        self.chaos["TLS certificate swap"] = self.chaos.get("TLS certificate swap", 0) + 1

    def restart_redis(self, rng):
        """Every other time a clean restart (SIGTERM, the append-only file
        kept), else kill -9 and an empty Redis (a fresh replacement): the
        gates must write their state back into it."""
        p = self.procs["redis"]
        self.redis_restarts = getattr(self, "redis_restarts", 0) + 1
        wipe = self.redis_restarts % 2 == 0
        p.send_signal(signal.SIGKILL if wipe else signal.SIGTERM)
        p.wait()
        if wipe:
            shutil.rmtree(os.path.join(self.work, "redis"))
            os.makedirs(os.path.join(self.work, "redis"))
        time.sleep(rng.uniform(1, 4))
        self.start_redis()
        key = "Redis kill -9, restarted empty" if wipe else "Redis restart (SIGTERM, data kept)"
        self.chaos[key] = self.chaos.get(key, 0) + 1

    def bounce_webhook(self, rng):
        p = self.procs["webhook"]
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(rng.uniform(2, 8))
        self.start_webhook()
        self.chaos["webhook receiver kill -9 + restart"] = self.chaos.get("webhook receiver kill -9 + restart", 0) + 1

    def kill_b(self, rng):
        g = self.gates["b"]
        try:
            self.scrapes[g.instance] = g.metrics()
        except OSError:
            pass
        if rng.random() < 0.5:
            # A block acknowledged (201) by B just before it dies must survive.
            self.add_block(rng, "b")
            self.chaos["block added on gate B just before its kill -9"] = \
                self.chaos.get("block added on gate B just before its kill -9", 0) + 1
        t_kill = time.time()
        with self.lock:
            self.down.append([t_kill, None])
        g.kill9()
        self.lifetimes.append((g.instance, g.logpath, "kill -9"))
        time.sleep(rng.uniform(1, 3))
        g.start()
        t_ready = time.time()
        with self.lock:
            self.down[-1][1] = t_ready
        # What B reads at start: the files as they are now.
        self.rules_tl["b"].set(t_ready, self.variant)
        self.geo_tl["b"].set(t_ready, self.country_of(g))
        # Blocks on B after the restart: in force once B lists them again.
        with self.lock:
            live = [b for b in self.blocks if b["removed"] is None and b["expires"] > t_ready + 3]
            for b in live:
                w = b["on"]["b"][-1]
                b["on"]["b"].append([t_kill, INF, w[2], w[3]])
                w[2] = min(w[2], t_kill)     # B's view is unknown until it lists the block again
        deadline = time.time() + 60
        pending = list(live)
        while pending and time.time() < deadline and not self.stop.is_set():
            for b in list(pending):
                try:
                    st, _ = g.api("GET", "/api/v1/blocks/" + b["id"], timeout=2)
                except OSError:
                    st = 0
                if st == 200 or b["removed"] is not None or time.time() > b["expires"] - 2:
                    with self.lock:
                        if st == 200:
                            b["on"]["b"][-1][1] = time.time()
                    pending.remove(b)
            time.sleep(0.2)
        for b in pending:
            self.note("block %s (%s) not on gate B 60 s after its restart" % (b["id"], b["origin"]))
        self.chaos["gate B kill -9 + restart"] = self.chaos.get("gate B kill -9 + restart", 0) + 1

    def sighup(self, rng):
        name = rng.choice("ab")
        g = self.gates[name]
        if not g.up.is_set():
            return
        before = metric_sum(g.metrics(), "stsgate_rule_reloads_total", result="success")
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline:
            if metric_sum(g.metrics(), "stsgate_rule_reloads_total", result="success") > before:
                break
            time.sleep(0.1)
        else:
            self.note("SIGHUP to gate %s: no successful reload counted within 5 s" % name)
        self.chaos["SIGHUP"] = self.chaos.get("SIGHUP", 0) + 1

    def chaos_loop(self):
        rng = random.Random(self.args.seed + 3)
        actions = ["rules", "block_add", "sighup", "cert", "block_add", "rules_broken", "webhook", "block_remove",
                   "geo", "rules", "redis", "block_add", "sighup", "block_remove"]
        i = 0
        next_kill = self.now() + self.args.kill_every
        while not self.stop.wait(rng.uniform(self.args.chaos_every * 0.5, self.args.chaos_every * 1.5)):
            if self.now() > self.seconds - 20:
                continue      # the last seconds are quiet: everything catches up
            if self.now() >= next_kill:
                self.kill_b(rng)
                next_kill = self.now() + self.args.kill_every
                continue
            a = actions[i % len(actions)]
            i += 1
            try:
                if a == "rules":
                    self.push_rules(rng, False)
                elif a == "rules_broken":
                    self.push_rules(rng, True)
                    time.sleep(rng.uniform(1, 3))
                    self.push_rules(rng, False)     # fixed again
                elif a == "block_add":
                    self.add_block(rng)
                    self.chaos["block added through the API"] = self.chaos.get("block added through the API", 0) + 1
                elif a == "block_remove":
                    threading.Thread(target=self.remove_block, args=(rng,), daemon=True).start()
                    self.chaos["block removed through the API"] = self.chaos.get("block removed through the API", 0) + 1
                elif a == "sighup":
                    self.sighup(rng)
                elif a == "cert":
                    self.swap_cert()
                elif a == "geo":
                    self.swap_geo()
                elif a == "redis":
                    self.restart_redis(rng)
                elif a == "webhook":
                    threading.Thread(target=self.bounce_webhook, args=(rng,), daemon=True).start()
            except Exception as e:
                self.note("chaos action %s failed: %s: %s" % (a, type(e).__name__, e))

    # -- sampling --
    def sampler(self):
        while not self.stop.wait(10):
            for n, g in self.gates.items():
                if g.up.is_set():
                    try:
                        rss, anon, fds = g.rss_fds()
                        self.samples.append((self.now(), n, g.lifetime, rss, fds, g.instance, anon))
                    except (OSError, StopIteration):
                        pass

    def scraper(self):
        while not self.stop.wait(2):
            for g in self.gates.values():
                if g.up.is_set():
                    try:
                        self.scrapes[g.instance] = g.metrics()
                    except OSError:
                        pass

    # -- the run --
    def run(self):
        self.setup()
        print("soak: gates A %d / B %d (admin %d / %d), STS %d, webhook %d, redis %d; %d s, work dir %s" % (
            self.gates["a"].port, self.gates["b"].port, self.gates["a"].admin, self.gates["b"].admin,
            self.ports["sts"], self.ports["webhook"], self.ports["redis"], self.seconds, self.work), flush=True)
        threads = [threading.Thread(target=self.traffic, args=(i,)) for i in range(self.args.workers)]
        threads += [threading.Thread(target=f) for f in (self.waves_loop, self.chaos_loop, self.sampler, self.scraper)]
        for t in threads:
            t.start()
        last = 0
        while self.now() < self.seconds:
            time.sleep(1)
            if self.now() - last >= 60:
                last = self.now()
                with self.lock:
                    n, e = len(self.records), sum(self.errors.values())
                print("soak: %4.0f s: %d requests, %d errors, %d chaos actions" % (
                    self.now(), n, e, sum(self.chaos.values())), flush=True)
        self.stop.set()
        for t in threads:
            t.join()
        return self.finish()

    def finish(self):
        # Everything must be up for the final tallies.
        if self.procs["webhook"].poll() is not None:
            self.start_webhook()
        # Alerts settle: every event the gates logged is counted.
        deadline = time.time() + 90
        while time.time() < deadline:
            pending = 0
            for g in self.gates.values():
                m = g.metrics()
                self.scrapes[g.instance] = m
                emitted = self.logged_events(g.logpath)
                counted = metric_sum(m, "stsgate_alerts_total")
                pending += emitted - counted
            if pending <= 0:
                break
            time.sleep(1)
        self.final_blocks = {n: {b["id"] for b in (g.api("GET", "/api/v1/blocks")[1] or [])}
                             for n, g in self.gates.items()}
        for g in self.gates.values():
            self.scrapes[g.instance] = g.metrics()
            self.lifetimes.append((g.instance, g.logpath, "end of run"))
        for g in self.gates.values():
            g.stop()
        for p in self.procs.values():
            p.terminate()
            p.wait()
        return self.report()

    @staticmethod
    def logged_events(path):
        n = 0
        # The state's own event lines (the admin API logs removals too, in other words).
        pat = re.compile(r" (block added|block removed|block expired) id=| (user locked for unfamiliar locations|"
                         r"correct password from an unfamiliar location while locked|password spray detected)")
        with open(path, errors="replace") as f:
            for line in f:
                if pat.search(line):
                    n += 1
        return n

    # -- the report --
    def report(self):
        a = self.args
        out = []
        w = out.append
        recs = self.records
        answered = [r for r in recs if r["outcome"] not in ("error", "other")]
        unexpected = {k: v for k, v in self.errors.items() if k.startswith("unexpected")}
        expected_err = {k: v for k, v in self.errors.items() if not k.startswith("unexpected")}
        wrong = [r for r in answered if r.get("wrong")]
        w("# stsgate soak: %d s, two gates sharing Redis, under chaos" % self.seconds)
        w("")
        w("Command: `SOAK_SECONDS=%d benches/soak/run.sh` (seed %d, %d req/s target over %d workers, "
          "chaos every ~%g s, gate B kill -9 every %d s). Binary: %s." % (
              self.seconds, a.seed, a.rate, a.workers, a.chaos_every, a.kill_every, a.binary_note))
        w("")
        w("## Requests")
        w("")
        by_proto = {p: sum(1 for r in recs if r["proto"] == p) for p in ("h1", "h2")}
        w("| sent | answered | HTTP/1.1 | HTTP/2 | forwarded | refused | unexpected errors | expected errors |")
        w("|---|---|---|---|---|---|---|---|")
        w("| %d | %d | %d | %d | %d | %d | %d | %d |" % (
            len(recs), len(answered), by_proto["h1"], by_proto["h2"],
            sum(1 for r in answered if r["outcome"].startswith("forward")),
            sum(1 for r in answered if r["outcome"] == "refuse"),
            sum(unexpected.values()), sum(expected_err.values())))
        w("")
        w("| class | sent | forwarded | refused | errors | wrong decisions |")
        w("|---|---|---|---|---|---|")
        classes = sorted({r.get("cls", "?") for r in recs})
        for c in classes:
            rs = [r for r in recs if r.get("cls") == c]
            w("| %s | %d | %d | %d | %d | %d |" % (
                c, len(rs), sum(1 for r in rs if r["outcome"].startswith("forward")),
                sum(1 for r in rs if r["outcome"] == "refuse"),
                sum(1 for r in rs if r["outcome"] in ("error", "other")), sum(1 for r in rs if r.get("wrong"))))
        w("")
        w("Errors by kind:")
        w("")
        if not self.errors:
            w("- none")
        for k, v in sorted(self.errors.items()):
            w("- %s: %d (first: %s)" % (k, v, self.error_examples.get(k, "")))
        w("")
        w("## Decisions")
        w("")
        w("- decisions that disagree with the rules in force: **%d** of %d answered" % (len(wrong), len(answered)))
        for r in wrong[:8]:
            w("  - %s on %s/%s at %.1fs: %s %s user %s: got %s, rules say %s %s" % (
                r.get("cls"), r["gate"], r["proto"], r["t0"] - self.t_start, r["ip"], "", r["user"],
                r["outcome"], r.get("expect"), r.get("why", "")))
        ec = self.explain_checks
        w("- sample checked against `POST /api/v1/explain` on the same gate: %d, disagreeing with the rules: **%d**" % (
            ec["done"], ec["disagree"]))
        for e in ec["examples"]:
            w("  - " + e)
        done = [x for x in self.waves if x["ok"] is not None]
        w("- waves (one attacker, sequential): %d run, %d cut by the kill of gate B, %d not as the rules say" % (
            len(self.waves), len(self.waves) - len(done), sum(1 for x in done if not x["ok"])))
        for kind in ("password_spray", "ip_spray", "brute_force"):
            ks = [x for x in done if x["kind"] == kind]
            if not ks:
                continue
            extra = ""
            if kind != "brute_force":
                extra = ", guesses forwarded per wave: %s (limit %d)" % (
                    "/".join(str(v) for v in sorted({x["forwarded"] for x in ks})), ks[0]["limit"])
            else:
                extra = " (5 guesses forwarded, the rest and the stolen password refused, home still signs in)"
            w("  - %s: %d, as the rules say: %d%s" % (kind, len(ks), sum(1 for x in ks if x["ok"]), extra))
        for x in [x for x in done if not x["ok"]][:5]:
            w("    - wave %d (%s on %s): %s" % (x["n"], x["kind"], x["gate"],
                                               x.get("shape") or [r["outcome"] for r in x["recs"]]))
        w("")
        w("## Alerts")
        w("")
        received = {}
        bad_sig = 0
        if os.path.exists(self.alerts_file):
            for line in open(self.alerts_file):
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                bad_sig += not d["signature_ok"]
                al = d["alert"]
                received.setdefault(al.get("instance"), set()).add(al.get("id"))
        w("| instance (lifetime) | ended by | events logged | delivered (counted) | failed | dropped | received by the webhook (distinct ids) | not accounted |")
        w("|---|---|---|---|---|---|---|---|")
        unaccounted_total = 0
        lost_kill = 0
        for inst, path, ended in self.lifetimes:
            m = self.scrapes.get(inst, "")
            logged = self.logged_events(path)
            d = metric_sum(m, "stsgate_alerts_total", result="delivered")
            f = metric_sum(m, "stsgate_alerts_total", result="failed")
            dr = metric_sum(m, "stsgate_alerts_total", result="dropped")
            rc = len(received.get(inst, ()))
            # Delivered after the last scrape (a killed gate) show up at the receiver only.
            accounted = max(d, rc) + f + dr
            missing = logged - accounted
            if ended == "kill -9":
                lost_kill += max(0, missing)
            else:
                unaccounted_total += max(0, missing)
            w("| %s | %s | %d | %d | %d | %d | %d | %d%s |" % (inst, ended, logged, d, f, dr, rc, max(0, missing),
                                                                 " (in the queue at kill -9)" if ended == "kill -9" and missing > 0 else ""))
        w("")
        w("- received with a bad signature: %d" % bad_sig)
        w("- alerts emitted by gates that ended normally and neither delivered nor counted: **%d**; "
          "lost with a gate killed by kill -9 (its queue, by design in memory): %d" % (unaccounted_total, lost_kill))
        w("")
        w("## Blocks")
        w("")
        bl = self.blocks
        seen = [b["seen"] for b in bl if b["seen"] is not None]
        rem = [b for b in bl if b["removed"] is not None]
        rseen = [b["removal_seen"] for b in rem if b["removal_seen"] is not None]
        never = [b for b in bl if b["seen"] is None and b["removed"] is None]
        w("- added through the API: %d; seen by the other gate: %d (median %.2f s, max %.2f s)%s" % (
            len(bl), len(seen), percentile(seen, 0.5) if seen else float("nan"), max(seen) if seen else float("nan"),
            "; never seen before it ended: %d (%s)" % (len(never), ", ".join(
                "%s from %s at %.0fs" % (b["id"], b["origin"], b["added"]) for b in never[:5])) if never else ""))
        w("- removed through the API: %d; removal seen by the other gate: %d (median %.2f s, max %.2f s)" % (
            len(rem), len(rseen), percentile(rseen, 0.5) if rseen else float("nan"), max(rseen) if rseen else float("nan")))
        fa, fb = self.final_blocks.get("a", set()), self.final_blocks.get("b", set())
        w("- live blocks at the end: gate A %d, gate B %d, on one only: %d" % (len(fa), len(fb), len(fa ^ fb)))
        w("")
        w("## Chaos")
        w("")
        for k, v in sorted(self.chaos.items()):
            w("- %s: %d" % (k, v))
        w("")
        w("Findings of the chaos checks: %s" % ("none" if not self.chaos_notes else ""))
        for n in self.chaos_notes[:20]:
            w("- " + n)
        w("")
        w("## Gate counters (last scrape of each lifetime)")
        w("")
        w("| instance | rule reloads ok / failed | TLS reloads ok / failed | state errors redis / embedded | upstream error / timeout | decisions |")
        w("|---|---|---|---|---|---|")
        for inst, _, _ in self.lifetimes:
            m = self.scrapes.get(inst, "")
            w("| %s | %d / %d | %d / %d | %d / %d | %d / %d | %d |" % (
                inst, metric_sum(m, "stsgate_rule_reloads_total", result="success"),
                metric_sum(m, "stsgate_rule_reloads_total", result="failure"),
                metric_sum(m, "stsgate_tls_reloads_total", result="success"),
                metric_sum(m, "stsgate_tls_reloads_total", result="failure"),
                metric_sum(m, "stsgate_state_errors_total", store="redis"),
                metric_sum(m, "stsgate_state_errors_total", store="embedded"),
                metric_sum(m, "stsgate_upstream_responses_total", **{"class": "error"}),
                metric_sum(m, "stsgate_upstream_responses_total", **{"class": "timeout"}),
                metric_sum(m, "stsgate_decisions_total")))
        w("")
        w("## Memory and file descriptors (every 10 s)")
        w("")
        warm = a.warmup
        w("Slopes by least squares over the samples after %d s of warm-up of each lifetime." % warm)
        w("")
        w("| instance | samples | RSS first → last MiB | RSS max MiB | RSS slope MiB/hour | of which anonymous (heap) MiB/hour | FDs first → last | FD slope /hour |")
        w("|---|---|---|---|---|---|---|---|")
        slopes = []
        for inst in sorted({s[5] for s in self.samples}):
            ss = [s for s in self.samples if s[5] == inst]
            t0 = ss[0][0]
            after = [s for s in ss if s[0] - t0 >= warm]
            rs = slope_per_hour([(s[0], s[3] / 1024) for s in after])
            ans = slope_per_hour([(s[0], s[6] / 1024) for s in after])
            fs = slope_per_hour([(s[0], s[4]) for s in after])
            long_enough = len(after) >= 10
            if long_enough:
                # FDs are small integers: flat means the fitted line rises by
                # fewer than 2 descriptors over the span measured.
                span_h = (after[-1][0] - after[0][0]) / 3600
                slopes.append((inst, rs, fs, fs * span_h))
            w("| %s | %d | %.1f → %.1f | %.1f | %s | %s | %d → %d | %s |" % (
                inst, len(ss), ss[0][3] / 1024, ss[-1][3] / 1024, max(s[3] for s in ss) / 1024,
                ("%+.2f" % rs) if long_enough else "(too short)",
                ("%+.2f" % ans) if long_enough else "", ss[0][4], ss[-1][4],
                ("%+.1f" % fs) if long_enough else "(too short)"))
        w("")
        w("## Latency per minute (client side, answered requests)")
        w("")
        w("| minute | answered | p50 ms | p99 ms | p99 forwarded ms | p99 HTTP/2 ms |")
        w("|---|---|---|---|---|---|")
        mins = {}
        for r in answered:
            mins.setdefault(int((r["t1"] - self.t_start) // 60), []).append(r)
        for m in sorted(mins):
            rs = mins[m]
            lat = [(r["t1"] - r["t0"]) * 1000 for r in rs]
            fw = [(r["t1"] - r["t0"]) * 1000 for r in rs if r["outcome"].startswith("forward")]
            h2 = [(r["t1"] - r["t0"]) * 1000 for r in rs if r["proto"] == "h2"]
            w("| %d | %d | %.1f | %.1f | %.1f | %.1f |" % (m + 1, len(rs), percentile(lat, 0.5), percentile(lat, 0.99),
                                                       percentile(fw, 0.99), percentile(h2, 0.99)))
        w("")
        w("## Targets")
        w("")
        rss_ok = all(rs < 1.0 for _, rs, _, _ in slopes)
        fd_ok = all(rise < 2 for _, _, _, rise in slopes)
        targets = [
            ("0 unexpected errors", sum(unexpected.values()) == 0, "%d" % sum(unexpected.values())),
            ("0 wrong decisions (requests, explain sample, waves)",
             not wrong and not ec["disagree"] and all(x["ok"] for x in done),
             "%d / %d / %d" % (len(wrong), ec["disagree"], sum(1 for x in done if not x["ok"]))),
            ("every alert delivered or counted", unaccounted_total == 0 and bad_sig == 0,
             "%d unaccounted" % unaccounted_total),
            ("RSS slope < 1 MiB/hour after warm-up", rss_ok,
             ", ".join("%s %+.2f MiB/hour" % (i, r) for i, r, _, _ in slopes)),
            ("open FDs flat after warm-up (the fitted line rises by < 2)", fd_ok,
             ", ".join("%s %+.1f/hour, %+.1f over the span" % (i, f, rise) for i, _, f, rise in slopes)),
            ("chaos checks clean", not self.chaos_notes, "%d findings" % len(self.chaos_notes)),
        ]
        for name, ok, val in targets:
            w("- %s: %s (%s)" % (name, "met" if ok else "**MISSED**", val))
        text = "\n".join(out)
        print(text)
        if a.report:
            with open(a.report, "w") as f:
                f.write(text + "\n")
        with open(os.path.join(self.work, "samples.jsonl"), "w") as f:
            for t, n, life, rss, fds, inst, anon in self.samples:
                f.write(json.dumps(dict(t=round(t, 1), gate=n, instance=inst, rss_kib=rss, anon_kib=anon,
                                        fds=fds)) + "\n")
        with open(os.path.join(self.work, "requests.jsonl"), "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        return 0 if all(ok for _, ok, _ in targets) else 1


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "sts":
        serve_sts(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "webhook":
        serve_webhook(int(sys.argv[2]), sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stsgate", required=True, help="the stsgate binary (a copy: others rebuild target/)")
    ap.add_argument("--binary-note", dest="binary_note", default="")
    ap.add_argument("--work", required=True)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--rate", type=float, default=40.0, help="steady requests a second (waves come on top)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--chaos-every", dest="chaos_every", type=float, default=4.0)
    ap.add_argument("--kill-every", dest="kill_every", type=float, default=150)
    ap.add_argument("--warmup", type=int, default=0, help="seconds of warm-up before the slopes (default: a sixth of the run, 300-600)")
    ap.add_argument("--report", help="write the report (markdown) here")
    args = ap.parse_args()
    if not args.warmup:
        args.warmup = int(min(600, max(300, args.seconds / 6)))
    soak = Soak(args)
    try:
        return soak.run()
    except Exception:
        soak.stop.set()
        for g in getattr(soak, "gates", {}).values():
            try:
                g.stop()
            except Exception:
                pass
        for p in getattr(soak, "procs", {}).values():
            p.kill()
        raise


if __name__ == "__main__":
    sys.exit(main())
