#!/usr/bin/env python3
"""How long a refusal takes, beside how long the STS takes to fail a sign-in.

With `blocked.delay = "auto"` the gate answers a refusal after a delay drawn
from the STS's recent failed sign-in latencies, so a client cannot tell the
gate's "no" from the directory's by timing. This starts, on loopback, an STS
whose failures take 60-240 ms (uniform, seeded), the real gate in front of it
(release build), sends failed sign-ins that reach the STS, then the same
requests from a blocked client IP, and prints both latency distributions.

Usage: benches/timing/run.sh   (builds the release binary, then runs this)
"""

import http.client
import json
import os
import random
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "campaign"))
import replay  # noqa: E402  (the campaign's ADFS-like STS)

N = int(os.environ.get("N", "200"))


class SlowSts(replay.Sts):
    """Failures take 60-240 ms, like a directory under load."""

    rng = random.Random(7)

    @property
    def answer_s(self):
        return SlowSts.rng.uniform(0.060, 0.240)

    @answer_s.setter
    def answer_s(self, _):
        pass


def signin(listen, client, user):
    env = ("<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header>"
           "<o:Security xmlns:o=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">"
           "<o:UsernameToken><o:Username>%s</o:Username><o:Password>wrong</o:Password></o:UsernameToken>"
           "</o:Security></s:Header><s:Body/></s:Envelope>" % user).encode()
    host, port = listen.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    start = time.perf_counter()
    c.request("POST", replay.PATH_2005, body=env, headers={
        "Content-Type": "application/soap+xml; charset=utf-8",
        "X-MS-Forwarded-Client-IP": client})
    r = c.getresponse()
    r.read()
    took = (time.perf_counter() - start) * 1000
    c.close()
    return r.status, took


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main():
    binary = os.path.join(replay.ROOT, "target/release/stsgate")
    sts = SlowSts({}, 0)
    gate = replay.Gate(binary, sts.port, tempfile.mkdtemp(prefix="stsgate-timing-"),
                       rules="[request_blocking]\nenabled = false\n", delay="auto")
    try:
        real = [signin(gate.listen, "192.0.2.%d" % (i % 200 + 1), "user%d@contoso.com" % i) for i in range(N)]
        req = urllib.request.Request("http://%s/api/v1/blocks" % gate.admin, method="POST",
                                     data=json.dumps({"ip": "203.0.113.0/24", "ttl": "1h"}).encode(),
                                     headers={"Authorization": "Bearer " + replay.TOKEN})
        urllib.request.urlopen(req, timeout=10).read()
        refused = [signin(gate.listen, "203.0.113.%d" % (i % 200 + 1), "user%d@contoso.com" % i) for i in range(N)]
    finally:
        gate.close()
        sts.stop()
    assert all(s == 500 for s, _ in real + refused)
    print("%-34s %8s %8s %8s %8s %8s" % ("", "min", "p10", "p50", "p90", "max"))
    for name, rows in (("failed sign-in at the STS (ms)", real), ("refused by the gate (ms)", refused)):
        t = [ms for _, ms in rows]
        print("%-34s %8.1f %8.1f %8.1f %8.1f %8.1f" % (name, min(t), pct(t, 10), pct(t, 50), pct(t, 90), max(t)))


if __name__ == "__main__":
    main()
