"""The shared memory block between a measured process and the telemetry process.

Little-endian, native alignment. Header: int64 slots (``H``). Then the application
address, the lag ring (int32 µs), the pool wait ring (int32 µs), the request name
table and the slow-poll event ring. Rings are written by the measured loop and read
by index: the writer stores an entry, then the count of entries written.
"""

PERIOD_MS = 100
LAG_RESOLUTION_MS = 1
SLOW_POLL_MS = 50
STALL_THRESHOLD_MS = 10
MAX_STRING = 200
MAGIC = 0x4C5350593031  # "LSPY01"


class H:
    """Header slots (int64)."""

    MAGIC = 0
    BEAT = 1  # monotonic ns of the last lag tick (0: none yet)
    BUSY = 2  # loop busy ns since start, as of BUSY_AT
    BUSY_AT = 3
    BUSY_KNOWN = 4  # 1 when busy time is measured (the selector is wrapped)
    REQ_DONE = 5
    REQ_FLIGHT = 6
    POOL_SIZE = 7
    POOL_BUSY = 8
    POOL_QUEUED = 9
    POOL_DONE = 10
    POOL_OLDEST = 11  # submit time (ns) of the oldest job not started, 0: none
    POOL_KIND = 12  # 1: anyio's default limiter, 2: run_in_executor
    LAG_W = 13
    WAIT_W = 14
    CURRENT = 15  # name table slot + 1 of the request on the loop now, 0: none
    EVENT_W = 16
    LOOP_TID = 17
    STARTED = 18  # monotonic ns when the agent started
    APP_LEN = 19
    PID = 20
    GROUP = 21  # the server's pid: the workers' parent, or this process
    COUNT = 32


APP_OFF = H.COUNT * 8
APP_BYTES = 64
LAG_RING = 8192
LAG_OFF = APP_OFF + APP_BYTES
WAIT_RING = 2048
WAIT_OFF = LAG_OFF + LAG_RING * 4
# Name table: per slot int64 spare, int64 length (0 while written), then bytes.
NAMES = 256
NAME_BYTES = 256
NAME_OFF = WAIT_OFF + WAIT_RING * 4
# Slow polls: per entry int64 µs, int64 t_ms, int64 length, int64 spare, then bytes.
EVENTS = 64
EVENT_BYTES = 256
EVENT_OFF = NAME_OFF + NAMES * NAME_BYTES
SIZE = EVENT_OFF + EVENTS * EVENT_BYTES


def cut(s):
    s = str(s)
    return s if len(s) <= MAX_STRING else s[: MAX_STRING - 1] + "\u2026"


def utf8_cut(s, limit):
    raw = s.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def parse_host_port(s):
    s = (s or "").strip()
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def start_time(pid):
    """When a process started (clock ticks since boot, ``/proc/PID/stat``), 0 when
    gone: with its pid, it names one process even once the pid is reused."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def hub_key(telemetry, group, group_start):
    """The abstract unix socket name of the telemetry process of one server: the
    server's process (pid and start time) and the telemetry address."""
    import os

    return "\0loopscope-py-%d-%d-%d-%s" % (os.getuid(), group, group_start, telemetry.strip())
