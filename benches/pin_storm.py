#!/usr/bin/env python3
"""Keep N wrong-PIN submissions in flight against stepgate, continuously.

Each of N threads holds one keep-alive connection and POSTs a wrong PIN to
/.stepgate/pin with a valid CSRF token, again as soon as the answer (401)
arrives, so stepgate always has N Argon2 checks queued or running. With
--right-pin, every --right-every-th submission of each connection carries
the right PIN (303): `lockout.max_consecutive` wrong PINs in a row would
suspend the PIN and turn the storm into cheap 403s without any Argon2 check
(load.sh also raises max_consecutive to its limit, 100).

    pin_storm.py --port P --cookie 'access_token=...' --csrf C --concurrency 32 --seconds 60

Runs until SIGTERM (or --seconds), then prints one summary line:
`storm: N wrong-PIN submissions in T s (R/s), statuses {...}`.
Used by benches/load.sh; the gateway must allow this many failures
(lockout: { max_failures: 1000000, ip_max_failures: 1000000 }).
"""

import argparse
import collections
import http.client
import signal
import threading
import time
import urllib.parse


def worker(args, stop, counts, lock):
    def body(pin):
        return urllib.parse.urlencode({"pin": pin, "csrf": args.csrf, "return_to": "/admin/x"})

    wrong, right = body(args.pin), body(args.right_pin) if args.right_pin else None
    headers = {
        "Cookie": args.cookie,
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html",
    }
    conn = None
    sent = 0
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
            sent += 1
            use_right = right is not None and sent % args.right_every == 0
            conn.request("POST", "/.stepgate/pin", body=right if use_right else wrong,
                         headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.01)
        with lock:
            counts[status] += 1
    if conn is not None:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cookie", required=True)
    p.add_argument("--csrf", required=True)
    p.add_argument("--pin", default="9172")
    p.add_argument("--right-pin", help="the user's PIN, sent every --right-every submissions")
    p.add_argument("--right-every", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=12)
    args = p.parse_args()

    stop = threading.Event()
    counts = collections.Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=worker, args=(args, stop, counts, lock), daemon=True)
        for _ in range(args.concurrency)
    ]
    for t in threads:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    stop.wait(args.seconds)
    stop.set()
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(timeout=35)
    total = sum(counts.values())
    print(
        f"storm: {total} PIN submissions in {elapsed:.1f} s ({total / elapsed:.0f}/s), "
        f"statuses {dict(sorted(counts.items(), key=str))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
