"""What the telemetry process reads of one worker process: its shared memory block
(``loopscope_layout.py``), its threads' CPU (``/proc/PID/task/*/schedstat``), its
state; and the host's CPU (``/proc/stat``). One worker entry of a telemetry line per
period, in the protocol of the Node agent.
"""

import os
import mmap
import time

import loopscope_layout as L
from loopscope_layout import H

STALL_MS = L.STALL_THRESHOLD_MS + L.LAG_RESOLUTION_MS


def r1(x):
    return round(x, 1)


def r3(x):
    return round(x, 3)


def proc_state(pid):
    """The state letter of a process ('' when gone) and, for a zombie, its status."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), (int(fields[49]) if len(fields) > 49 else None)
    except (OSError, IndexError, ValueError):
        return "", None


def alive(pid, started=None):
    """True while ``pid`` runs (and, given ``started``, is the process that started
    then, not a later one with the same pid)."""
    if started is not None and L.start_time(pid) != started:
        return False
    return proc_state(pid)[0] not in ("", "Z", "X")


def exit_status(pid):
    # The kernel sets the exit code as the process starts to exit, before its
    # files (its channel to this process) are closed; its parent may reap it soon.
    state, code = proc_state(pid)
    if state and code is not None and (code or state in ("Z", "X")):
        if code & 0x7F:
            return "killed by signal %d" % (code & 0x7F)
        return "exited with status %d" % (code >> 8)
    return "exited"


def summary(us):
    if not us:
        return {"p50": 0, "p99": 0, "max": 0, "samples": 0}
    us.sort()
    n = len(us)

    def at(p):
        return us[max(0, -(-int(p * n * 1000) // 1000) - 1)] / 1000

    return {"p50": r3(at(0.5)), "p99": r3(at(0.99)), "max": r3(us[-1] / 1000), "samples": n}


def thread_ns(pid, tid):
    try:
        with open("/proc/%d/task/%s/schedstat" % (pid, tid), "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_times():
    try:
        with open("/proc/stat", "rb") as f:
            text = f.read().decode()
    except OSError:
        return None
    cores, times = 0, None
    for line in text.split("\n"):
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]] + [0] * 8
            times = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4])
        elif line.startswith("cpu"):
            cores += 1
    return (times[0], times[1], max(cores, 1)) if times else None


class Source:
    """One worker process's shared memory, read-only."""

    def __init__(self, fd, pid):
        try:
            self.mm = mmap.mmap(fd, L.SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        mv = memoryview(self.mm)
        self.q = mv[: H.COUNT * 8].cast("q")
        if self.q[H.MAGIC] != L.MAGIC:
            raise ValueError("not a loopscope agent's memory")
        self.lag = mv[L.LAG_OFF: L.LAG_OFF + L.LAG_RING * 4].cast("i")
        self.wait = mv[L.WAIT_OFF: L.WAIT_OFF + L.WAIT_RING * 4].cast("i")
        self.names = mv[L.NAME_OFF: L.NAME_OFF + L.NAMES * L.NAME_BYTES]
        self.name_q = self.names.cast("q")
        self.pid = pid
        self.was_stalled = False
        self.rebase(time.monotonic_ns())

    def rebase(self, now):
        q = self.q
        self.lag_read = q[H.LAG_W]
        self.wait_read = q[H.WAIT_W]
        self.last_at = now
        self.last_busy = None
        self.last_req = q[H.REQ_DONE]
        self.last_pool = q[H.POOL_DONE]
        self.threads = {}
        self.sample_threads(1)

    def skip(self):
        self.lag_read = self.q[H.LAG_W]
        self.wait_read = self.q[H.WAIT_W]

    def stalled_for(self, now):
        beat = self.q[H.BEAT]
        if not beat:
            return 0.0
        gap = (now - beat) / 1e6
        return gap if gap > STALL_MS else 0.0

    def current(self):
        q = self.q
        for _ in range(8):
            cur = q[H.CURRENT]
            if not 0 < cur <= L.NAMES:
                return None
            base = (cur - 1) * L.NAME_BYTES
            k = base // 8 + 1
            n = self.name_q[k]
            if not 0 < n <= L.NAME_BYTES - 16:
                continue
            raw = bytes(self.names[base + 16: base + 16 + n])
            if self.name_q[k] == n and q[H.CURRENT] == cur:
                return raw.decode("utf-8", "replace")
        return None

    def app(self):
        n = min(max(self.q[H.APP_LEN], 0), L.APP_BYTES)
        return bytes(self.mm[L.APP_OFF: L.APP_OFF + n]).decode("utf-8", "replace")

    def drain(self, ring, size, write, read):
        n = max(min(write - read, size), 0)
        return [ring[(write - n + k) % size] for k in range(n)]

    def slow_polls(self, slot):
        write = self.q[H.EVENT_W]
        read = getattr(self, "event_read", write)
        self.event_read = write
        out = []
        for i in range(max(read, write - L.EVENTS), write):
            base = L.EVENT_OFF + (i % L.EVENTS) * L.EVENT_BYTES
            us, t_ms, n, _ = memoryview(self.mm)[base: base + 32].cast("q")
            uri = bytes(self.mm[base + 32: base + 32 + min(max(n, 0), L.EVENT_BYTES - 32)])
            uri = L.cut(uri.decode("utf-8", "replace"))
            out.append({"kind": "slow_poll", "worker": slot, "endpoint": uri.split("?")[0],
                        "uri": uri, "ms": r3(us / 1000), "t_ms": t_ms})
        return out

    def sample_threads(self, dt_ns):
        loop, pool, threads = 0.0, 0.0, 0
        now = {}
        loop_tid = self.q[H.LOOP_TID]
        try:
            tids = os.listdir("/proc/%d/task" % self.pid)
        except OSError:
            tids = []
        for t in tids:
            ns = thread_ns(self.pid, t)
            if ns is None:
                continue
            tid = int(t)
            now[tid] = ns
            prev = self.threads.get(tid)
            d = ns - prev if prev is not None and prev <= ns else (ns if prev is None else 0)
            pct = d / dt_ns * 100
            if tid == loop_tid:
                loop += pct
            else:
                pool += pct
                threads += 1
        self.threads = now
        return loop, pool, threads

    def sample(self, now, slot, restarts):
        q = self.q
        dt_ns = max(now - self.last_at, 1000)
        self.last_at = now
        stall = self.stalled_for(now)
        lw = q[H.LAG_W]
        lag = summary(self.drain(self.lag, L.LAG_RING, lw, self.lag_read))
        self.lag_read = lw
        ww = q[H.WAIT_W]
        waits = summary(self.drain(self.wait, L.WAIT_RING, ww, self.wait_read))
        self.wait_read = ww
        loop_cpu, pool_cpu, threads = self.sample_threads(dt_ns)
        if q[H.BUSY_KNOWN]:
            # While the loop is blocked its published figure is frozen: the stall
            # counts as busy.
            busy = q[H.BUSY]
            at = q[H.BUSY_AT]
            if stall > 0 and at > 0:
                busy += max(now - at, 0)
            util = 0.0
            if self.last_busy is not None:
                util = min(max((busy - self.last_busy) / dt_ns, 0.0), 1.0)
            self.last_busy = busy
        else:
            util = min(loop_cpu / 100, 1.0)
        size = max(q[H.POOL_SIZE], 0)
        busy_jobs = max(q[H.POOL_BUSY], 0)
        queued = max(q[H.POOL_QUEUED], 0)
        oldest = q[H.POOL_OLDEST]
        oldest_wait = (now - oldest) / 1e6 if oldest > 0 and queued > 0 else 0.0
        pool_done = q[H.POOL_DONE]
        req_done = q[H.REQ_DONE]
        dt_ms = dt_ns / 1e6
        w = {
            "id": slot,
            "pid": self.pid,
            "alive": True,
            "restarts": restarts,
            "lag_ms": lag,
            "stalled_for_ms": r3(stall),
            "loop_utilization": r3(util),
            "pool": {
                "size": size,
                "threads": threads,
                "busy": busy_jobs,
                "queued": queued,
                "oldest_wait_ms": r3(oldest_wait),
                "wait_ms_max": r3(max(waits["max"], oldest_wait)),
                "wait_ms_p50": waits["p50"],
                "wait_ms_p99": waits["p99"],
                "completed": pool_done,
                "completed_per_s": r3((pool_done - self.last_pool) / dt_ms * 1000),
            },
            "cpu": {"process": r1(loop_cpu + pool_cpu), "loop_thread": r1(loop_cpu),
                    "pool_threads": r1(pool_cpu)},
            "requests": {
                "in_flight": max(q[H.REQ_FLIGHT], 0),
                "completed": req_done,
                "per_s": r3((req_done - self.last_req) / dt_ms * 1000),
            },
        }
        if stall > 0:
            current = self.current()
            if current:
                w["stalled_in"] = L.cut(current)
        self.last_pool = pool_done
        self.last_req = req_done
        return w


def empty_worker(slot, pid, restarts):
    return {
        "id": slot, "pid": pid, "alive": False, "restarts": restarts,
        "lag_ms": {"p50": 0, "p99": 0, "max": 0, "samples": 0},
        "stalled_for_ms": 0, "loop_utilization": 0,
        "pool": {"size": 0, "threads": 0, "busy": 0, "queued": 0, "oldest_wait_ms": 0,
                 "wait_ms_max": 0, "wait_ms_p50": 0, "wait_ms_p99": 0, "completed": 0,
                 "completed_per_s": 0},
        "cpu": {"process": 0, "loop_thread": 0, "pool_threads": 0},
        "requests": {"in_flight": 0, "completed": 0, "per_s": 0},
    }
