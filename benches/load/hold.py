#!/usr/bin/env python3
"""Opens keep-alive connections, sends one WS-Trust POST on each, and holds them idle.

usage: hold.py PORT COUNT BODY_FILE PATH READY_FILE
Opens COUNT connections to 127.0.0.1:PORT, sends the POST on each and reads
its answer (which must be 200), then writes READY_FILE and keeps every
connection open and idle until READY_FILE is removed. Exits 1 if an answer
is not 200 or a connection is closed early.
"""
import os
import socket
import sys
import time

port, count, body_file, path, ready = (
    int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
with open(body_file, "rb") as f:
    body = f.read()
request = (
    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    "Content-Type: application/soap+xml; charset=utf-8\r\n"
    "X-MS-Client-Application: Microsoft.Exchange.ActiveSync\r\n"
    "X-MS-Client-User-Agent: Apple-iPhone3C1/811.2\r\n"
    f"Content-Length: {len(body)}\r\n\r\n"
).encode() + body


def answer(sock):
    """Reads one HTTP/1.1 answer with a Content-Length; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the answer")
        rest += chunk
    return int(lines[0].split()[1])


held = []
# In batches: send on a batch of new connections, then read their answers.
for start in range(0, count, 100):
    batch = [socket.create_connection(("127.0.0.1", port))
             for _ in range(min(100, count - start))]
    for sock in batch:
        sock.sendall(request)
    for sock in batch:
        status = answer(sock)
        if status != 200:
            print(f"answer {status}, not 200", file=sys.stderr)
            sys.exit(1)
    held.extend(batch)

with open(ready, "w") as f:
    f.write(f"{len(held)}\n")
while os.path.exists(ready):
    time.sleep(0.1)
# Still open at the end? A server that dropped idle connections fails the test.
for sock in held:
    sock.setblocking(False)
    try:
        if sock.recv(1) == b"":
            print("a held connection was closed by the server", file=sys.stderr)
            sys.exit(1)
    except BlockingIOError:
        pass
