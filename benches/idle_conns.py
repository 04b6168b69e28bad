#!/usr/bin/env python3
"""Open N keep-alive connections, send one request on each, and hold them idle.

    idle_conns.py --port P --path /admin/x --cookie 'access_token=...; stepgate_su=...' -n 1000 --hold 20

Prints `held N ok=K` once every connection has had its answer, then keeps
them open (idle) for --hold seconds and closes them. benches/load.sh reads
the proxy's VmRSS while they are held.
"""

import argparse
import resource
import socket
import sys
import time


def read_response(s):
    """Read one HTTP/1.1 response with Content-Length; return its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return status


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--cookie", default="")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--hold", type=float, default=20)
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    req = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
    if args.cookie:
        req += f"Cookie: {args.cookie}\r\n"
    req = (req + "\r\n").encode()
    socks, ok = [], 0
    for _ in range(args.n):
        s = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        s.sendall(req)
        if read_response(s) == 200:
            ok += 1
        socks.append(s)
    print(f"held {len(socks)} ok={ok}", flush=True)
    time.sleep(args.hold)
    for s in socks:
        s.close()
    print("closed", flush=True)
    sys.exit(0 if ok == args.n else 1)


if __name__ == "__main__":
    main()
