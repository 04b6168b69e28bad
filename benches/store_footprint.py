#!/usr/bin/env python3
"""Redis bytes per user: what stepgate keeps for each user, at scale.

Starts a real redis-server and a stepgate gateway on it (free loopback
ports), then signs in USERS users who each enroll a PIN and step up once
through the browser pages (the PIN step-up opens the device's PIN session),
and USERS more who only enroll. Then it asks Redis for `MEMORY USAGE` of
every key and prints, per user, the bytes and keys by kind, as a Markdown
table (benches/RESULTS.md keeps a run).

The recovery index is kept in 262,144 small hashes per kind, so its cost
per entry depends on how many users share a bucket: with 50 users each
bucket holds one entry, at ten million ~38. The second table fills up to
20 of the gateway's own buckets, with entries of the same shape, to what
`--scale` users would put in them, measures them again, and gives the
bytes per user at that scale.

    benches/store_footprint.py [--users 50] [--scale 10000000] [--stepgate target/release/stepgate]

Only loopback; everything it starts is stopped on exit.
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} is not listening on {port}")


class Redis:
    """The few RESP commands this script needs, over one socket."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self.read()

    def read(self):
        line = self.f.readline().rstrip(b"\r\n")
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
            data = self.f.read(n + 2)[:-2]
            return data
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def keys(self):
        cursor, out = b"0", []
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "COUNT", 1000)
            out += batch
            if cursor == b"0":
                return out


def request(port, method, path, cookie, form=None, html=True):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Cookie": cookie, "User-Agent": UA}
    if html:
        headers["Accept"] = "text/html"
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["Origin"] = f"http://127.0.0.1:{port}"
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheaders(), data.decode("utf-8", "replace")


# A browser's User-Agent: the device label a PIN session keeps comes from it.
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/131.0.0.0 Safari/537.36")


# The gateway's `store.key_prefix` (the default), left out of the kinds.
PREFIX = "stepgate:"


def kind_of(key):
    """A key's kind, with the user, address or token part taken out."""
    k = key.removeprefix(PREFIX)
    k = re.sub(r"\{u:[^}]*\}", "{u}", k)
    k = re.sub(r"^(ps|pat|used|reset|kept|oidc):[^:]+", r"\1:…", k)
    k = re.sub(r"^idx:(\w+):[^:]+", r"idx:\1:…", k)
    k = re.sub(r"^i:(\w+):[^:]+", r"i:\1:…", k)
    k = re.sub(r"^ip:[^:]+", "ip:…", k)
    return k


# Buckets per index kind (`keys::index`: 3 base64url characters).
BUCKETS = 64 ** 3


def index_at_scale(r, scale, sample=20):
    """Bytes per index entry when `scale` users share the buckets: up to
    `sample` of the gateway's `idx:` buckets topped up to scale/BUCKETS
    entries (13-character fields, values shaped like the gateway's), then
    measured. Returns (entries per bucket, bytes per entry)."""
    per_bucket = max(1, round(scale / BUCKETS))
    buckets = [k for k in r.keys() if k.decode().removeprefix(PREFIX).startswith("idx:")]
    buckets = buckets[:sample]
    if not buckets:
        sys.exit("no index buckets to measure")
    total_b = total_n = 0
    for b in buckets:
        if r.cmd("TYPE", b) != "hash":
            sys.exit(f"{b!r} is not a hash: the index is not bucketed")
        fields = r.cmd("HKEYS", b)
        value = r.cmd("HGET", b, fields[0])
        i = 0
        while r.cmd("HLEN", b) < per_bucket:
            filler = f"{os.urandom(7).hex()[:9]}{i:04d}"  # 13 characters
            r.cmd("HSET", b, filler, value[:-4] + f"{i:04d}".encode())
            i += 1
        total_n += r.cmd("HLEN", b)
        total_b += r.cmd("MEMORY", "USAGE", b, "SAMPLES", "0")
    return per_bucket, total_b / total_n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--scale", type=int, default=10_000_000,
                    help="users the index buckets are filled for in the second table")
    ap.add_argument("--stepgate", default=os.path.join(ROOT, "target/release/stepgate"))
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is missing (scripts/install-deps.sh bench installs it)")
    w = tempfile.mkdtemp(prefix="stepgate-footprint.")
    procs = []
    try:
        rp, sp = free_port(), free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", w],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(rp, redis, "redis-server")
        with open(os.path.join(w, "policy.yaml"), "w") as f:
            f.write("default: authenticated\nrules:\n  - name: admin\n"
                    "    match: { path: \"/admin/**\" }\n    require: step_up\n"
                    "    step_up: { methods: [pin], max_age: 1h }\n")
        cfg = os.path.join(w, "sg.yaml")
        with open(cfg, "w") as f:
            f.write(f"""listen: "127.0.0.1:{sp}"
upstream: "http://127.0.0.1:9"
policy: policy.yaml
first_factor:
  cookie: access_token
  jwt:
    algorithms: [HS256]
    secret: "footprint-first-factor-secret-0123456789abcdef"
signing:
  secret: "footprint-signing-secret-0123456789abcdef01"
store:
  kind: redis
  url: "redis://127.0.0.1:{rp}"
lockout: {{ max_failures: 1000000, ip_max_failures: 1000000 }}
assertion:
  key_file: assertion-key.pem
log:
  format: json
upgrade_sock: {w}/sg.sock
pid_file: {w}/sg.pid
""")
        sg = subprocess.Popen([args.stepgate, "serve", "--config", cfg],
                              stdout=open(os.path.join(w, "sg.log"), "w"),
                              stderr=subprocess.STDOUT, cwd=w)
        procs.append(sg)
        wait_port(sp, sg, "stepgate")

        def token(sub):
            return subprocess.check_output(
                [args.stepgate, "token", "--config", cfg, "--sub", sub,
                 "--email", f"{sub}@example.com", "--ttl", "7200"], cwd=w).decode().strip()

        def enroll(sub, step_up):
            cookie = f"access_token={token(sub)}"
            st, _, page = request(sp, "GET", "/.stepgate/pin/setup?return_to=/admin/x", cookie)
            m = re.search(r'name="csrf" value="([^"]*)"', page)
            if st != 200 or not m:
                sys.exit(f"PIN setup page for {sub}: {st}")
            csrf = m.group(1)
            st, _, _ = request(sp, "POST", "/.stepgate/pin/setup", cookie, {
                "pin": "2580", "pin_confirm": "2580", "csrf": csrf, "return_to": "/admin/x"})
            if st != 303:
                sys.exit(f"PIN setup for {sub} answered {st}")
            if step_up:
                st, hdrs, _ = request(sp, "POST", "/.stepgate/pin", cookie, {
                    "pin": "2580", "csrf": csrf, "return_to": "/admin/x"})
                if st != 303 or not any(k.lower() == "set-cookie" and "stepgate_su=" in v
                                        for k, v in hdrs):
                    sys.exit(f"PIN step-up for {sub} answered {st} without a step-up cookie")

        r = Redis(rp)
        results = {}
        for group, step_up in (("enrolled and stepped up once", True), ("enrolled only", False)):
            r.cmd("FLUSHALL")
            for i in range(args.users):
                enroll(f"{'active' if step_up else 'idle'}-user-{i:04d}", step_up)
            by_kind = {}
            for key in r.keys():
                name = key.decode()
                n = r.cmd("MEMORY", "USAGE", key, "SAMPLES", "0")
                b, c = by_kind.get(kind_of(name), (0, 0))
                by_kind[kind_of(name)] = (b + n, c + 1)
            # Index entries per user, read as fields (a bucket is one key).
            entries = sum(r.cmd("HLEN", k) for k in r.keys()
                          if k.decode().removeprefix(PREFIX).startswith("idx:"))
            per_bucket, per_entry = index_at_scale(r, args.scale)
            results[group] = (by_kind, entries / args.users, per_bucket, per_entry)

        print(f"Redis {r.cmd('INFO', 'server').decode().split('redis_version:')[1].split()[0]}, "
              f"{args.users} users per group, `MEMORY USAGE` of every key, per user\n")
        print("| group | key kind | keys per user | bytes per user |")
        print("|---|---|---|---|")
        for group, (by_kind, _, _, _) in results.items():
            total_b = sum(b for b, _ in by_kind.values())
            total_k = sum(c for _, c in by_kind.values())
            for kind, (b, c) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
                print(f"| {group} | `{kind}` | {c / args.users:.2f} | {b / args.users:.0f} |")
            print(f"| **{group}** | **all** | **{total_k / args.users:.2f}** | "
                  f"**{total_b / args.users:.0f}** |")
        print(f"\nAt {args.scale:,} users: index buckets topped up to the entries per "
              f"bucket that many users make, `MEMORY USAGE` again\n")
        print("| group | index entries per user | entries per bucket | bytes per index entry "
              "| other keys, bytes per user | **bytes per user** |")
        print("|---|---|---|---|---|---|")
        for group, (by_kind, entries, per_bucket, per_entry) in results.items():
            other = sum(b for k, (b, _) in by_kind.items() if not k.startswith("idx:"))
            other /= args.users
            print(f"| {group} | {entries:.2f} | {per_bucket} | {per_entry:.1f} | {other:.0f} "
                  f"| **{other + entries * per_entry:.0f}** |")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
