"""The Python agent's cost on /hello counted in instructions: no timing noise.

bench.py times server processes against each other, and on a shared machine a
Python server's CPU per request moves by more between two measures than the agent's
share of it. This bench runs each variant of bench.py's servers under valgrind's
callgrind, which counts the instructions the server process executes (user space:
the interpreter, the C libraries; not the kernel), and, with CACHE=1, simulates its
caches and branch predictors. A count is exact: two runs of one variant agree to
~0.2%.

Per variant: the server starts under callgrind with counting off, answers WARM
requests, then counting is switched on for REQUESTS requests of bench.py's
closed-loop client (CONCURRENCY keep-alive connections) and the counts are dumped.
Printed per request: instructions (Ir) and, with CACHE=1, first-level cache misses
(instruction + data), last-level misses and mispredicted branches, and the cycle
estimate that KCachegrind shows (Ir + 10 x first-level misses + 100 x last-level
misses + 10 x mispredicted branches); then each agent variant against its bare
server.

  PYTHON=target/python-agent-venv/bin/python python3 assets/agents/python/bench_instructions.py
  CACHE=1 ONLY=uvicorn REQUESTS=2000 ...                      (the simulation: ~3x slower)

Needs valgrind (skipped with a message without it). The time-dependent parts of the
agent (the 1 ms lag ticks, the telemetry process) run in valgrind's slowed-down time:
the server runs ~40x slower, so a tick falls on nearly every pass of the loop, more
often a request than at full speed, and this overstates the ticks' share.
Loopback only; every load is bounded by REQUESTS and by bench.py's MAX_S.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("MAX_S", "900")  # the server runs ~40x slower under valgrind
import bench  # noqa: E402  (its variants, its client, its paths)

REQUESTS = int(os.environ.get("REQUESTS", "3000"))
WARM = int(os.environ.get("WARM", "300"))
CACHE = os.environ.get("CACHE") == "1"
OUT = os.path.join(bench.ROOT, "target", "bench-instructions")
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def counted(name, cmd, env):
    """Runs one variant under callgrind; its counts over REQUESTS requests."""
    cmd, full, port = bench.server(cmd, env)
    out = os.path.join(OUT, "%s.out" % name.replace(" ", "_").replace("/", ""))
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out]
    if CACHE:
        grind += ["--cache-sim=yes", "--branch-sim=yes"]
    log = open(out + ".log", "w")
    child = subprocess.Popen(grind + cmd, env=full, cwd=bench.AGENTS, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        app = "127.0.0.1:%d" % port
        bench.wait_listening(app, time.monotonic() + 120)
        bench.load(app, WARM)
        control = ["callgrind_control"]
        subprocess.run(control + ["-i", "on", str(child.pid)], check=True, **QUIET)
        answered, _ = bench.load(app, REQUESTS)
        subprocess.run(control + ["-d", str(child.pid)], check=True, **QUIET)
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait()
        log.close()
    if answered != REQUESTS:
        sys.exit("%s: %d of %d requests answered" % (name, answered, REQUESTS))
    return {k: v / answered for k, v in totals(out + ".1").items()}


def totals(path):
    """The event totals of a callgrind dump: {event: count}."""
    events = counts = None
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:") or line.startswith("summary:"):
                counts = [int(x) for x in line.split()[1:]]
    if not events or not counts:
        sys.exit("no totals in %s" % path)
    return dict(zip(events, counts))


def figures(c):
    """Instructions and, when simulated, misses and the cycle estimate."""
    out = {"Ir": c["Ir"]}
    if "D1mr" in c:
        out["L1m"] = c["I1mr"] + c["D1mr"] + c["D1mw"]
        out["LLm"] = c["ILmr"] + c["DLmr"] + c["DLmw"]
        out["Bm"] = c["Bcm"] + c["Bim"]
        out["CEst"] = out["Ir"] + 10 * out["L1m"] + 100 * out["LLm"] + 10 * out["Bm"]
    return out


def main():
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("skipped: valgrind is not installed")
        return
    os.makedirs(OUT, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results = []
    for name, cmd, env, base in bench.variants():
        f = figures(counted(name, cmd, env))
        results.append((name, f, base))
        print("%-40s %s" % (name, "  ".join("%s %.0f" % kv for kv in f.items())), flush=True)
    print()
    for name, f, base in results:
        if base is not None:
            b = results[base][1]
            print("%-40s %s" % (name + " / bare", "  ".join(
                "%s %+.2f%%" % (k, (f[k] / b[k] - 1) * 100) for k in f)))


if __name__ == "__main__":
    main()
