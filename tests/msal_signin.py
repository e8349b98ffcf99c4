#!/usr/bin/env python3
"""One WS-Trust sign-in with MSAL Python's own request builder and sender.

    msal_signin.py ENDPOINT_URL USER PASSWORD CLIENT_IP

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


class Client:
    """The `http_client` MSAL expects: `post(url, data=, headers=)`."""

    def __init__(self, client_ip):
        self.client_ip = client_ip
        self.status = None

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
