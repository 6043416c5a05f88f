"""The telemetry process of the Python agent (started by ``loopscope_agent.py``).

It runs outside the measured interpreter, so a call that holds that interpreter's
GIL (``json.loads`` of a large document) does not stop it: it reads each worker's
shared memory block (``loopscope_layout.py``) at its own cadence, counts a stall up
from the worker's last heartbeat, and serves ``/telemetry`` (NDJSON, one line per
100 ms and one as soon as a stall begins), ``/info`` and ``/metrics`` on the
telemetry address, in the protocol of the Node agent.

Workers: the process that started it is worker 0, by its memfd; others register
through the abstract unix socket ``hub_key(address, server pid, its start time)``
with their memfd (SCM_RIGHTS). A worker's end closes its channel (a pipe or that
socket): its slot is then dead and the next worker to register takes it, as a
restart. The process exits
once no worker is left and the server process (the workers' parent) is gone, or
after a minute without workers.

    python3 loopscope_hub.py '{"key":..,"telemetry":..,"fd":..,"pid":..,"group":..,
                               "group_start":..}'
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time

import loopscope_layout as L
from loopscope_layout import H
from loopscope_source import Source, alive, empty_worker, exit_status, host_times, r1

MAX_CLIENTS = 32
MAX_CONNECTIONS = 128
MAX_PENDING = 64
try:
    MAX_BUFFERED = max(int(os.environ.get("LOOPSCOPE_CLIENT_BUFFER", "262144")), 4096)
except ValueError:
    MAX_BUFFERED = 256 * 1024
STUCK_CLIENT_NS = 60 * 10**9
STALL_CHECK_NS = 25 * 10**6
PERIOD_NS = L.PERIOD_MS * 10**6
ALONE_NS = 60 * 10**9
MAX_EVENTS = 64
MAX_WORKERS = 256


def warn(message):
    try:
        sys.stderr.write("loopscope agent: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass


class Slot:
    def __init__(self, source, channel, restarts):
        self.source = source
        self.pid = source.pid
        self.channel = channel
        self.alive = True
        self.restarts = restarts


class Hub:
    def __init__(self, config, tcp, unix):
        self.config = config
        self.tcp = tcp
        self.unix = unix
        self.group = config["group"]
        self.group_start = config.get("group_start")
        self.telemetry = ""
        self.slots = []
        self.events = []
        self.clients = set()
        self.connections = 0
        self.pending = set()
        self.seq = 0
        self.latest = None
        self.latest_snapshot = None
        self.skipped = 0
        self.started = time.monotonic_ns()
        self.watched_until = 0
        self.idle = True
        self.last_host = host_times()
        self.last_host_cpu = 0.0
        self.alone_since = None
        self.loop = None

    # --- workers -------------------------------------------------------------
    def push_event(self, e):
        if len(self.events) < MAX_EVENTS:
            self.events.append(e)

    def add(self, source, channel):
        slot = next((i for i, s in enumerate(self.slots) if not s.alive), None)
        if slot is None and len(self.slots) >= MAX_WORKERS:
            warn("more than %d workers: worker %d is not shown" % (MAX_WORKERS, source.pid))
            channel.close()
            return
        if slot is None:
            slot = len(self.slots)
            self.slots.append(Slot(source, channel, 0))
        else:
            old = self.slots[slot]
            self.slots[slot] = Slot(source, channel, old.restarts + 1)
            self.push_event({"kind": "worker_restarted", "worker": slot,
                             "old_pid": old.pid, "new_pid": source.pid})
        source.rebase(time.monotonic_ns())
        self.loop.add_reader(channel, self.on_channel, slot, channel)
        self.alone_since = None

    def on_channel(self, slot, channel):
        try:
            data = channel.recv(4096) if isinstance(channel, socket.socket) else os.read(channel, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        self.loop.remove_reader(channel)
        try:
            channel.close() if isinstance(channel, socket.socket) else os.close(channel)
        except OSError:
            pass
        s = self.slots[slot]
        if s.channel is not channel or not s.alive:
            return
        s.alive = False
        self.push_event({"kind": "worker_exited", "worker": slot, "pid": s.pid,
                         "status": exit_status(s.pid)})

    def on_accept(self):
        try:
            conn, _ = self.unix.accept()
        except OSError:
            return
        if len(self.pending) >= MAX_PENDING:
            conn.close()
            return
        self.pending.add(conn)
        conn.setblocking(False)
        self.loop.add_reader(conn, self.on_register, conn)
        self.loop.call_later(5, self.drop_pending, conn)

    def drop_pending(self, conn):
        if conn not in self.pending:
            return
        self.pending.discard(conn)
        self.loop.remove_reader(conn)
        conn.close()

    def on_register(self, conn):
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = b"", []
        self.loop.remove_reader(conn)
        self.pending.discard(conn)
        try:
            hello = json.loads(msg)
            if not fds or not isinstance(hello.get("pid"), int):
                raise ValueError("no memory block")
            source = Source(fds.pop(0), hello["pid"])
            conn.send(json.dumps({"telemetry": self.telemetry}).encode() + b"\n")
        except (ValueError, OSError, AttributeError) as e:
            warn("a worker's registration failed: %r" % (e,))
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.add(source, conn)

    # --- sampling ------------------------------------------------------------
    def host_sample(self):
        h = host_times()
        cores = h[2] if h else 1
        cpu = self.last_host_cpu
        if h and self.last_host:
            busy = h[0] - self.last_host[0]
            idle = max(h[1] - self.last_host[1], 0)
            if busy + idle >= cores:
                cpu = r1(busy / (busy + idle) * cores * 100)
        if h and (not self.last_host or h[0] + h[1] - sum(self.last_host[:2]) >= cores):
            self.last_host = h
        self.last_host_cpu = cpu
        return {"cpu": cpu, "cores": cores}

    def workers(self, now):
        out = []
        for i, s in enumerate(self.slots):
            if s.alive:
                out.append(s.source.sample(now, i, s.restarts))
                self.events.extend(s.source.slow_polls(i)[: max(MAX_EVENTS - len(self.events), 0)])
            else:
                out.append(empty_worker(i, s.pid, s.restarts))
        return out

    def emit(self, now):
        snapshot = {
            "v": 2,
            "seq": self.seq,
            "t_ms": (now - self.started) // 10**6,
            "model": "fastapi",
            "period_ms": L.PERIOD_MS,
            "workers": self.workers(now),
            "host": self.host_sample(),
            "events": self.events,
        }
        self.events = []
        self.seq += 1
        self.latest_snapshot = snapshot
        self.latest = (json.dumps(snapshot, separators=(",", ":")) + "\n").encode()
        for w in list(self.clients):
            try:
                # A client that does not read gets at most MAX_BUFFERED bytes queued:
                # lines beyond are skipped for it (its seq shows the gap); one that
                # has read nothing for a minute is closed.
                if w.transport.get_write_buffer_size() > MAX_BUFFERED:
                    self.skipped += 1
                    since = getattr(w, "_loopscope_stuck", 0)
                    if not since:
                        w._loopscope_stuck = now
                    elif now - since > STUCK_CLIENT_NS:
                        w.transport.abort()
                        self.clients.discard(w)
                    continue
                w._loopscope_stuck = 0
                w.write(self.latest)
            except Exception:
                self.clients.discard(w)

    def watched(self, now):
        return bool(self.clients) or now < self.watched_until

    def rebase(self):
        if not self.idle:
            return
        self.idle = False
        now = time.monotonic_ns()
        for s in self.slots:
            if s.alive:
                s.source.rebase(now)
        self.last_host = host_times()

    def step(self, now, state):
        urgent = False
        for s in self.slots:
            if s.alive:
                stalled = s.source.stalled_for(now) > 0
                urgent |= stalled and not s.source.was_stalled
                s.source.was_stalled = stalled
        if urgent or now >= state["next"]:
            if self.watched(now):
                self.emit(now)
            else:
                self.idle = True
                self.events = []
                for s in self.slots:
                    if s.alive:
                        s.source.skip()
                        s.source.slow_polls(0)
            nxt = state["next"] + PERIOD_NS
            state["next"] = now + PERIOD_NS if urgent or now >= nxt else nxt

    def done(self, now):
        if any(s.alive for s in self.slots):
            return False
        if self.alone_since is None:
            self.alone_since = now
        return not alive(self.group, self.group_start) or now - self.alone_since > ALONE_NS

    async def run(self):
        self.loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self.serve, sock=self.tcp, limit=16384)
        self.loop.add_reader(self.unix, self.on_accept)
        first = Source(self.config["fd"], self.config["pid"])
        os.set_blocking(0, False)
        self.add(first, 0)
        state = {"next": time.monotonic_ns() + PERIOD_NS}
        while True:
            now = time.monotonic_ns()
            try:
                self.step(now, state)
            except Exception as e:
                warn("sampling: %r" % (e,))
            if self.done(now):
                break
            wait = max(0, min(state["next"] - time.monotonic_ns(), STALL_CHECK_NS))
            await asyncio.sleep(wait / 1e9)
        server.close()

    # --- the telemetry server ------------------------------------------------
    def info(self):
        app = next((s.source.app() for s in self.slots if s.source.app()), "")
        size = next((s.source.q[H.POOL_SIZE] for s in self.slots if s.alive), 0)
        return {
            "v": 2, "model": "fastapi", "app": app, "telemetry": self.telemetry,
            "pid": self.group, "workers": [{"id": i, "pid": s.pid} for i, s in enumerate(self.slots)],
            "pool_size": size, "period_ms": L.PERIOD_MS,
            "lag_resolution_ms": L.LAG_RESOLUTION_MS, "slow_poll_ms": L.SLOW_POLL_MS,
            "versions": {"loopscope": "agent-python", "protocol": 2},
        }

    async def serve(self, reader, writer):
        if self.connections >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            await self.answer(reader, writer)
        except Exception:
            pass
        finally:
            self.connections -= 1
            self.clients.discard(writer)
            writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.close()

    async def answer(self, reader, writer):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method = parts[0]
        path = (parts[1] if len(parts) > 1 else "/").split("?")[0]

        def reply(status, ctype, body):
            writer.write(("HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                          "connection: close\r\n\r\n" % (status, ctype, len(body))).encode())
            if method != "HEAD":
                writer.write(body)

        if method not in ("GET", "HEAD"):
            reply("405 Method Not Allowed", "application/json", b'{"error":"GET only"}')
        elif path == "/telemetry":
            if len(self.clients) >= MAX_CLIENTS:
                body = json.dumps({"error": "at most %d telemetry clients" % MAX_CLIENTS})
                reply("503 Service Unavailable", "application/json", body.encode())
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                             b"cache-control: no-cache\r\nconnection: close\r\n\r\n")
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # The kernel's share of a stuck client's backlog is bounded too
                    # (autotuned, it would grow to megabytes).
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(MAX_BUFFERED // 4, 4096))
                self.rebase()
                if self.latest:
                    writer.write(self.latest)
                self.clients.add(writer)
                while await reader.read(4096):
                    pass
                return
        elif path == "/info":
            reply("200 OK", "application/json", json.dumps(self.info()).encode())
        elif path == "/metrics":
            self.rebase()
            self.watched_until = time.monotonic_ns() + 60 * 10**9
            reply("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                  metrics(self.latest_snapshot, self.skipped).encode())
        else:
            body = {"error": "not found", "endpoints": ["/telemetry", "/metrics", "/info"]}
            reply("404 Not Found", "application/json", json.dumps(body).encode())
        await asyncio.wait_for(writer.drain(), 10)


def metrics(s, skipped):
    out = []

    def gauge(name, help_, rows):
        out.append("# HELP loopscope_%s %s" % (name, help_))
        out.append("# TYPE loopscope_%s gauge" % name)
        for labels, v in rows:
            out.append("loopscope_%s{%s} %s" % (name, labels, v))

    if s:
        def per(f):
            return [('worker="%d",pid="%d"' % (w["id"], w["pid"]), f(w)) for w in s["workers"]]

        gauge("loop_lag_max_ms", "Largest timer lateness in the period.", per(lambda w: w["lag_ms"]["max"]))
        gauge("loop_lag_p99_ms", "99th percentile timer lateness in the period.",
              per(lambda w: w["lag_ms"]["p99"]))
        gauge("loop_stalled_for_ms", "How long the loop has been blocked now.",
              per(lambda w: w["stalled_for_ms"]))
        gauge("loop_utilization", "Busy fraction of the loop thread.", per(lambda w: w["loop_utilization"]))
        gauge("pool_busy", "Pool jobs running.", per(lambda w: w["pool"]["busy"]))
        gauge("pool_queued", "Pool jobs waiting for a thread.", per(lambda w: w["pool"]["queued"]))
        gauge("cpu_process_percent", "Process CPU, percent of one core.", per(lambda w: w["cpu"]["process"]))
        gauge("requests_in_flight", "Requests accepted and not answered.",
              per(lambda w: w["requests"]["in_flight"]))
        gauge("host_cpu_percent", "Host CPU, percent of one core.", [("", s["host"]["cpu"])])
    gauge("telemetry_skipped_lines", "Lines skipped for slow telemetry clients.", [("", skipped)])
    return "\n".join(out) + "\n"


def say(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())


def main():
    config = json.loads(sys.argv[1])
    # Ctrl-C in a terminal reaches the whole process group: this process ends with
    # its workers instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        unix.bind(config["key"])
        unix.listen(64)
    except OSError:
        # Another worker's telemetry process serves this address: join it.
        say({"retry": True})
        return
    host, port = L.parse_host_port(config["telemetry"])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, port))
        tcp.listen(128)
    except OSError as e:
        import errno

        say({"in_use": True} if e.errno == errno.EADDRINUSE else {"error": str(e)})
        return
    name = tcp.getsockname()
    telemetry = "[%s]:%d" % name[:2] if family == socket.AF_INET6 else "%s:%d" % name[:2]
    unix.setblocking(False)
    hub = Hub(config, tcp, unix)
    hub.telemetry = telemetry
    say({"listening": telemetry})
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    asyncio.run(hub.run())


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        warn("telemetry process: %r" % (e,))
