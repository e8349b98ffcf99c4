#!/usr/bin/env python3
"""One WS-Trust sign-in with MSAL Python's own request builder and sender.

    msal_signin.py ENDPOINT_URL USER PASSWORD CLIENT_IP
    msal_signin.py --mex MEX_URL

With --mex, MSAL's own metadata-exchange fetch (`msal.mex.send_request`,
the GET MSAL and Office clients make before a WS-Trust sign-in) instead:
prints the HTTP status and the username/password endpoint MSAL read from
the document (null when the document names none).

`msal.wstrust_request.send_request` builds the RST with `_build_rst` (WS-Trust
2005 or 1.3, chosen from the endpoint's path as MSAL does) and POSTs it; the
HTTP client here adds `X-MS-Forwarded-Client-IP: CLIENT_IP`, as Exchange
Online does when it relays a sign-in. Prints one JSON line: the HTTP status
and what MSAL's own parser made of the answer (the token type, or the error).
Used by tests/tests/msal.rs; `pip install msal` (scripts/test.sh does).
"""

import json
import sys
import urllib.error
import urllib.request

from msal.wstrust_request import send_request


class Answer:
    def __init__(self, status, text):
        self.status_code = status
        self.text = text

    def raise_for_status(self):
        if self.status_code >= 400:
            raise RuntimeError("HTTP %d" % self.status_code)


class Client:
    """The `http_client` MSAL expects: `post(url, data=, headers=)`."""

    def __init__(self, client_ip):
        self.client_ip = client_ip
        self.status = None

    def get(self, url, headers=None, **_):
        req = urllib.request.Request(url, headers=dict(headers or {}), method="GET")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                self.status = r.status
                return Answer(r.status, r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            self.status = e.code
            return Answer(e.code, e.read().decode("utf-8"))

    def post(self, url, data=None, headers=None, **_):
        headers = dict(headers or {}, **{"X-MS-Forwarded-Client-IP": self.client_ip})
        req = urllib.request.Request(url, data=data.encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                self.status = r.status
                return Answer(r.status, r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            self.status = e.code
            return Answer(e.code, e.read().decode("utf-8"))


def main():
    if sys.argv[1] == "--mex":
        from msal.mex import send_request as mex_send_request
        client = Client(None)
        try:
            endpoint = mex_send_request(sys.argv[2], client)
            out = {"status": client.status, "endpoint": endpoint}
        except RuntimeError as e:
            out = {"status": client.status, "error": str(e)}
        print(json.dumps(out))
        return
    url, user, password, client_ip = sys.argv[1:5]
    client = Client(client_ip)
    try:
        token = send_request(user, password, "urn:federation:MicrosoftOnline", url, None, client)
        out = {"status": client.status, "token_type": token["type"]}
    except RuntimeError as e:
        out = {"status": client.status, "error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
