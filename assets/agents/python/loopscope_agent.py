"""loopscope agent for Python asyncio servers (Python >= 3.9, Linux), standard library only.

Two entry points:

    app = loopscope_agent.asgi(app)     # any ASGI app (FastAPI, Starlette); installs
                                        # itself at lifespan start-up, names each request
    loopscope_agent.install()           # from inside the running loop (a main()
                                        # coroutine, a startup hook)

    LOOPSCOPE_TELEMETRY=127.0.0.1:9466 uvicorn mymodule:app --workers 2

A plain asyncio server names its requests with ``await loopscope_agent.request(name,
coro)``. The loop itself only does cheap bookkeeping, written into a shared memory
block (a memfd mapped by this process and by the telemetry process):

  - a 1 ms lag timer writes how late each tick came (µs) into a ring and stamps a
    heartbeat (``time.monotonic_ns``); it is kept by the selector's ``select``
    wrapper (no loop timer), or by a loop timer where there is no selector (uvloop);
  - the request whose code runs on the loop now (a slot of a name table), and
    requests in flight and answered;
  - the loop's busy time (time outside the selector's ``select``) and the thread
    pool gauge: anyio's default limiter when anyio is loaded, ``run_in_executor``
    pools otherwise.

A CPU-bound call (``json.loads``) holds the GIL, so no thread of this interpreter
can see it while it lasts: the telemetry is served by a separate process
(``loopscope_hub.py``, started from this file's directory) that reads the shared
memory at its own cadence and counts a stall up from the last heartbeat.

uvicorn ``--workers N``: the first worker's telemetry process serves the one
address; the other workers register with it through an abstract unix socket keyed
by the address and the workers' parent, passing their memfd. A worker that dies
frees its slot; its replacement takes the slot and counts as a restart.

Environment:
  LOOPSCOPE_TELEMETRY  HOST:PORT to serve on (default 127.0.0.1:9466; port 0: any)
  LOOPSCOPE_ANNOUNCE   1 prints {"app":..,"telemetry":..,"pid":..} on stdout once
                       both addresses are known
  LOOPSCOPE_DISABLE    1 turns the agent off
  LOOPSCOPE_CLIENT_BUFFER  bytes queued at most for a telemetry client that does not
                       read (default 262144); lines beyond are skipped for it
"""

import asyncio
import functools
import json
import mmap
import os
import select
import socket
import subprocess
import sys
import threading
import time
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
_TICK_NS = 1_000_000


def _layout():
    """The shared memory layout, from ``loopscope_layout.py`` next to this file."""
    try:
        import loopscope_layout

        return loopscope_layout
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "loopscope_layout", os.path.join(_HERE, "loopscope_layout.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["loopscope_layout"] = module
        return module


_L = _layout()
(
    APP_BYTES, APP_OFF, EVENT_BYTES, EVENT_OFF, EVENTS, H, LAG_OFF, LAG_RING,
    MAGIC, MAX_STRING, NAME_BYTES, NAME_OFF, NAMES, SIZE, SLOW_POLL_MS, WAIT_OFF,
    WAIT_RING, cut, hub_key, parse_host_port, utf8_cut,
) = (
    _L.APP_BYTES, _L.APP_OFF, _L.EVENT_BYTES, _L.EVENT_OFF, _L.EVENTS, _L.H, _L.LAG_OFF,
    _L.LAG_RING, _L.MAGIC, _L.MAX_STRING, _L.NAME_BYTES, _L.NAME_OFF, _L.NAMES, _L.SIZE,
    _L.SLOW_POLL_MS, _L.WAIT_OFF, _L.WAIT_RING, _L.cut, _L.hub_key, _L.parse_host_port,
    _L.utf8_cut,
)

__all__ = ["install", "asgi", "request"]

_warned = set()
_agent = None
_tried = False
_lock = threading.Lock()


def _warn(key, message):
    try:
        if key in _warned:
            return
        _warned.add(key)
        sys.stderr.write("loopscope agent: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass


def _listening_address():
    inodes = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    for path, family in (("/proc/self/net/tcp", socket.AF_INET),
                         ("/proc/self/net/tcp6", socket.AF_INET6)):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and f[9] in inodes:
                addr, port = f[1].split(":")
                raw = b"".join(bytes.fromhex(addr[i: i + 8])[::-1] for i in range(0, len(addr), 8))
                host = socket.inet_ntop(family, raw)
                if host.startswith("::ffff:"):
                    host = host[7:]
                return host, int(port, 16)
    return None


class _Pool:
    """Jobs sent to threads: queue waits, in flight, done (counted from any thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids = 0
        self.pending = {}  # job id -> submit time (ns), until a thread starts it
        self.submitted = 0
        self.started = 0
        self.finished = 0
        self.dropped = 0  # cancelled before a thread took them
        self.waits = []  # µs, drained by the loop's tick

    def settle(self, jid):
        """The job's caller is done with it: if no thread ever started it (cancelled
        while it waited), it no longer waits."""
        with self.lock:
            if self.pending.pop(jid, None) is not None:
                self.dropped += 1

    def wrap(self, fn):
        """``fn`` as a job that records when a thread starts and ends it; and its id."""
        with self.lock:
            self.ids += 1
            jid = self.ids
            self.submitted += 1
            self.pending[jid] = time.monotonic_ns()

        def job(*args, **kwargs):
            t1 = time.monotonic_ns()
            with self.lock:
                t0 = self.pending.pop(jid, t1)
                self.started += 1
                if len(self.waits) < WAIT_RING:
                    self.waits.append((t1 - t0) // 1000)
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.finished += 1

        return job, jid


class Agent:
    """This process's side: the measured loop writes, the telemetry process reads."""

    def __init__(self, loop, telemetry, announce):
        self.loop = loop
        self.telemetry = telemetry
        self.announce = announce
        self.fd = os.memfd_create("loopscope", getattr(os, "MFD_CLOEXEC", 1))
        os.ftruncate(self.fd, SIZE)
        self.mm = mmap.mmap(self.fd, SIZE)
        mv = memoryview(self.mm)
        self.q = mv[: H.COUNT * 8].cast("q")
        self.lag = mv[LAG_OFF: LAG_OFF + LAG_RING * 4].cast("i")
        self.wait = mv[WAIT_OFF: WAIT_OFF + WAIT_RING * 4].cast("i")
        self.names = mv[NAME_OFF: NAME_OFF + NAMES * NAME_BYTES]
        self.name_q = self.names.cast("q")
        self.slot_names = [None] * NAMES
        self.slot_of = {}
        self.next_name = 0
        self.started = time.monotonic_ns()
        self.idle_ns = 0
        self.lag_w = 0
        self.wait_w = 0
        self.event_w = 0
        self.ticks = 0
        self.begun = 0  # requests begun
        self.done = 0  # requests ended: answered, failed or cancelled
        self.app = ""
        self.app_known = threading.Event()
        self.pool = _Pool()
        self.limiter = None
        q = self.q
        q[H.STARTED] = self.started
        q[H.PID] = os.getpid()
        q[H.LOOP_TID] = threading.get_native_id()
        q[H.POOL_SIZE] = min(32, (os.cpu_count() or 1) + 4)
        q[H.MAGIC] = MAGIC
        self.proc = None
        self.channel = None
        self.telemetry_addr = ""
        self.forked = False  # set in a forked child: this block is its parent's

    # --- on the loop -------------------------------------------------------
    def start(self):
        self.attach(self.loop)
        threading.Thread(target=self._connect, name="loopscope-agent", daemon=True).start()

    def attach(self, loop):
        """Hooks into ``loop``: the first one, or a new one after the last one ended
        (``asyncio.run`` called again)."""
        self.loop = loop
        # The busy time carries on from its last published figure.
        self.idle_ns = (time.monotonic_ns() - self.started) - self.q[H.BUSY]
        self.due = time.monotonic_ns() + _TICK_NS
        if not self._wrap_selector(loop):
            # No selector to wrap (uvloop): the lag timer is a loop timer.
            loop.call_later(0.001, self._timer)
        self._watch_pools()
        self._watch_servers()

    def _wrap_selector(self, loop):
        """The lag timer and the busy time, kept around the selector's ``select``:
        each call ends an iteration of the loop and each return starts one. A tick
        falls due 1 ms after the last one; whichever of the two comes first past it
        counts how late it came and stamps the heartbeat, and ``select`` never sleeps
        past it. That is a 1 ms timer's lateness without a timer: no handle made,
        scheduled and run by the loop 1000 times a second. The loop is idle while
        ``select`` may sleep; a poll (timeout 0, the loop has callbacks ready) counts
        as busy and is passed straight on."""
        sel = getattr(loop, "_selector", None)
        if sel is None or not hasattr(sel, "select"):
            return False
        original = sel.select
        mono = time.monotonic_ns
        agent = self

        def select_(timeout=None):
            t0 = mono()
            if t0 >= agent.due:
                agent._tick(t0)
            if timeout == 0:
                # A poll (callbacks are ready): no sleep to count as idle, none to cut
                # short; most calls of a loaded loop.
                return original(0)
            left = (agent.due - t0) / 1e9
            if timeout is None or timeout > left:
                timeout = left
            try:
                return original(timeout)
            finally:
                t1 = mono()
                agent.idle_ns += t1 - t0
                if t1 >= agent.due:
                    agent._tick(t1)

        try:
            sel.select = select_
        except Exception:
            return False
        self.q[H.BUSY_KNOWN] = 1
        return True

    def _tick(self, now):
        """A lag tick at ``now``, due at ``self.due``: its lateness into the ring, the
        heartbeat, and every 8th tick the other figures; the next falls due 1 ms on."""
        if self.forked:
            # This block is the parent's: nothing more is written, and `select`
            # sleeps as long as the loop asks (up to an hour at a time).
            self.due = now + 3600 * 10**9
            return
        q = self.q
        try:
            late = (now - self.due) // 1000
            w = self.lag_w
            self.lag[w % LAG_RING] = late if 0 < late < 0x7FFFFFFF else (0 if late <= 0 else 0x7FFFFFFF)
            self.lag_w = w + 1
            q[H.LAG_W] = w + 1
            q[H.BEAT] = now
            self.ticks += 1
            if self.ticks & 7 == 0:
                self._publish(now)
        except Exception as e:
            _warn("tick", "lag timer: %r" % (e,))
        self.due = now + _TICK_NS

    def _timer(self):
        """The lag timer where the selector cannot be wrapped: a loop timer re-armed
        1 ms after each run."""
        if self.forked:
            return
        now = time.monotonic_ns()
        self._tick(now)
        self.loop.call_later(0.001, self._timer)

    def _publish(self, now):
        q = self.q
        q[H.REQ_FLIGHT] = self.begun - self.done
        q[H.REQ_DONE] = self.done
        q[H.BUSY] = (now - self.started) - self.idle_ns
        q[H.BUSY_AT] = now
        pool = self.pool
        with pool.lock:
            waits, pool.waits = pool.waits, []
            started, finished = pool.started, pool.finished
            waiting = pool.submitted - started - pool.dropped
            oldest = min(pool.pending.values()) if pool.pending else 0
        for us in waits:
            self.wait[self.wait_w % WAIT_RING] = min(us, 0x7FFFFFFF)
            self.wait_w += 1
        q[H.WAIT_W] = self.wait_w
        q[H.POOL_DONE] = finished
        if self.limiter is not None:
            lim = self.limiter
            q[H.POOL_SIZE] = int(lim.total_tokens)
            q[H.POOL_BUSY] = int(lim.borrowed_tokens)
            queued = int(lim.statistics().tasks_waiting)
        else:
            ex = getattr(self.loop, "_default_executor", None)
            if ex is not None and getattr(ex, "_max_workers", 0):
                q[H.POOL_SIZE] = ex._max_workers
            q[H.POOL_BUSY] = started - finished
            queued = waiting
        q[H.POOL_QUEUED] = max(queued, 0)
        q[H.POOL_OLDEST] = oldest if queued > 0 else 0

    def _watch_pools(self):
        anyio = sys.modules.get("anyio")
        if anyio is not None:
            try:
                from anyio import to_thread

                self.limiter = to_thread.current_default_thread_limiter()
                original = to_thread.run_sync
                if not getattr(original, "_loopscope", False):
                    pool = self.pool

                    @functools.wraps(original)
                    async def run_sync(func, *args, **kwargs):
                        job, jid = pool.wrap(func)
                        try:
                            return await original(job, *args, **kwargs)
                        finally:
                            pool.settle(jid)

                    run_sync._loopscope = True
                    to_thread.run_sync = run_sync
                self.q[H.POOL_KIND] = 1
                return
            except Exception as e:
                _warn("anyio", "anyio thread limiter: %r" % (e,))
                self.limiter = None
        loop = self.loop
        original = loop.run_in_executor
        pool = self.pool

        def run_in_executor(executor, func, *args):
            job, jid = pool.wrap(func)
            future = original(executor, job, *args)
            future.add_done_callback(lambda _: pool.settle(jid))
            return future

        try:
            loop.run_in_executor = run_in_executor
            self.q[H.POOL_KIND] = 2
        except (AttributeError, TypeError):
            pass  # a loop whose methods cannot be replaced (uvloop): no pool gauge

    def _watch_servers(self):
        """The application's address: the first server the loop creates."""
        loop = self.loop
        original = loop.create_server
        agent = self

        @functools.wraps(original)
        async def create_server(*args, **kwargs):
            server = await original(*args, **kwargs)
            try:
                if not agent.app and server.sockets:
                    agent.set_app(server.sockets[0].getsockname())
            except Exception as e:
                _warn("server", "application address: %r" % (e,))
            return server

        try:
            loop.create_server = create_server
        except Exception:
            pass

    def set_app(self, sockname):
        host, port = sockname[0], sockname[1]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        self.app = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        raw = self.app.encode()[:APP_BYTES]
        self.mm[APP_OFF: APP_OFF + len(raw)] = raw
        self.q[H.APP_LEN] = len(raw)
        self.app_known.set()

    def slot_for(self, name):
        """The name table's slot holding ``name``: requests of one name share it; a
        new name takes the next slot round the table (its length is 0 while its
        bytes change)."""
        i = self.slot_of.get(name)
        if i is not None and self.slot_names[i] == name:
            return i
        i = self.next_name
        self.next_name = (i + 1) % NAMES
        old = self.slot_names[i]
        if old is not None and self.slot_of.get(old) == i:
            del self.slot_of[old]
        raw = name.encode("utf-8", "replace")
        if len(raw) > NAME_BYTES - 16:
            raw = utf8_cut(name, NAME_BYTES - 16)
        base = i * NAME_BYTES
        k = (base >> 3) + 1
        nq = self.name_q
        nq[k] = 0
        self.mm[NAME_OFF + base + 16: NAME_OFF + base + 16 + len(raw)] = raw
        nq[k] = len(raw)
        self.slot_names[i] = name
        self.slot_of[name] = i
        return i

    def slow_poll(self, name, ms, end_ns):
        i = self.event_w % EVENTS
        base = EVENT_OFF + i * EVENT_BYTES
        raw = utf8_cut(name, EVENT_BYTES - 32)
        v = memoryview(self.mm)[base: base + 32].cast("q")
        v[0] = int(ms * 1000)
        v[1] = (end_ns - self.started) // 1_000_000
        v[2] = len(raw)
        self.mm[base + 32: base + 32 + len(raw)] = raw
        self.event_w += 1
        self.q[H.EVENT_W] = self.event_w

    # --- the telemetry process ---------------------------------------------
    def _connect(self):
        try:
            group = os.getpid()
            try:
                import multiprocessing

                parent = multiprocessing.parent_process()
                if parent is not None and parent.pid:
                    group = parent.pid
            except Exception:
                pass
            self.q[H.GROUP] = group
            group_start = _L.start_time(group)
            key = hub_key(self.telemetry, group, group_start)
            for attempt in range(8):
                outcome = self._join(key) or self._spawn(key, group, group_start)
                if outcome == "retry":
                    time.sleep(0.05 * (attempt + 1))
                    continue
                break
            else:
                _warn("hub", "could not reach the telemetry process for %s" % self.telemetry)
                return
            if outcome in ("hub", "joined"):
                self._find_app()
                if outcome == "hub" and self.announce and self.app:
                    out = {"app": self.app, "telemetry": self.telemetry_addr, "pid": group}
                    # One write(2) past the application's buffer: a whole line even
                    # while its threads print.
                    os.write(sys.stdout.fileno(), (json.dumps(out) + "\n").encode())
        except Exception as e:
            _warn("connect", "telemetry process: %r" % (e,))

    def _find_app(self):
        """Waits (≤ 60 s) for the application's address: the first server the loop
        creates or, where the loop cannot be patched (uvloop), the first listening
        TCP socket of this process (``/proc/self/net/tcp*``)."""
        deadline = time.monotonic() + 60
        while not self.app_known.wait(0.1) and time.monotonic() < deadline:
            found = _listening_address()
            if found and not self.app:
                self.set_app(found)

    def _join(self, key):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(key)
        except OSError:
            s.close()
            return None
        try:
            hello = json.dumps({"pid": os.getpid()}).encode() + b"\n"
            socket.send_fds(s, [hello], [self.fd])
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            json.loads(reply)
        except (OSError, ValueError):
            s.close()
            return "retry"
        s.settimeout(None)
        # Held open for the process's life: its end tells the telemetry process.
        self.channel = s
        return "joined"

    def _spawn(self, key, group, group_start):
        config = {
            "key": key,
            "group_start": group_start,
            "telemetry": self.telemetry,
            "fd": self.fd,
            "pid": os.getpid(),
            "group": group,
        }
        script = os.path.join(_HERE, "loopscope_hub.py")
        proc = subprocess.Popen(
            [sys.executable, "-s", script, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[self.fd],
            close_fds=True,
        )
        line = b""
        deadline = time.monotonic() + 20
        fd = proc.stdout.fileno()
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            line += chunk
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {}
        if "listening" in answer:
            self.proc = proc
            self.telemetry_addr = answer["listening"]
            return "hub"
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()
        if answer.get("retry"):
            return "retry"
        if answer.get("in_use"):
            _warn("listen", "telemetry address %s is in use; no telemetry is served "
                  "(the application runs on)" % self.telemetry)
        elif answer.get("error"):
            _warn("listen", "telemetry server: %s" % answer["error"])
        else:
            _warn("listen", "the telemetry process did not start")
        return "failed"


_CURRENT = H.CURRENT
_SLOW_NS = SLOW_POLL_MS * 1_000_000
_mono = time.monotonic_ns


# Marks a request whose first step has not run: ``_steps`` runs it.
_UNSTARTED = object()


def _step_begins(agent, entry):
    """A step of request ``entry`` ([name, name table slot]) begins on the loop: the
    current request is its slot (taken again if given to another name since, NAMES
    names ago). Returns the step's start."""
    name = entry[0]
    if agent.slot_names[entry[1]] != name:
        entry[1] = agent.slot_for(name)
    agent.q[_CURRENT] = entry[1] + 1
    return _mono()


def _step_ends(agent, name, t0):
    """The step of request ``name`` that began at ``t0`` ended: no current request,
    and a step that held the loop ``SLOW_POLL_MS`` or longer is a slow poll event."""
    agent.q[_CURRENT] = 0
    t1 = _mono()
    if t1 - t0 >= _SLOW_NS:
        agent.slow_poll(name, (t1 - t0) / 1e6, t1)


@types.coroutine
def _steps(agent, entry, coro, out=_UNSTARTED):
    """Runs request ``coro`` as ``entry`` ([name, name table slot]), from its first
    step or, if ``out`` is what its first step yielded, from its second: around each
    step on the loop the current request is that slot, and a step that holds the
    loop ``SLOW_POLL_MS`` or longer is a slow poll event. A generator-based
    coroutine, awaited directly (no object around it)."""
    while True:
        value = error = None
        if out is not _UNSTARTED:
            try:
                value = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # delivered into the coroutine
                error = e
        t0 = _step_begins(agent, entry)
        try:
            out = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            _step_ends(agent, entry[0], t0)


async def _counted(agent, entry, coro):
    """``coro`` run by ``_steps``, counted as a request begun and ended."""
    agent.begun += 1
    try:
        return await _steps(agent, entry, coro)
    finally:
        agent.done += 1


def _after_fork():
    """A forked child does not write into its parent's block: it may install its
    own agent."""
    global _agent, _tried
    if _agent is not None:
        _agent.forked = True
        # The parent's channels to its telemetry process: their end is the parent's.
        try:
            if _agent.proc is not None:
                _agent.proc.stdin.close()
            if _agent.channel is not None:
                _agent.channel.close()
        except OSError:
            pass
    _agent = None
    _tried = False


os.register_at_fork(after_in_child=_after_fork)


def install(loop=None):
    """Watches the running loop (call from inside it). Never raises; returns True
    when the agent runs."""
    global _agent, _tried
    _tried = True
    try:
        if os.environ.get("LOOPSCOPE_DISABLE") == "1":
            return False
        with _lock:
            if loop is None:
                loop = asyncio.get_running_loop()
            if _agent is not None:
                # One loop per process is watched: a later one once the first ended.
                if _agent.loop is not loop and not _agent.loop.is_running():
                    _agent.attach(loop)
                return True
            telemetry = os.environ.get("LOOPSCOPE_TELEMETRY") or "127.0.0.1:9466"
            if parse_host_port(telemetry) is None:
                _warn("address", "LOOPSCOPE_TELEMETRY=%s is not HOST:PORT; no telemetry "
                      "is served" % telemetry)
                return False
            agent = Agent(loop, telemetry, os.environ.get("LOOPSCOPE_ANNOUNCE") == "1")
            _agent = agent
            agent.start()
            return True
    except Exception as e:
        _warn("start", "the agent is off: %r" % (e,))
        return False


def request(name, awaitable):
    """Awaits ``awaitable`` as the request ``name`` ("GET /path?query"): its steps on
    the loop are named in a stall, and it counts as a request."""
    if not hasattr(awaitable, "send"):
        awaitable = _coroutine(awaitable)
    if _agent is None:
        return awaitable
    name = cut(name)
    return _counted(_agent, [name, _agent.slot_for(name)], awaitable)


async def _coroutine(awaitable):
    return await awaitable


# What next() gives back for a coroutine that returned: its first step ended it.
_DONE = object()


def asgi(app):
    """Wraps an ASGI app: installs the agent at lifespan start-up (or at the first
    request) and names each HTTP request by method and path. The app's return value
    is None, as ASGI asks (one that returns something else has it dropped)."""

    async def loopscope_asgi(scope, receive, send):
        agent = _agent
        if agent is None or scope["type"] != "http":
            return await _unnamed(app, scope, receive, send)
        # The request's [name, name table slot], kept by its scope's method, path
        # and query (no string built), and its slot still its own.
        try:
            entry = _NAMES[scope["method"], scope["path"], scope["query_string"]]
        except KeyError:  # a new name, or a scope without one of its keys
            entry = None
        if entry is None or agent.slot_names[entry[1]] is not entry[0]:
            entry = _entry_named(agent, scope)
        coro = app(scope, receive, send)
        q = agent.q
        agent.begun += 1
        try:
            # The first step here, inline: most requests (a FastAPI /hello) end in
            # it. A coroutine that returns None ends next() without making a
            # StopIteration (no exception, traceback or frame object a request).
            q[_CURRENT] = entry[1] + 1
            t0 = _mono()
            try:
                out = next(coro.__await__(), _DONE)
            finally:
                q[_CURRENT] = 0
                t1 = _mono()
                if t1 - t0 >= _SLOW_NS:
                    agent.slow_poll(entry[0], (t1 - t0) / 1e6, t1)
            if out is not _DONE:
                return await _steps(agent, entry, coro, out)
        finally:
            agent.done += 1

    return loopscope_asgi


async def _unnamed(app, scope, receive, send):
    """A scope run unnamed: the agent installed first if it was never tried, and a
    request named after all if it now runs."""
    if _agent is None and not _tried:
        install()
    if _agent is None or scope["type"] != "http":
        return await app(scope, receive, send)
    return await _counted(_agent, _entry_named(_agent, scope), app(scope, receive, send))


# An HTTP scope's (method, path, query string) -> its request's [name, name table
# slot]: a request repeated is named without building a string, and its slot found
# without a look-up while the slot keeps its name. Bounded: emptied when full.
_NAMES = {}
_NAMES_MAX = 1024


def _entry_named(agent, scope):
    """The [name, name table slot] of an HTTP scope's request, made the first time,
    with its slot taken again if another name has it now."""
    try:
        key = (scope["method"], scope["path"], scope["query_string"])
    except KeyError:
        key = (scope.get("method"), scope.get("path"), scope.get("query_string"))
    entry = _NAMES.get(key)
    if entry is None:
        method, target, qs = key
        method, target = method or "GET", target or "/"
        if qs:
            target += "?" + qs.decode("latin-1")
        name = cut("%s %s" % (method, target))
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        entry = _NAMES[key] = [name, agent.slot_for(name)]
    elif agent.slot_names[entry[1]] is not entry[0]:
        entry[1] = agent.slot_for(entry[0])
    # The very string the slot holds: asgi() checks the slot by identity.
    entry[0] = agent.slot_names[entry[1]]
    return entry
