"""User and system CPU per request of uvicorn servers, bare and with the agent.

uvicorn + FastAPI servers (tests/agents/py_asgi.py) under bench.py's client: bare,
install() only (LOOPSCOPE_NAMING=0) and, with AGENT=1, the whole agent (asgi()),
COPIES processes of each (2 unless set). They take turns for ROUNDS rounds (the
others stopped with SIGSTOP), REQUESTS requests each turn; per variant, the user and
system time (/proc/PID/stat, utime and stime) of its copies over the requests they
answered, and how often the server's threads were put on a CPU (schedstat's third
field) per 1000 requests. The copies show how much processes of one variant differ;
bench.py gives every server one hash seed (PYTHONHASHSEED, 0 unless set;
PYTHONHASHSEED=random gives each its own). HUB_CPU=0 or 1 puts the agent's
telemetry process on that CPU (bench.py puts it on the client's, 0); unset, it keeps
its server's (1). HUB_CPU=stop stops it while its server is measured.

  PYTHON=target/python-agent-venv/bin/python python3 assets/agents/python/bench_split.py
  AGENT=1 COPIES=4 HUB_CPU=0 PYTHON=... python3 assets/agents/python/bench_split.py

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
COPIES = int(os.environ.get("COPIES", "2"))
HUB_CPU = os.environ.get("HUB_CPU", "")


def times(pid):
    """(utime, stime) of process ``pid``, in clock ticks, and its threads' times on a
    CPU (schedstat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    slices = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                slices += int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            pass
    return int(fields[11]), int(fields[12]), slices


def main():
    py = os.environ.get("PYTHON")
    if not py:
        sys.exit("PYTHON must name a Python with uvicorn and fastapi")
    uv = bench.uvicorn(py)
    if bench.PINNED:
        os.sched_setaffinity(0, {0})
    kinds = [("bare", {"LOOPSCOPE_AGENT": "0"}), ("install() only", {"LOOPSCOPE_NAMING": "0"})]
    if os.environ.get("AGENT") == "1":
        kinds.append(("agent", {}))
    servers = []
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for copy in range(COPIES):
            for name, env in kinds:
                child, app, _, hub = bench.start(uv, env)
                if hub and HUB_CPU in ("0", "1") and bench.PINNED:
                    os.sched_setaffinity(hub, {int(HUB_CPU)})
                # user and system ticks, requests, times on a CPU
                servers.append((name, child, app, hub, [0, 0, 0, 0]))
                os.kill(child.pid, signal.SIGSTOP)
        for r in range(ROUNDS):
            for k in range(len(servers)):
                name, child, app, hub, sums = servers[(k + r) % len(servers)]
                os.kill(child.pid, signal.SIGCONT)
                if hub and HUB_CPU == "stop":
                    os.kill(hub, signal.SIGSTOP)
                bench.load(app, 300)  # the server wakes up
                u0, s0, w0 = times(child.pid)
                answered, _ = bench.load(app, REQUESTS)
                u1, s1, w1 = times(child.pid)
                os.kill(child.pid, signal.SIGSTOP)
                if hub and HUB_CPU == "stop":
                    os.kill(hub, signal.SIGCONT)
                for f, d in enumerate((u1 - u0, s1 - s0, answered, w1 - w0)):
                    sums[f] += d
    finally:
        bench.kill_all(s[1] for s in servers)
    print("seed %s, %d copies, %d rounds of %d requests, telemetry process on CPU %s"
          % (os.environ.get("PYTHONHASHSEED", "0"), COPIES, ROUNDS, REQUESTS, HUB_CPU or "1"))
    bare = None
    for name, _ in kinds:
        mine = [srv[4] for srv in servers if srv[0] == name]
        u, s, n, w = (sum(c[f] for c in mine) for f in range(4))
        us = 1e6 / tick / max(n, 1)
        total = (u + s) * us
        bare = bare or total
        print("%-16s user %6.1f µs  system %5.1f µs  total %6.1f µs a request (%+.1f%%), "
              "%5.1f times on a CPU per 1000 requests (%d requests)"
              % (name, u * us, s * us, total, (total / bare - 1) * 100, w * 1000 / max(n, 1), n))
        copies = [1e6 / tick * (c[0] + c[1]) / max(c[2], 1) for c in mine]
        mean = sum(copies) / len(copies)
        sd = (sum((c - mean) ** 2 for c in copies) / max(len(copies) - 1, 1)) ** 0.5
        print("%16s copies %s µs; their spread (sd) %.1f%%, of the mean %.1f%%"
              % ("", " ".join("%.1f" % c for c in copies), sd / mean * 100,
                 sd / mean * 100 / len(copies) ** 0.5))


if __name__ == "__main__":
    main()
