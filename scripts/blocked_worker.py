#!/usr/bin/env python3
"""Client-side latency of /hello while /block holds workers of a loopscope demo.

    loopscope demo --model tokio --port 8000 --no-telemetry &
    scripts/blocked_worker.py 127.0.0.1:8000 [rounds]

Each round (a fixed number, every request bounded by a 5 s timeout), on loopback:
- one:   /block?ms=500 on a new connection; 100 ms later, 8 concurrent /hello on
         new connections and one /hello on each of 4 keep-alive connections opened
         (and used) before the block;
- burst: /block?ms=500 and 16 /hello on new connections, sent at the same instant;
- both:  two concurrent /block?ms=500; 100 ms later, 8 /hello on new connections.
Prints, per case, the /hello latencies (p50, max, how many took 300 ms or more) and
which workers answered the blocks and the hellos.
"""
import http.client
import json
import os
import sys
import threading
import time

HOST, PORT = sys.argv[1].rsplit(":", 1)
ROUNDS = min(int(sys.argv[2]) if len(sys.argv) > 2 else 5, 50)
TIMEOUT = 5.0
VERBOSE = bool(os.environ.get("VERBOSE"))


def get(path, conn=None):
    """GET path (on conn, or a new connection): (seconds, worker) or (None, error)."""
    c = conn or http.client.HTTPConnection(HOST, int(PORT), timeout=TIMEOUT)
    start = time.monotonic()
    try:
        c.request("GET", path)
        body = c.getresponse().read()
        return time.monotonic() - start, json.loads(body).get("worker")
    except Exception as e:  # a timeout or a closed connection: reported, not fatal
        return None, repr(e)
    finally:
        if conn is None:
            c.close()


def spawn(results, path, conn=None):
    t = threading.Thread(target=lambda: results.append(get(path, conn)))
    t.start()
    return t


def round_one(keep):
    blocks, hellos, kept = [], [], []
    threads = [spawn(blocks, "/block?ms=500")]
    time.sleep(0.1)
    threads += [spawn(hellos, "/hello") for _ in range(8)]
    threads += [spawn(kept, "/hello", c) for c in keep]
    for t in threads:
        t.join(TIMEOUT + 1)
    return blocks, hellos, kept


def round_burst():
    blocks, hellos = [], []
    threads = [spawn(blocks, "/block?ms=500")]
    threads += [spawn(hellos, "/hello") for _ in range(16)]
    for t in threads:
        t.join(TIMEOUT + 1)
    return blocks, hellos


def round_both():
    blocks, hellos = [], []
    threads = [spawn(blocks, "/block?ms=500") for _ in range(2)]
    time.sleep(0.1)
    threads += [spawn(hellos, "/hello") for _ in range(8)]
    for t in threads:
        t.join(TIMEOUT + 1)
    return blocks, hellos


def report(name, blocks, hellos):
    ms = sorted(s * 1000 for s, _ in hellos if s is not None)
    failed = sum(1 for s, _ in hellos if s is None)
    served = sorted({w for s, w in hellos if s is not None})
    blocked = sorted(w for s, w in blocks if s is not None)
    slow = sum(1 for m in ms if m >= 300)
    p50 = ms[len(ms) // 2] if ms else float("nan")
    top = ms[-1] if ms else float("nan")
    print(
        f"{name:<12} n={len(ms):<4} p50={p50:7.1f} ms  max={top:7.1f} ms  "
        f">=300ms: {slow:<4} failed: {failed}  blocks on {blocked}  hellos on {served}"
    )


def main():
    one, kept, burst, both = ([], []), [], ([], []), ([], [])
    for _ in range(ROUNDS):
        keep = [http.client.HTTPConnection(HOST, int(PORT), timeout=TIMEOUT) for _ in range(4)]
        for c in keep:
            get("/hello", c)
        b, h, k = round_one(keep)
        if VERBOSE:
            report("  round", b, h + k)
        one[0].extend(b), one[1].extend(h), kept.extend(k)
        for c in keep:
            c.close()
        time.sleep(0.2)
        b, h = round_burst()
        burst[0].extend(b), burst[1].extend(h)
        time.sleep(0.2)
        b, h = round_both()
        both[0].extend(b), both[1].extend(h)
        time.sleep(0.2)
    report("one/new", *one)
    report("one/kept", one[0], kept)
    report("burst", *burst)
    report("both", *both)


main()
