"""The Python agent's per-request work, switched on and off inside one uvicorn process.

bench.py compares separate server processes, with and without the agent. This one
runs one FastAPI app (tests/agents/py_asgi.py, /hello) under uvicorn in this process,
installs the agent once, and then takes turns between

  bare    the app unwrapped, the loop's selector as the loop made it
  agent   the app wrapped by asgi() (each request named) and the agent's selector
          wrapper (busy time and the 1 ms lag ticks)

for ROUNDS rounds of REQUESTS requests each, the first mode of each round rotating
(MODES=bare,agent,naming,selector adds the two halves of the agent apart: the app
wrapped alone, the selector wrapper alone).
Each measure is the server thread's CPU time (time.thread_time_ns) over the requests
answered, under the closed-loop client of bench.py (a subprocess, on CPU 0; the
server on CPU 1). What a process gains once and for all from installing the agent
(its telemetry process, its shared memory, its patched pool and server hooks) is
there in both modes: this measures the per-request work alone, free of the
difference between two processes.

  PYTHON=target/python-agent-venv/bin/python
  $PYTHON assets/agents/python/bench_inprocess.py          # ROUNDS=40 REQUESTS=8000

Loopback only; every load is bounded by REQUESTS and by bench.py's MAX_S.
"""

import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (its client, its paths, its statistics)

sys.path.insert(0, bench.AGENTS)
os.environ.setdefault("LOOPSCOPE_TELEMETRY", "127.0.0.1:0")
os.environ["LOOPSCOPE_AGENT"] = "0"  # py_asgi: the app unwrapped; wrapped here

ROUNDS = int(os.environ.get("ROUNDS", "40"))
REQUESTS = int(os.environ.get("REQUESTS", "8000"))


async def main():
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    import loopscope_agent
    import py_asgi

    raw = py_asgi.app
    wrapped = loopscope_agent.asgi(raw)
    config = uvicorn.Config(raw, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False)
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
    await asyncio.sleep(1.0)
    client = ("import os, sys; sys.path.insert(0, %r); %s import bench; "
              "print(bench.load('127.0.0.1:%d', %d)[0])"
              % (HERE, "os.sched_setaffinity(0, {0});" if bench.PINNED else "", port, REQUESTS))
    modes = tuple(os.environ.get("MODES", "bare,agent").split(","))
    per = {m: [] for m in modes}
    for rnd in range(ROUNDS):
        for k in range(len(modes)):
            mode = modes[(k + rnd) % len(modes)]
            # uvicorn's protocols take the app when a connection opens: each measure's
            # client opens its own connections.
            named = mode in ("agent", "naming")
            config.loaded_app = ProxyHeadersMiddleware(wrapped if named else raw)
            loop._selector.select = watched if mode in ("agent", "selector") else original
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", client, stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(0.3)  # the client starts; the server waits
            t0 = time.thread_time_ns()
            out = await proc.stdout.read()
            t1 = time.thread_time_ns()
            await proc.wait()
            done = int(out.decode().strip() or 0)
            if done:
                per[mode].append((t1 - t0) / 1000 / done)
    loop._selector.select = watched
    server.should_exit = True
    await serving
    for m in modes:
        print("%-6s %6.1f µs CPU a request (median of %d measures)"
              % (m, bench.median(per[m]), len(per[m])))
    for m in modes[1:]:
        print("%s / %s: %s" % (m, modes[0], bench.compared(per[m], per[modes[0]])))


if __name__ == "__main__":
    if bench.PINNED:
        os.sched_setaffinity(0, {bench.SERVER_CPU})
    asyncio.run(main())
