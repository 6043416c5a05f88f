"""User and system CPU per request of uvicorn servers, bare and with install() only.

Four uvicorn + FastAPI servers (tests/agents/py_asgi.py) under bench.py's client:
bare, install() only (LOOPSCOPE_NAMING=0), and a second copy of each. They take
turns for ROUNDS rounds (the others stopped with SIGSTOP), REQUESTS requests each
turn; per server, the user and system time (/proc/PID/stat, utime and stime) over
the requests answered. A second copy of each shows how much two processes of one
variant differ; bench.py gives every server one hash seed (PYTHONHASHSEED, 0 unless
set; PYTHONHASHSEED=random gives each its own).

  PYTHON=target/python-agent-venv/bin/python python3 assets/agents/python/bench_split.py

Loopback only; every load is bounded by REQUESTS and by bench.py's MAX_S.
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (its servers, its client)

ROUNDS = int(os.environ.get("ROUNDS", "10"))
REQUESTS = int(os.environ.get("REQUESTS", "12000"))


def times(pid):
    """(utime, stime) of process ``pid``, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main():
    py = os.environ.get("PYTHON")
    if not py:
        sys.exit("PYTHON must name a Python with uvicorn and fastapi")
    uv = bench.uvicorn(py)
    if bench.PINNED:
        os.sched_setaffinity(0, {0})
    variants = [("bare", {"LOOPSCOPE_AGENT": "0"}), ("install() only", {"LOOPSCOPE_NAMING": "0"}),
                ("bare, copy 2", {"LOOPSCOPE_AGENT": "0"}),
                ("install() only, copy 2", {"LOOPSCOPE_NAMING": "0"})]
    servers = []
    tick = os.sysconf("SC_CLK_TCK")
    sums = {}
    try:
        for name, env in variants:
            child, app, _, _ = bench.start(uv, env)
            servers.append((name, child, app))
            os.kill(child.pid, signal.SIGSTOP)
            sums[name] = [0, 0, 0]
        for r in range(ROUNDS):
            for k in range(len(servers)):
                name, child, app = servers[(k + r) % len(servers)]
                os.kill(child.pid, signal.SIGCONT)
                bench.load(app, 300)  # the server wakes up
                u0, s0 = times(child.pid)
                answered, _ = bench.load(app, REQUESTS)
                u1, s1 = times(child.pid)
                os.kill(child.pid, signal.SIGSTOP)
                sums[name][0] += u1 - u0
                sums[name][1] += s1 - s0
                sums[name][2] += answered
    finally:
        for _, child, _ in servers:
            os.kill(child.pid, signal.SIGCONT)
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    print("seed %s, %d rounds of %d requests" % (os.environ.get("PYTHONHASHSEED", "0"),
                                                 ROUNDS, REQUESTS))
    for name, (u, s, n) in sums.items():
        us = 1e6 / tick / max(n, 1)
        print("%-24s user %6.1f µs  system %5.1f µs  total %6.1f µs a request (%d requests)"
              % (name, u * us, s * us, (u + s) * us, n))


if __name__ == "__main__":
    main()
