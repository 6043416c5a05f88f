"""A FastAPI app under the Python agent, for uvicorn in the agent's tests and bench:

    LOOPSCOPE_TELEMETRY=127.0.0.1:0 uvicorn py_asgi:app --workers 2

With LOOPSCOPE_AGENT=0 the app runs without the agent; with LOOPSCOPE_NAMING=0 the
agent is installed at start-up and requests are not named.

  GET /hello           a small JSON answer (async def)
  GET /json?mb=20      json.loads of a ~20 MB document in an async def endpoint
  GET /sleep?ms=500    time.sleep in an async def endpoint (blocks the loop)
  GET /asleep?ms=500   await asyncio.sleep
  GET /sync?ms=500     time.sleep in a def endpoint (a thread of anyio's limiter)
"""

import asyncio
import json
import os
import sys
import time

from fastapi import FastAPI

from py_documents import document

app = FastAPI()


document(20)


@app.get("/hello")
async def hello():
    return {"hello": "world", "pid": os.getpid()}


@app.get("/json")
async def parse(mb: int = 20):
    text = document(mb)
    t0 = time.perf_counter()
    parsed = json.loads(text)
    return {"parse_ms": (time.perf_counter() - t0) * 1000, "items": len(parsed),
            "pid": os.getpid()}


@app.get("/sleep")
async def sleep(ms: int = 500):
    time.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}


@app.get("/asleep")
async def asleep(ms: int = 500):
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}


@app.get("/sync")
def sync(ms: int = 500):
    time.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}


if os.environ.get("LOOPSCOPE_AGENT", "1") != "0":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "..", "assets", "agents", "python"))
    import loopscope_agent

    if os.environ.get("LOOPSCOPE_NAMING") == "0":
        # The agent without naming requests (the bench's "install() only").
        app.router.on_startup.append(loopscope_agent.install)
    else:
        app = loopscope_agent.asgi(app)
