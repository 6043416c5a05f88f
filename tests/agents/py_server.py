"""A standard-library asyncio HTTP server for the Python agent's tests and bench.

Prints its address line {"app":"127.0.0.1:PORT","pid":N} on stdout once it listens
(port from PORT, default 0). With LOOPSCOPE_AGENT=0 it runs without the agent
(imported from assets/agents/python); otherwise it installs it in main() and names
each request with loopscope_agent.request() (not with LOOPSCOPE_NAMING=0).

  GET /hello           a small JSON answer
  GET /json?mb=20      json.loads of a ~20 MB document in the coroutine; answers
                       {"parse_ms":...} as measured around json.loads
  GET /sleep?ms=500    time.sleep in the coroutine (blocks the loop)
  GET /asleep?ms=500   await asyncio.sleep (does not)
  GET /pool?n=8&ms=300 n run_in_executor jobs of time.sleep(ms) at once, on a pool
                       of POOL_THREADS (default 4) threads; answers when all are done
  GET /exit            the process exits (code 0)
"""

import asyncio
import concurrent.futures
import json
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

from py_documents import document

AGENT = os.environ.get("LOOPSCOPE_AGENT", "1") != "0"
# LOOPSCOPE_NAMING=0: the agent installed, requests not named (install() alone).
NAMING = AGENT and os.environ.get("LOOPSCOPE_NAMING", "1") != "0"
if AGENT:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "..", "assets", "agents", "python"))
    import loopscope_agent


async def handle(method, target):
    url = urlsplit(target)
    args = {k: v[0] for k, v in parse_qs(url.query).items()}
    path = url.path
    if path == "/hello":
        return 200, {"hello": "world", "pid": os.getpid()}
    if path == "/json":
        text = document(int(args.get("mb", "20")))
        t0 = time.perf_counter()
        parsed = json.loads(text)
        return 200, {"parse_ms": (time.perf_counter() - t0) * 1000, "items": len(parsed)}
    if path == "/sleep":
        ms = int(args.get("ms", "500"))
        time.sleep(ms / 1000)
        return 200, {"slept_ms": ms}
    if path == "/asleep":
        ms = int(args.get("ms", "500"))
        await asyncio.sleep(ms / 1000)
        return 200, {"slept_ms": ms}
    if path == "/pool":
        n, ms = int(args.get("n", "8")), int(args.get("ms", "300"))
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.gather(*[loop.run_in_executor(None, time.sleep, ms / 1000)
                               for _ in range(n)])
        return 200, {"n": n, "ms": (time.perf_counter() - t0) * 1000}
    if path == "/exit":
        asyncio.get_running_loop().call_later(0.01, os._exit, 0)
        return 200, {"bye": True}
    return 404, {"error": "not found"}


async def connection(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            method, target = line[0], line[1] if len(line) > 1 else "/"
            work = handle(method, target)
            if NAMING:
                work = loopscope_agent.request("%s %s" % (method, target), work)
            status, body = await work
            data = json.dumps(body).encode()
            writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % (status, b"OK" if status == 200 else b"Not Found", len(data)) + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    if AGENT:
        loopscope_agent.install()
    threads = int(os.environ.get("POOL_THREADS", "4"))
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads))
    document(20)  # built before listening: a request's work is the parse alone
    server = await asyncio.start_server(connection, "127.0.0.1", int(os.environ.get("PORT", "0")))
    host, port = server.sockets[0].getsockname()[:2]
    print(json.dumps({"app": "%s:%d" % (host, port), "pid": os.getpid()}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
