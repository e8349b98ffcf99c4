#!/usr/bin/env python3
"""Seeded campaign replay: how many attacker guesses get past stsgate.

Runs, on loopback only:
  * an STS that answers like ADFS: every account has one right password; the
    right one gets HTTP 200 with testdata/wstrust/rstr-2005-success.xml, any
    other HTTP 500 with testdata/wstrust/fault-failed-authentication.xml. It
    records every request that reaches it (by the replay's X-Campaign-Id);
  * the real gate, `stsgate run --config`, in front of it, trusting the replay
    as Exchange Online (client IPs in X-MS-Forwarded-Client-IP), with
    [lockout] and [spray] at the values PRODUCT.md §3 shows, request blocking
    off, and blocked.delay = "0s" (refusals answered at once, to keep it fast);
  * a seeded campaign (same seed, same requests in the same order):
      - legitimate Exchange Online sign-ins from familiar places (a first
        sign-in each, before the attacks, stands for the days before), some
        users mistyping once then succeeding, some travelling to a new IP,
        phones retrying a stale password, then updated;
      - a password spray: many IPs x every account, one common password a round;
      - a distributed brute force against one user from hundreds of IPs;
      - a slow spray: each IP tries fewer users than spray.distinct_users.
    Every attacker guess goes to one of the farm's three password doors, at
    random: WS-Trust usernamemixed (2005 or 1.3), the OAuth2 token endpoint
    (resource-owner password grant) and the forms sign-in page (/adfs/ls/);
    the STS answers each like ADFS (see docs/DOMAIN.md).
    Everything is sent as fast as the gate answers, `--workers` at once, so the
    whole campaign falls inside one lockout and one spray window.

Prints what was sent, what reached the STS per attack, what happened to the
legitimate sign-ins, and exits 0 when the targets are met (< 1 % of attacker
guesses reach the STS, 0 legitimate sign-ins refused), 1 when missed, 2 when
the replay itself failed. `--json` prints the figures as JSON instead.

Standard library only.
"""

import argparse
import http.client
import http.server
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from xml.sax.saxutils import escape, unescape

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PATH_2005 = "/adfs/services/trust/2005/usernamemixed"
PATH_13 = "/adfs/services/trust/13/usernamemixed"
PATH_TOKEN = "/adfs/oauth2/token"
PATH_FORMS = "/adfs/ls/?client-request-id=5e0c1d2a-3b4c-4d5e-8f60-718293a4b5c6&wa=wsignin1.0&wtrealm=urn%3afederation%3aMicrosoftOnline"
# Where attacker guesses go: the three doors (WS-Trust in its two versions).
ATTACK_PATHS = [PATH_2005, PATH_13, PATH_TOKEN, PATH_TOKEN, PATH_FORMS, PATH_FORMS]


def protocol(path):
    """The protocol label of a path, as the gate names it."""
    if path.startswith(PATH_TOKEN):
        return "oauth2_ropc"
    if path.startswith("/adfs/ls"):
        return "forms"
    return "wstrust"
TOKEN = "campaign-admin-token-0123456789"

# The rule file: PRODUCT.md §3's values for [lockout] and [spray].
RULES = """\
[request_blocking]
enabled = false

[lockout]
enabled = true
mode = "enforce"
threshold = 5
observation_window = "30m"
familiar_for = "14d"

[spray]
enabled = true
distinct_users = 10
same_password_users = 5
window = "10m"
block_for = "1h"
"""
THRESHOLD = 5
DISTINCT_USERS = 10
SAME_PASSWORD_USERS = 5

# How big the campaign is.
SCALES = {
    # accounts in the directory (all sprayed), users signing in, spray rounds,
    # spray IPs, slow-spray rounds, brute-force IPs and guesses per IP, phones
    "full": dict(accounts=1000, active=200, spray_rounds=4, spray_ips=60,
                 slow_rounds=3, brute_ips=400, brute_per_ip=2, phones=3,
                 phone_retries=20),
    "small": dict(accounts=120, active=30, spray_rounds=2, spray_ips=12,
                  slow_rounds=1, brute_ips=40, brute_per_ip=2, phones=1,
                  phone_retries=8),
}

COMMON = ["Winter2025!", "Spring2026!", "Password1", "Welcome123", "Contoso2026!",
          "Summer2025!", "Autumn2025!", "Qwerty123!", "Monday1!", "Company123"]


# ---- the campaign ---------------------------------------------------------

class Ev:
    """One sign-in to send."""
    __slots__ = ("id", "t", "kind", "actor", "user", "password", "ip", "path",
                 "expect", "after", "round")

    def __init__(self, t, kind, user, password, ip, expect=None, actor=None,
                 path=PATH_2005, rnd=None):
        self.id = -1
        self.t = t
        self.kind = kind          # see KINDS
        self.actor = actor        # events of one actor are sent in order
        self.user = user
        self.password = password
        self.ip = ip
        self.path = path
        self.expect = expect      # legitimate: "success" | "failure"
        self.after = None         # id of the actor's previous event
        self.round = rnd


ATTACKS = ["spray", "brute_force", "slow_spray"]
ATTACK_NAMES = {"spray": "password spray", "brute_force": "distributed brute force",
                "slow_spray": "slow spray (under the per-IP threshold)"}


def password(rng):
    alphabet = string.ascii_letters + string.digits + "!#%&<>"
    return "".join(rng.choice(alphabet) for _ in range(14))


def typo(rng, pw):
    i = rng.randrange(len(pw))
    c = rng.choice([ch for ch in string.ascii_lowercase if ch != pw[i]])
    return pw[:i] + c + pw[i + 1:]


def campaign(seed, scale):
    """The seeded campaign: (warm-up events, main events, facts)."""
    p = SCALES[scale]
    rng = random.Random(seed)
    accounts = ["user%04d@contoso.com" % i for i in range(p["accounts"])]
    right = {u: password(rng) for u in accounts}
    active = rng.sample(accounts, p["active"])
    # Where legitimate users sign in from: three office egress addresses
    # shared by about half of them, the others from home (one address each).
    offices = ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
    home = {}
    for i, u in enumerate(active):
        home[u] = rng.choice(offices) if rng.random() < 0.5 else "100.64.%d.%d" % (i // 250, i % 250 + 1)
    target = active[0]               # the brute force's victim, a real user
    others = active[1:]
    phones = others[:p["phones"]]
    rest = others[p["phones"]:]
    mistypers = set(rng.sample(rest, max(1, len(rest) // 10)))
    travellers = set(rng.sample(rest, max(1, len(rest) // 16)))

    warm = [Ev(0.0, "first", u, right[u], home[u], "success", actor=u) for u in active]
    ev = []
    for u in others:
        for _ in range(rng.randint(1, 3)):
            ev.append(Ev(rng.random(), "familiar", u, right[u], home[u], "success", actor=u))
    for u in mistypers:
        t = rng.random()
        ev.append(Ev(t, "mistype", u, typo(rng, right[u]), home[u], "failure", actor=u))
        ev.append(Ev(t + 1e-6, "after_mistype", u, right[u], home[u], "success", actor=u))
    for n, u in enumerate(sorted(travellers)):
        t = rng.random()
        away = "203.0.113.%d" % (n + 1)
        ev.append(Ev(t, "travel", u, right[u], away, "success", actor=u))
        ev.append(Ev(t + 1e-6, "travel", u, right[u], away, "success", actor=u))
    for n, u in enumerate(phones):
        carrier = "100.100.%d.%d" % (n, rng.randint(1, 250))
        stale = password(rng)
        start = rng.random() * 0.3
        for k in range(p["phone_retries"]):
            t = start + (0.65 * k) / p["phone_retries"]
            ev.append(Ev(t, "phone_stale", u, stale, carrier, "failure", actor=u))
        ev.append(Ev(0.97, "phone_updated", u, right[u], carrier, "success", actor=u))
    # The victim keeps working from familiar places during the attack.
    for k in range(6):
        ev.append(Ev((k + 0.5) / 6, "victim_familiar", target, right[target], home[target],
                     "success", actor=target))

    # A password spray: every account, one common password a round, from a
    # pool of IPs (each IP ~accounts/spray_ips users a round).
    spray_ips = ["198.18.%d.%d" % (i // 250, i % 250 + 1) for i in range(p["spray_ips"])]
    words = rng.sample(COMMON, p["spray_rounds"] + p["slow_rounds"])
    for r in range(p["spray_rounds"]):
        order = accounts[:]
        rng.shuffle(order)
        for u in order:
            ev.append(Ev((r + rng.random()) / p["spray_rounds"], "spray", u, words[r],
                         rng.choice(spray_ips), path=rng.choice(ATTACK_PATHS), rnd=r))
    # A distributed brute force: one user, hundreds of IPs, a different
    # password every guess.
    n = 0
    for i in range(p["brute_ips"]):
        ip = "198.18.%d.%d" % (100 + i // 250, i % 250 + 1)
        for _ in range(p["brute_per_ip"]):
            n += 1
            ev.append(Ev(rng.random(), "brute_force", target, "Guess-%d-%s" % (n, password(rng)[:6]), ip,
                         path=rng.choice(ATTACK_PATHS)))
    # A slow spray: each IP tries at most distinct_users - 1 users over the
    # whole campaign (3 a round over up to 3 rounds: never 10).
    per_ip = max(1, (DISTINCT_USERS - 1) // max(1, p["slow_rounds"]))
    slow_ips = ["198.19.%d.%d" % (i // 250, i % 250 + 1)
                for i in range((len(accounts) + per_ip - 1) // per_ip)]
    for r in range(p["slow_rounds"]):
        order = accounts[:]
        rng.shuffle(order)
        word = words[p["spray_rounds"] + r]
        for k, u in enumerate(order):
            ev.append(Ev((r + rng.random()) / p["slow_rounds"], "slow_spray", u, word,
                         slow_ips[k // per_ip], path=rng.choice(ATTACK_PATHS), rnd=r))

    ev.sort(key=lambda e: e.t)
    for i, e in enumerate(warm + ev):
        e.id = i
    last = {}
    for e in warm + ev:
        if e.actor is not None:
            e.after = last.get(e.actor)
            last[e.actor] = e.id
    facts = dict(p, target=target, legit_users=set(active), right=right)
    return warm, ev, facts


def request(e):
    """(content type, body) of a sign-in as its door expects it."""
    if e.path.startswith(PATH_TOKEN):
        return ("application/x-www-form-urlencoded", urllib.parse.urlencode(dict(
            grant_type="password", username=e.user, password=e.password,
            client_id="0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", scope="openid")))
    if e.path.startswith("/adfs/ls"):
        return ("application/x-www-form-urlencoded", urllib.parse.urlencode(dict(
            UserName=e.user, Password=e.password, AuthMethod="FormsAuthentication")))
    return ("application/soap+xml; charset=utf-8", envelope(e))


def envelope(e):
    """A WS-Trust request as Exchange Online relays it (2005 or 1.3)."""
    user, pw = escape(e.user), escape(e.password, {'"': "&quot;", "'": "&apos;"})
    if e.path == PATH_13:
        return ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
                '<a:Action s:mustUnderstand="1">http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue</a:Action>'
                '<o:Security s:mustUnderstand="1" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
                '<o:UsernameToken><o:Username>%s</o:Username><o:Password Type="http://docs.oasis-open.org/wss/2004/01/'
                'oasis-200401-wss-username-token-profile-1.0#PasswordText">%s</o:Password></o:UsernameToken>'
                '</o:Security></s:Header><s:Body><trust:RequestSecurityToken xmlns:trust="http://docs.oasis-open.org/ws-sx/ws-trust/200512">'
                '<trust:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</trust:RequestType>'
                '</trust:RequestSecurityToken></s:Body></s:Envelope>' % (user, pw))
    return ('<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
            '<a:Action>http://schemas.xmlsoap.org/ws/2005/02/trust/RST/Issue</a:Action>'
            '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
            '<wsse:UsernameToken><wsse:Username>%s</wsse:Username><wsse:Password>%s</wsse:Password>'
            '</wsse:UsernameToken></wsse:Security></s:Header><s:Body>'
            '<t:RequestSecurityToken xmlns:t="http://schemas.xmlsoap.org/ws/2005/02/trust">'
            '<t:RequestType>http://schemas.xmlsoap.org/ws/2005/02/trust/Issue</t:RequestType>'
            '</t:RequestSecurityToken></s:Body></s:Envelope>' % (user, pw))


# ---- the STS ---------------------------------------------------------------

USERNAME = re.compile(rb"<(?:[\w.-]+:)?Username(?:\s[^>]*)?>(.*?)</", re.S)
PASSWORD = re.compile(rb"<(?:[\w.-]+:)?Password(?:\s[^>]*)?>(.*?)</", re.S)
XML_ENTITIES = {"&quot;": '"', "&apos;": "'"}
ROPC_TOKEN = b'{"access_token":"eyJ0eXAiOiJKV1QifQ.e30.c2ln","token_type":"bearer","expires_in":3600}'
ROPC_FAILURE = b'{"error":"invalid_grant","error_description":"MSIS9659: Invalid \'username\' or \'password\'."}'
FORMS_FAILURE = (b'<html><body><form method="post" id="loginForm"><span id="errorText" for="" aria-live="assertive"'
                 b' role="alert">Incorrect user ID or password. Type the correct user ID and password, and try'
                 b' again.</span></form></body></html>')


class Sts:
    """A loopback STS that checks passwords like ADFS and records what reaches it."""

    def __init__(self, right, answer_ms=0):
        self.answer_s = answer_ms / 1000.0
        self.right = {u.lower(): p for u, p in right.items()}
        self.success = open(os.path.join(ROOT, "testdata/wstrust/rstr-2005-success.xml"), "rb").read()
        self.fault = open(os.path.join(ROOT, "testdata/wstrust/fault-failed-authentication.xml"), "rb").read()
        self.reached = set()
        self.lock = threading.Lock()
        sts = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                door = protocol(self.path)
                if door == "wstrust":
                    user = USERNAME.search(body)
                    pw = PASSWORD.search(body)
                    ok = bool(user and pw) and sts.right.get(
                        unescape(user.group(1).decode(), XML_ENTITIES).lower()) == unescape(
                        pw.group(1).decode(), XML_ENTITIES)
                else:
                    form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
                    u, p = ("username", "password") if door == "oauth2_ropc" else ("UserName", "Password")
                    user, pw = form.get(u, [""])[0], form.get(p, [None])[0]
                    ok = sts.right.get(user.lower()) == pw
                cid = self.headers.get("X-Campaign-Id")
                if cid is not None:
                    with sts.lock:
                        sts.reached.add(int(cid))
                headers = []
                if door == "wstrust":
                    ctype = "application/soap+xml; charset=utf-8"
                    status, answer = (200, sts.success) if ok else (500, sts.fault)
                elif door == "oauth2_ropc":
                    ctype = "application/json;charset=UTF-8"
                    headers = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
                    status, answer = (200, ROPC_TOKEN) if ok else (400, ROPC_FAILURE)
                else:
                    ctype = "text/html; charset=utf-8"
                    if ok:
                        status, answer = 302, b""
                        headers = [("Location", self.path), ("Set-Cookie", "MSISAuth=AAEAAA; path=/adfs; HttpOnly; Secure")]
                    else:
                        status, answer = 200, FORMS_FAILURE
                if sts.answer_s:
                    time.sleep(sts.answer_s)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


# ---- the gate --------------------------------------------------------------

class Gate:
    """`stsgate run --config` on loopback in front of the STS."""

    def __init__(self, binary, sts_port, workdir, rules=RULES, delay="0s"):
        os.makedirs(os.path.join(workdir, "rules"))
        with open(os.path.join(workdir, "rules/wstrust.toml"), "w") as f:
            f.write(rules)
        with open(os.path.join(workdir, "admin.token"), "w") as f:
            f.write(TOKEN + "\n")
        with open(os.path.join(workdir, "stsgate.toml"), "w") as f:
            f.write(f"""rules = "rules/wstrust.toml"
[listen]
addr = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:{sts_port}"
[admin]
addr = "127.0.0.1:0"
token_file = "admin.token"
[state]
dir = "state"
[client_ip]
trusted_proxies = ["127.0.0.1"]
[blocked]
delay = "{delay}"
""")
        self.log = open(os.path.join(workdir, "decisions.jsonl"), "wb")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", os.path.join(workdir, "stsgate.toml")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.PIPE,
            env=dict(os.environ, STSGATE_LOG="warn,stsgate=info"))
        self.stderr = []
        ready = threading.Event()
        found = {}

        def read():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.stderr.append(line)
                if "stsgate ready" in line and not ready.is_set():
                    for w in line.split():
                        for k in ("listen=", "admin="):
                            if w.startswith(k):
                                found[k] = w[len(k):].split(",")[0]
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or "listen=" not in found:
            self.close()
            raise RuntimeError("stsgate did not get ready:\n" + "\n".join(self.stderr[-20:]))
        self.listen = found["listen="]
        self.admin = found["admin="]

    def api(self, path):
        req = urllib.request.Request("http://%s%s" % (self.admin, path),
                                     headers={"Authorization": "Bearer " + TOKEN})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen("http://%s/metrics" % self.admin, timeout=10) as r:
            return r.read().decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- sending ---------------------------------------------------------------

def send_all(gate, events, workers, status):
    """Sends `events` in order, `workers` at once; an actor's events one after
    the other. Fills status[id] with the HTTP status the client got."""
    done = {e.id: threading.Event() for e in events}
    it = iter(events)
    take = threading.Lock()
    errors = []

    def worker():
        conn = None
        while True:
            with take:
                e = next(it, None)
            if e is None:
                break
            if e.after in done:
                done[e.after].wait()
            ctype, body = request(e)
            body = body.encode()
            headers = {
                "Content-Type": ctype,
                "X-MS-Forwarded-Client-IP": e.ip,
                "X-MS-Client-Application": "Microsoft.Exchange.ActiveSync",
                "X-MS-Endpoint-Absolute-Path": e.path,
                "X-Campaign-Id": str(e.id),
            }
            for attempt in range(2):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(gate.listen, timeout=30)
                    conn.request("POST", e.path, body, headers)
                    r = conn.getresponse()
                    r.read()
                    status[e.id] = r.status
                    break
                except (OSError, http.client.HTTPException) as err:
                    conn = None
                    if attempt == 1:
                        errors.append("%s: %s" % (e.id, err))
                        status[e.id] = 0
            done[e.id].set()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("%d requests failed, first: %s" % (len(errors), errors[0]))


# ---- figures -----------------------------------------------------------------

def metric_lines(text, name):
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def figures(warm, events, facts, sts, status, gate, args, took):
    reached = sts.reached
    attacks = {}
    for kind in ATTACKS:
        es = [e for e in events if e.kind == kind]
        got = [e for e in es if e.id in reached]
        rounds = sorted({e.round for e in es if e.round is not None})
        attacks[kind] = dict(
            sent=len(es), reached=len(got),
            share_pct=round(100.0 * len(got) / len(es), 3) if es else 0.0,
            ips=len({e.ip for e in es}),
            reached_per_round=[sum(1 for e in got if e.round == r) for r in rounds],
            succeeded=sum(1 for e in es if status.get(e.id) == (302 if protocol(e.path) == "forms" else 200)),
            by_protocol={p: dict(sent=sum(1 for e in es if protocol(e.path) == p),
                                 reached=sum(1 for e in got if protocol(e.path) == p))
                         for p in ("wstrust", "oauth2_ropc", "forms")})
    sent = sum(a["sent"] for a in attacks.values())
    got = sum(a["reached"] for a in attacks.values())
    legit = warm + [e for e in events if e.expect is not None]
    refused = [e for e in legit if e.id not in reached]
    wrong = [e for e in legit if e.id in reached
             and (status.get(e.id) == 200) != (e.expect == "success")]
    by_kind = {}
    for e in legit:
        k = by_kind.setdefault(e.kind, dict(sent=0, refused=0, ok=0))
        k["sent"] += 1
        k["refused"] += e.id not in reached
        k["ok"] += status.get(e.id) == (200 if e.expect == "success" else 500)
    locked = gate.api("/api/v1/lockouts")
    blocks = gate.api("/api/v1/blocks")
    metrics = gate.metrics()
    decisions = {k: v for k, v in metric_lines(metrics, "stsgate_decisions_total").items() if v}
    locked_users = sorted(l["user"] for l in locked)
    share = 100.0 * got / sent if sent else 0.0
    return dict(
        seed=args.seed, scale=args.scale, workers=args.workers, sts_ms=args.sts_ms, seconds=round(took, 1),
        accounts=facts["accounts"], active_users=facts["active"],
        rules=dict(threshold=THRESHOLD, distinct_users=DISTINCT_USERS,
                   same_password_users=SAME_PASSWORD_USERS),
        attacks=attacks,
        attacker=dict(sent=sent, reached=got, share_pct=round(share, 3)),
        legit=dict(sent=len(legit), refused=len(refused), unexpected=len(wrong),
                   by_kind=by_kind,
                   refused_examples=["%s %s from %s" % (e.kind, e.user, e.ip) for e in refused[:10]]),
        locked_users=locked_users,
        locked_legit=[u for u in locked_users if u in facts["legit_users"]],
        brute_force_target=facts["target"],
        spray_ip_blocks=sum(1 for b in blocks if b.get("origin") == "spray"),
        decisions=decisions,
        target=dict(max_share_pct=1.0, met=share < 1.0 and not refused and not wrong),
    )


def report(f):
    out = []
    w = out.append
    w("stsgate efficacy campaign: seed %d, scale %s, %d accounts, %d active users, %d requests at once,"
      " STS answers in %d ms, %.1f s" % (f["seed"], f["scale"], f["accounts"], f["active_users"], f["workers"],
                                          f["sts_ms"], f["seconds"]))
    w("rules: lockout threshold %d / 30m, spray distinct_users %d, same_password_users %d / 10m, block_for 1h;"
      " blocked.delay 0s" % (f["rules"]["threshold"], f["rules"]["distinct_users"], f["rules"]["same_password_users"]))
    w("")
    w("%-42s %7s %7s %12s %8s" % ("attack", "IPs", "guesses", "reached STS", "share"))
    for kind in ATTACKS:
        a = f["attacks"][kind]
        extra = ""
        if a["reached_per_round"]:
            extra = "  per round: " + ", ".join(str(n) for n in a["reached_per_round"])
        w("%-42s %7d %7d %12d %7.2f %%%s" % (ATTACK_NAMES[kind], a["ips"], a["sent"], a["reached"],
                                              a["share_pct"], extra))
    for p in ("wstrust", "oauth2_ropc", "forms"):
        sent = sum(f["attacks"][k]["by_protocol"][p]["sent"] for k in ATTACKS)
        got = sum(f["attacks"][k]["by_protocol"][p]["reached"] for k in ATTACKS)
        w("%-42s %7s %7d %12d %7.2f %%" % ("  of them to " + p, "", sent, got, 100.0 * got / sent if sent else 0.0))
    a = f["attacker"]
    w("%-42s %7s %7d %12d %7.2f %%   target < 1 %%" % ("all attacker guesses", "", a["sent"], a["reached"],
                                                     a["share_pct"]))
    w("")
    l = f["legit"]
    w("legitimate sign-ins: %d sent, %d refused by the gate, %d answered otherwise than expected"
      % (l["sent"], l["refused"], l["unexpected"]))
    for kind, k in sorted(l["by_kind"].items()):
        w("  %-18s %5d sent %5d refused %5d as expected" % (kind, k["sent"], k["refused"], k["ok"]))
    for ex in l["refused_examples"]:
        w("  refused: " + ex)
    w("users locked (for unfamiliar IPs): %d, of them active legitimate users: %d %s"
      % (len(f["locked_users"]), len(f["locked_legit"]),
         "(the brute force's target)" if f["locked_legit"] == [f["brute_force_target"]] else f["locked_legit"]))
    w("per-IP spray blocks: %d" % f["spray_ip_blocks"])
    w("gate decisions: " + ", ".join("%s %d" % (k, v) for k, v in sorted(f["decisions"].items())))
    w("")
    w("target (< 1 %% of attacker guesses reach the STS, 0 legitimate sign-ins refused): %s"
      % ("met" if f["target"]["met"] else "MISSED"))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stsgate", default=os.path.join(ROOT, "target/release/stsgate"))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--workers", type=int, default=16, help="requests in flight at once; default 16")
    ap.add_argument("--sts-ms", type=int, default=100,
                    help="the STS takes this long to answer; default 100 (blocked.delay's assumption)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    warm, events, facts = campaign(args.seed, args.scale)
    sts = Sts(facts["right"], args.sts_ms)
    with tempfile.TemporaryDirectory(prefix="stsgate-campaign-") as work:
        gate = Gate(args.stsgate, sts.port, work)
        try:
            status = {}
            started = time.monotonic()
            send_all(gate, warm, args.workers, status)
            send_all(gate, events, args.workers, status)
            took = time.monotonic() - started
            f = figures(warm, events, facts, sts, status, gate, args, took)
        finally:
            gate.close()
            sts.stop()
    print(json.dumps(f, indent=2) if args.json else report(f))
    return 0 if f["target"]["met"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as err:
        print("campaign replay failed: %s" % err, file=sys.stderr)
        sys.exit(2)
