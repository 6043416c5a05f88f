"""The Python agent's own cost, on /hello, variants taking turns for ROUNDS rounds:

  asyncio            tests/agents/py_server.py without the agent (LOOPSCOPE_AGENT=0)
  asyncio + agent    the same with install() and request() naming
  asyncio + install() only   the same, requests not named (LOOPSCOPE_NAMING=0)
  uvicorn ...        tests/agents/py_asgi.py (FastAPI) under uvicorn, without and with
                     asgi(); only when PYTHON names a Python with uvicorn and fastapi

Idle (IDLE_ROUNDS rounds, one server at a time): the server's CPU (the sum of its
threads' run time, /proc/PID/task/*/schedstat) over IDLE_S seconds, and how soon a
200 ms time.sleep shows in /telemetry (STALLS times). Per request (ROUNDS rounds):
all the servers run at once and take turns, the others stopped (SIGSTOP) while one is
measured, under a closed-loop load of CONCURRENCY keep-alive connections sending
REQUESTS requests (bounded by MAX_S seconds) from a client fast enough to keep the
server busy, with nobody watching and again with a /telemetry client reading. Every
server runs with one hash seed (PYTHONHASHSEED, 0 unless set). With
two CPUs, servers run on CPU 1, the client and the agent's telemetry process (measured
apart) on CPU 0. Prints medians and each agent variant's ratio to its bare server in
the same round. Loopback only.

  python3 assets/agents/python/bench.py
  PYTHON=target/python-agent-venv/bin/python ROUNDS=5 python3 assets/agents/python/bench.py
  PYTHON=... ONLY=uvicorn ROUNDS=40 python3 assets/agents/python/bench.py   (one server)
  AA=1 adds each bare server again, compared with itself (the method's own bias);
  WATCHED=0 leaves out the measures with a /telemetry client reading; COPIES=K
  starts each server K times and pools the copies' ratios.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

ROUNDS = int(os.environ.get("ROUNDS", "15"))
IDLE_ROUNDS = int(os.environ.get("IDLE_ROUNDS", "2"))
IDLE_S = float(os.environ.get("IDLE_S", "2"))
REQUESTS = int(os.environ.get("REQUESTS", "6000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "8"))
MAX_S = float(os.environ.get("MAX_S", "30"))
STALLS = int(os.environ.get("STALLS", "10"))
COPIES = int(os.environ.get("COPIES", "1"))
# WATCHED=0: no second measure with a /telemetry client reading.
WATCHED = os.environ.get("WATCHED", "1") != "0"
# With two CPUs or more, the servers run on CPU 1 and this client on CPU 0.
PINNED = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
SERVER_CPU = 1
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
AGENTS = os.path.join(ROOT, "tests", "agents")


def variants():
    stdlib = [sys.executable, os.path.join(AGENTS, "py_server.py")]
    # (name, command, environment, the index of the bare server it is compared with)
    out = []

    def kind(name, cmd):
        """A bare server and the agent's variants of it, compared with it."""
        bare = len(out)
        out.append((name, cmd, {"LOOPSCOPE_AGENT": "0"}, None))
        out.append((name + " + agent", cmd, {}, bare))
        out.append((name + " + install() only", cmd, {"LOOPSCOPE_NAMING": "0"}, bare))

    kind("asyncio", stdlib)
    py = os.environ.get("PYTHON")
    if py:
        kind("uvicorn+fastapi", uvicorn(py))
    if os.environ.get("AA") == "1":
        # The method's own bias: each bare server against a second bare one.
        for i, (name, cmd, env, base) in enumerate(list(out)):
            if base is None:
                out.append((name + " (A/A)", cmd, env, i))
    # ONLY=uvicorn (or asyncio): the variants whose name starts with it.
    only = os.environ.get("ONLY")
    if only:
        keep = [i for i, v in enumerate(out) if v[0].startswith(only)]
        out = [(n, c, e, None if b is None else keep.index(b)) for n, c, e, b in
               (out[i] for i in keep)]
    # COPIES=K: each server K times (a process's own speed varies with its memory
    # layout); each copy is compared with the bare copy of the same number.
    if COPIES > 1:
        n = len(out)
        out = [("%s #%d" % (name, k), cmd, env, None if b is None else b + k * n)
               for k in range(COPIES) for name, cmd, env, b in out]
    return out


def uvicorn(python):
    """The command of tests/agents/py_asgi.py under uvicorn, run by ``python`` (one
    with uvicorn and fastapi), on the port that ``server`` picks."""
    return [os.path.abspath(python), "-m", "uvicorn", "py_asgi:app", "--host", "127.0.0.1",
            "--port", "0", "--log-level", "warning", "--no-access-log"]


def cpu_ms(pid):
    ns = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return 0.0
    for t in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                ns += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return ns / 1e6


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server(cmd, env):
    """A server's command with a free port for its ``--port 0``, its environment
    (``env`` over this one's, the port in PORT), and the port. One hash seed for
    every server (0 unless PYTHONHASHSEED says otherwise): a process's speed depends
    on its seed, by more than the agent costs."""
    port = free_port()
    full = dict(os.environ, LOOPSCOPE_TELEMETRY="127.0.0.1:0", LOOPSCOPE_ANNOUNCE="1",
                PYTHONDONTWRITEBYTECODE="1", PORT=str(port),
                PYTHONHASHSEED=os.environ.get("PYTHONHASHSEED", "0"), **env)
    cmd = [c if c != "0" or cmd[i - 1] != "--port" else str(port) for i, c in enumerate(cmd)]
    return cmd, full, port


def start(cmd, env):
    cmd, full, port = server(cmd, env)
    child = subprocess.Popen(cmd, env=full, cwd=AGENTS, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, start_new_session=True,
                             preexec_fn=(lambda: os.sched_setaffinity(0, {SERVER_CPU}))
                             if PINNED else None)
    try:
        return started(child, port, env)
    except BaseException:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise


def started(child, port, env):
    want_telemetry = env.get("LOOPSCOPE_AGENT") != "0"
    app, telemetry = "127.0.0.1:%d" % port, None
    deadline = time.monotonic() + 30
    buf = b""
    while time.monotonic() < deadline and (want_telemetry and telemetry is None):
        ready, _, _ = select.select([child.stdout], [], [], 1)
        if ready:
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.split(b"\n"):
                try:
                    telemetry = json.loads(line).get("telemetry") or telemetry
                except ValueError:
                    pass
    if want_telemetry and telemetry is None:
        raise SystemExit("no telemetry address line within 30 s")
    wait_listening(app, deadline)
    hub = None
    if want_telemetry:
        kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and
                open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()[1] == str(child.pid)]
        hub = kids[0] if kids else None
    return child, app, telemetry, hub


def kill_all(children):
    """Kills every server in ``children`` with its process group (its telemetry
    process), stopped or not, and reaps it."""
    for child in children:
        os.killpg(child.pid, signal.SIGKILL)
        os.killpg(child.pid, signal.SIGCONT)
        child.wait()


def wait_listening(app, deadline):
    host, port = app.split(":")
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not listen within 30 s")


def load(app, n):
    """CONCURRENCY keep-alive connections, each sending /hello as soon as its previous
    answer is in, until n are answered (or MAX_S): one thread and a selector, parsing
    no further than Content-Length, so that the client (on the other CPU) outpaces the
    server and keeps it busy. Returns (answered, seconds)."""
    import selectors

    host, port = app.split(":")
    request = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
    sel = selectors.DefaultSelector()
    bufs = {}
    sent = answered = 0
    t0 = time.monotonic()
    end = t0 + MAX_S
    for _ in range(CONCURRENCY):
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
        if sent < n:
            sent += 1
            s.send(request)
    while answered < n and time.monotonic() < end:
        for key, _ in sel.select(1):
            s = key.fileobj
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a connection")
            buf = bufs[s] + chunk
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    break
                i = head.lower().find(b"content-length:")
                length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
                if len(rest) < length:
                    break
                buf = rest[length:]
                answered += 1
                if sent < n:
                    sent += 1
                    s.send(request)
            bufs[s] = buf
    secs = time.monotonic() - t0
    for s in bufs:
        sel.unregister(s)
        s.close()
    return answered, secs


def watcher(telemetry):
    host, port = telemetry.split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /telemetry HTTP/1.1\r\nHost: bench\r\n\r\n")
    stop = threading.Event()

    def read():
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                if not s.recv(65536):
                    break
            except socket.timeout:
                pass
            except OSError:
                break

    t = threading.Thread(target=read)
    t.start()

    def close():
        stop.set()
        t.join()
        s.close()

    return close


def visibility(app, telemetry, path, n):
    """Per blocking request: the first line's stalled_for_ms (the stall's age when the
    telemetry process built the line) and the time from sending the request to that
    line's arrival, in ms."""
    host, port = telemetry.split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /telemetry HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.settimeout(5)
    buf = b""
    built, seen = [], []
    for _ in range(n):
        time.sleep(0.3)
        # Lines of the previous stall still unread are not this one's.
        s.setblocking(False)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except BlockingIOError:
            pass
        s.settimeout(5)
        buf = buf.rsplit(b"\n", 1)[-1]
        ah, ap = app.split(":")
        c = socket.create_connection((ah, int(ap)))
        t0 = time.monotonic()
        c.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
        found = None
        while found is None and time.monotonic() < t0 + 5:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    w = json.loads(line)["workers"][0]
                except (ValueError, KeyError, IndexError):
                    continue
                if w["stalled_for_ms"] > 0 and found is None:
                    found = (w["stalled_for_ms"], (time.monotonic() - t0) * 1000)
        c.settimeout(10)
        c.recv(65536)
        c.close()
        if found:
            built.append(found[0])
            seen.append(found[1])
    s.close()
    return built, seen


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def compared(per, bare):
    """``per`` against ``bare``, measure by measure (the same round): the ratios'
    median and quartiles, and the ratio of the sums."""
    ratios = sorted(a / b for a, b in zip(per, bare))
    pct = lambda x: (x - 1) * 100  # noqa: E731
    return "%+.1f%% server CPU per request (quartiles %+.1f%% .. %+.1f%%, totals %+.1f%%)" % (
        pct(median(ratios)), pct(ratios[len(ratios) // 4]),
        pct(ratios[(3 * len(ratios)) // 4]), pct(sum(per) / sum(bare)))


def main():
    # A TERM runs the finally blocks: every server started is killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if PINNED:
        os.sched_setaffinity(0, {0})
    vs = variants()
    res = [{"idle": [], "hub_idle": [], "per": [], "per_w": [], "hub_per_w": [], "rps": [],
            "built": [], "seen": []} for _ in vs]
    # Idle, and how soon a stall shows: one server at a time, IDLE_ROUNDS times.
    for _ in range(IDLE_ROUNDS):
        for (name, cmd, env, _), r in zip(vs, res):
            child, app, telemetry, hub = start(cmd, env)
            try:
                load(app, 500)
                time.sleep(0.5)
                c0, h0 = cpu_ms(child.pid), cpu_ms(hub) if hub else 0
                time.sleep(IDLE_S)
                r["idle"].append((cpu_ms(child.pid) - c0) / (IDLE_S * 1000) * 100)
                if hub:
                    r["hub_idle"].append((cpu_ms(hub) - h0) / (IDLE_S * 1000) * 100)
                if telemetry and STALLS:
                    built, seen = visibility(app, telemetry, "/sleep?ms=200", STALLS)
                    r["built"] += built
                    r["seen"] += seen
            finally:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    # Per request: every server started at once; they take turns, the first of each
    # round rotating, and all but the one measured are stopped (SIGSTOP), so that
    # neither their timers nor a slow spell of the machine weigh on one more than
    # another. The agent's telemetry process runs on the client's CPU: it is
    # measured apart.
    servers = []
    try:
        for name, cmd, env, _ in vs:
            child, app, telemetry, hub = start(cmd, env)
            servers.append((child, app, telemetry, hub))
            if hub and PINNED:
                os.sched_setaffinity(hub, {0})
            load(app, 2000)
            os.killpg(child.pid, signal.SIGSTOP)
        for rnd in range(ROUNDS):
            for k in range(len(vs)):
                i = (k + rnd) % len(vs)
                child, app, telemetry, hub = servers[i]
                r = res[i]
                os.killpg(child.pid, signal.SIGCONT)
                time.sleep(0.2)
                a = cpu_ms(child.pid)
                done, secs = load(app, REQUESTS)
                r["per"].append((cpu_ms(child.pid) - a) * 1000 / done)
                r["rps"].append(done / secs)
                if telemetry and WATCHED:
                    close = watcher(telemetry)
                    time.sleep(0.3)
                    a, h = cpu_ms(child.pid), cpu_ms(hub)
                    done, secs = load(app, REQUESTS)
                    r["per_w"].append((cpu_ms(child.pid) - a) * 1000 / done)
                    r["hub_per_w"].append((cpu_ms(hub) - h) * 1000 / done)
                    close()
                os.killpg(child.pid, signal.SIGSTOP)
    finally:
        kill_all(s[0] for s in servers)
    print("idle: medians of %d rounds; per request: medians of %d rounds, %d requests of "
          "/hello per measure, %d connections%s"
          % (IDLE_ROUNDS, ROUNDS, REQUESTS, CONCURRENCY,
             ", servers on CPU 1, client on CPU 0" if PINNED else ""))
    for (name, _, _, _), r in zip(vs, res):
        line = "%-26s idle %4.1f%% | %5.1f µs CPU/req, %5.0f req/s" % (
            name, median(r["idle"]), median(r["per"]), median(r["rps"]))
        if r["per_w"]:
            line += " | watched: %5.1f µs CPU/req + telemetry process %4.1f µs/req" % (
                median(r["per_w"]), median(r["hub_per_w"]))
            line += " | telemetry process idle %4.1f%%" % median(r["hub_idle"])
        print(line)
    for (name, _, _, _), r in zip(vs, res):
        b, v = sorted(r["built"]), sorted(r["seen"])
        if b:
            print("%s: a 200 ms time.sleep shows in the first line %.0f ms after it began "
                  "(median of %d; p90 %.0f, max %.0f); request sent -> line read %.0f ms "
                  "(median; p90 %.0f, max %.0f)" % (
                      name, median(b), len(b), b[int(len(b) * 0.9)], b[-1],
                      median(v), v[int(len(v) * 0.9)], v[-1]))
    for (name, _, _, base), r in zip(vs, res):
        if base is None:
            continue
        bare = res[base]["per"]
        watched = [a / b for a, b in zip(r["per_w"], bare)]
        print("%s: agent %s%s" % (name, compared(r["per"], bare), "; watched %+.1f%%" % (
            (median(watched) - 1) * 100) if watched else ""))
    pooled = {}
    for (name, _, _, base), r in zip(vs, res):
        if base is not None and COPIES > 1:
            key = name.rsplit(" #", 1)[0]
            a, b = pooled.get(key, (0.0, 0.0))
            pooled[key] = (a + sum(r["per"]), b + sum(res[base]["per"]))
    for key, (a, b) in pooled.items():
        print("%s, %d copies pooled: agent %+.1f%% server CPU per request (ratio of "
              "totals)" % (key, COPIES, (a / b - 1) * 100))


if __name__ == "__main__":
    main()
