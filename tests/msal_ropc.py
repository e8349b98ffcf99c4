#!/usr/bin/env python3
"""One OAuth2 resource-owner password sign-in with MSAL Python.

    msal_ropc.py AUTHORITY CA_FILE USER PASSWORD

AUTHORITY is the gate as an ADFS authority (`https://127.0.0.1:PORT/adfs`;
MSAL accepts only https). MSAL reads `AUTHORITY/.well-known/openid-configuration`
(the loopback STS serves it; it passes the gate undecided, a GET outside
`filter.paths`), then `acquire_token_by_username_password` POSTs
`grant_type=password` to its token endpoint. CA_FILE is the gate's test CA.
Prints one JSON line: whether a token came back, and MSAL's `error` and
`error_description` otherwise. Used by tests/tests/ropc.rs; `pip install msal`
(scripts/test.sh does).
"""

import json
import os
import sys

import msal


def main():
    authority, ca_file, user, password = sys.argv[1:5]
    # requests lets these variables override a session's `verify`.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ[name] = ca_file
    app = msal.PublicClientApplication(
        "8e3a7c1b-0d6f-4b2a-9c55-3f1e2d4a6b70",
        authority=authority,
        verify=ca_file,
        timeout=20,
    )
    result = app.acquire_token_by_username_password(
        user, password, scopes=["urn:microsoft:userinfo/user_impersonation"]
    )
    print(json.dumps({
        "token": "access_token" in result,
        "error": result.get("error"),
        "error_description": result.get("error_description"),
    }))


if __name__ == "__main__":
    main()
