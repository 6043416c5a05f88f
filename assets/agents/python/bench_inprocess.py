"""The Python agent's per-request work, switched on and off inside one uvicorn process.

bench.py compares separate server processes, with and without the agent; two
processes of one variant differ by more than the agent costs (bench_split.py prints
the spread of its copies: ~6% here). This bench runs one FastAPI app
(tests/agents/py_asgi.py, /hello) under uvicorn in this process, installs the agent
once, keeps one closed-loop client (bench.py's, a subprocess on CPU 0; the server on
CPU 1) sending all along, and switches the process between modes in short segments:

  bare    the app unwrapped, the loop's selector as the loop made it
  agent   the app wrapped by asgi() (each request named) and the agent's selector
          wrapper (busy time and the 1 ms lag ticks)
  A/A     bare again: the method's own bias, which should read ~0
  naming, selector   the two halves of the agent apart (MODES=...)

Each round runs every mode once, in a shuffled order, SEGMENT_MS each (after SETTLE_MS
for the requests of the previous mode to finish); a segment's figure is the process's
CPU time (user + system, time.process_time_ns) over the requests that began in it.
Printed per mode: the ratio of totals to bare, with its 95% interval (rounds drawn
again with replacement), the median of the per-round ratios and their quartiles, and
the mean per-round ratio with two standard errors. The app is
reached through a one-line dispatcher in every mode (the mode's app, and a count).
What a process gains once and for all from installing the agent (its telemetry
process, its shared memory, its patched pool and server hooks) is there in every
mode: this measures the per-request work, free of the difference between processes.

  PYTHON=target/python-agent-venv/bin/python
  $PYTHON assets/agents/python/bench_inprocess.py        # ROUNDS=2000, ~6 minutes
  MODES=bare,agent,naming,selector ROUNDS=1000 $PYTHON assets/agents/python/bench_inprocess.py

Loopback only; the client stops after twice the rounds' time plus 30 s at the latest.
"""

import asyncio
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (its client, its paths, its statistics)

sys.path.insert(0, bench.AGENTS)
os.environ.setdefault("LOOPSCOPE_TELEMETRY", "127.0.0.1:0")
os.environ["LOOPSCOPE_AGENT"] = "0"  # py_asgi: the app unwrapped; wrapped here

ROUNDS = int(os.environ.get("ROUNDS", "2000"))
SEGMENT_S = float(os.environ.get("SEGMENT_MS", "50")) / 1000
SETTLE_S = float(os.environ.get("SETTLE_MS", "10")) / 1000
MODES = tuple(os.environ.get("MODES", "bare,agent,A/A").split(","))


def stats(per, base):
    """``per`` against ``base`` (lists of (cpu_ns, requests), round by round)."""
    ratios = [(c / n) / (bc / bn) for (c, n), (bc, bn) in zip(per, base) if n and bn]
    ratios.sort()
    k = len(ratios)
    mean = sum(ratios) / k
    se = (sum((r - mean) ** 2 for r in ratios) / (k - 1) / k) ** 0.5
    totals = (sum(c for c, _ in per) / sum(n for _, n in per)) / (
        sum(c for c, _ in base) / sum(n for _, n in base))
    # The ratio of totals over rounds drawn again with replacement: its 95% interval.
    rng = random.Random(0)
    pairs = list(zip(per, base))
    boot = []
    for _ in range(1000):
        draw = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        c = sum(p[0][0] for p in draw) / sum(p[0][1] for p in draw)
        b = sum(p[1][0] for p in draw) / sum(p[1][1] for p in draw)
        boot.append(c / b)
    boot.sort()
    pct = lambda x: (x - 1) * 100  # noqa: E731
    return ("totals %+.2f%% (95%% interval %+.2f .. %+.2f%%), median %+.2f%% (quartiles "
            "%+.2f .. %+.2f%%), mean %+.2f%% ± %.2f (2 standard errors, %d rounds)"
            % (pct(totals), pct(boot[25]), pct(boot[974]), pct(ratios[k // 2]),
               pct(ratios[k // 4]), pct(ratios[3 * k // 4]), pct(mean), 200 * se, k))


async def main():
    import uvicorn

    import loopscope_agent
    import py_asgi

    raw = py_asgi.app
    wrapped = loopscope_agent.asgi(raw)
    state = [raw, 0]

    def app(scope, receive, send):
        state[1] += 1
        return state[0](scope, receive, send)

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False, interface="asgi3")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    original = loop._selector.select
    if not loopscope_agent.install():
        sys.exit("the agent did not start")
    watched = loop._selector.select
    seconds = ROUNDS * len(MODES) * (SEGMENT_S + SETTLE_S) + 3
    client = ("import os, sys; sys.path.insert(0, %r); %s import bench; "
              "print(bench.load('127.0.0.1:%d', 10**9)[0])"
              % (HERE, "os.sched_setaffinity(0, {0});" if bench.PINNED else "", port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", client, stdout=subprocess.DEVNULL,
        env=dict(os.environ, MAX_S=str(2 * seconds + 30)))
    per = {m: [] for m in MODES}
    rng = random.Random(int(os.environ.get("SEED", "1")))
    # DUMP=FILE: every segment's mode, end (ns), CPU (ns) and requests.
    dump = open(os.environ["DUMP"], "w") if os.environ.get("DUMP") else None
    try:
        await asyncio.sleep(2.0)  # the client starts; the server warms up
        for _ in range(ROUNDS):
            if proc.returncode is not None:
                sys.exit("the client stopped before the rounds did")
            order = list(MODES)
            rng.shuffle(order)
            for mode in order:
                state[0] = wrapped if mode in ("agent", "naming") else raw
                loop._selector.select = watched if mode in ("agent", "selector") else original
                await asyncio.sleep(SETTLE_S)
                n0, c0 = state[1], time.process_time_ns()
                await asyncio.sleep(SEGMENT_S)
                per[mode].append((time.process_time_ns() - c0, state[1] - n0))
                if dump:
                    dump.write("%s %d %d %d\n" % (mode, time.monotonic_ns(), *per[mode][-1]))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        loop._selector.select = watched
        server.should_exit = True
        await serving
    print("%d rounds of %s, %.0f ms each" % (ROUNDS, ", ".join(MODES), SEGMENT_S * 1000))
    for m in MODES:
        c = sum(x for x, _ in per[m])
        n = sum(x for _, x in per[m])
        print("%-8s %6.1f µs CPU a request, %d requests" % (m, c / 1000 / max(n, 1), n))
    for m in MODES[1:]:
        print("%s / %s: %s" % (m, MODES[0], stats(per[m], per[MODES[0]])))


if __name__ == "__main__":
    if bench.PINNED:
        os.sched_setaffinity(0, {bench.SERVER_CPU})
    asyncio.run(main())
