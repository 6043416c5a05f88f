'use strict';
// loopscope agent for Node.js (>= 18), no dependencies.
//
//   LOOPSCOPE_TELEMETRY=127.0.0.1:9465 node --require ./loopscope.js server.js
//
// The main thread (the event loop being measured) only does cheap bookkeeping:
//   - a 1 ms timer, re-armed each time, writes how late it fired (µs) into a ring
//     and stamps a heartbeat (process.hrtime, shared clock) at each tick;
//   - the request whose synchronous 'request' handler runs now is written into the
//     shared buffer (bytes + length under a sequence counter);
//   - event loop utilization, requests in flight/completed and the libuv pool
//     gauge (async_hooks) are published through the same SharedArrayBuffer.
// A worker_threads thread, which runs while the main loop is blocked, reads that
// buffer, builds one telemetry line per 100 ms period (and an extra one as soon as
// a stall begins) and serves `/telemetry` (NDJSON), `/info` and `/metrics`.
//
// Environment:
//   LOOPSCOPE_TELEMETRY   HOST:PORT to serve on (default 127.0.0.1:9465; port 0: any)
//   LOOPSCOPE_POOL_HOOKS  0 turns the async_hooks pool gauge off
//   LOOPSCOPE_ANNOUNCE    1 prints {"app":..,"telemetry":..,"pid":..} on stdout once
//                         both addresses are known
//   LOOPSCOPE_DISABLE     1 turns the agent off
//
// Cluster: the primary serves the telemetry; each worker process's agent thread
// streams its reports to the primary's agent thread over loopback (POST /report),
// so that a worker whose loop is blocked still reports its stall.

const PERIOD_MS = 100;
const LAG_RESOLUTION_MS = 1;
const SLOW_POLL_MS = 50;
const STALL_THRESHOLD_MS = 10;
const STALL_CHECK_MS = 25;
const LAG_RING = 8192;
const WAIT_RING = 2048;
const REQ_BYTES = 1024;
const MAX_STRING = 200;
const MAX_CLIENTS = 32;
const MAX_BUFFERED = 256 * 1024;
const STUCK_CLIENT_MS = 60000;
const MAX_POOL_TRACKED = 65536;
const POOL_JOB_FORGET_MS = 300000;
const POOL_DETECT_MS = 10000;
const MAX_EVENTS = 64;
const POOL_TYPES = new Set([
  'FSREQCALLBACK', 'FSREQPROMISE', 'FILEHANDLECLOSEREQ',
  'GETADDRINFOREQWRAP', 'GETNAMEINFOREQWRAP',
  'PBKDF2REQUEST', 'SCRYPTREQUEST', 'RANDOMBYTESREQUEST', 'RANDOMPRIMEREQUEST',
  'CHECKPRIMEREQUEST', 'KEYGENREQUEST', 'KEYPAIRGENREQUEST', 'KEYEXPORTREQUEST',
  'CIPHERREQUEST', 'DERIVEBITSREQUEST', 'HASHREQUEST', 'SIGNREQUEST', 'VERIFYREQUEST',
  'HKDFREQUEST',
]);

// Shared buffer layout: BigInt64 slots, then Int32 slots, then rings and bytes.
const B_HEARTBEAT = 0; // hrtime ns of the last lag tick (0: none yet)
const B_POOL_DONE = 2; // pool jobs finished since start
const B_POOL_OLDEST = 3; // init time (ns) of the oldest waiting pool job, 0: none
const B_ELU_ACTIVE = 4; // event loop active time (µs) since start, as of B_ELU_AT
const B_ELU_AT = 5; // hrtime ns when B_ELU_ACTIVE was measured
const B_SLOTS = 8;
const I_BASE = B_SLOTS * 8 / 4; // first Int32 slot index
const I_REQ_INFLIGHT = I_BASE + 0;
const I_POOL_INFLIGHT = I_BASE + 1;
const I_REQ_SEQ = I_BASE + 2; // odd while the request name is being written
const I_REQ_LEN = I_BASE + 3; // bytes of the request name, 0: none
const I_LAG_W = I_BASE + 4; // lag samples written (wraps)
const I_WAIT_W = I_BASE + 5; // pool wait samples written (wraps)
const I_REQ_DONE = I_BASE + 6; // requests answered since start (wraps)
const I_SLOTS = 16;
const LAG_OFF = I_BASE + I_SLOTS; // Int32 index of the lag ring
const WAIT_OFF = LAG_OFF + LAG_RING;
const REQ_BYTE_OFF = (WAIT_OFF + WAIT_RING) * 4;
const SAB_BYTES = REQ_BYTE_OFF + REQ_BYTES;

const warned = new Set();
function warnOnce(key, message) {
  try {
    if (warned.has(key)) return;
    warned.add(key);
    process.stderr.write(`loopscope agent: ${message}\n`);
  } catch (_) {
    // Nothing more can be done.
  }
}

function views(sab) {
  return {
    i64: new BigInt64Array(sab, 0, B_SLOTS),
    i32: new Int32Array(sab),
    bytes: Buffer.from(sab, REQ_BYTE_OFF, REQ_BYTES),
  };
}

function cut(s) {
  s = String(s);
  return s.length > MAX_STRING ? s.slice(0, MAX_STRING - 1) + '…' : s;
}

function addrString(a) {
  if (!a || typeof a !== 'object') return '';
  let host = a.address;
  if (host === '::' || host === '0.0.0.0' || host === '::ffff:0.0.0.0') host = '127.0.0.1';
  return host.includes(':') ? `[${host}]:${a.port}` : `${host}:${a.port}`;
}

function parseHostPort(s) {
  const m = /^\s*\[?([^\]\s]*?)\]?:(\d+)\s*$/.exec(s || '');
  if (!m || Number(m[2]) > 65535) return null;
  return { host: m[1] || '127.0.0.1', port: Number(m[2]) };
}

function tidsOf() {
  try {
    return require('fs').readdirSync('/proc/self/task');
  } catch (_) {
    return [];
  }
}

// ---------------------------------------------------------------------------
// Main thread: the measured loop.
// ---------------------------------------------------------------------------

function startMain() {
  const { Worker } = require('worker_threads');
  const { performance } = require('perf_hooks');
  const http = require('http');
  const cluster = safeRequire('cluster');

  const isChild = !!(cluster && cluster.isWorker);
  // Read again at the pool's first job: an application may set it before then.
  let poolSize = poolSizeFromEnv();
  const sab = new SharedArrayBuffer(SAB_BYTES);
  const { i64, i32, bytes } = views(sab);
  const hr = process.hrtime.bigint;
  const started = hr();


  const config = {
    loopscopeAgent: true,
    sab,
    pid: process.pid,
    started: started.toString(),
    poolSize,
    telemetry: process.env.LOOPSCOPE_TELEMETRY || '127.0.0.1:9465',
    announce: process.env.LOOPSCOPE_ANNOUNCE === '1',
    poolHooks: process.env.LOOPSCOPE_POOL_HOOKS !== '0',
    clusterChild: isChild,
  };

  let worker;
  try {
    worker = new Worker(__filename, { workerData: config, execArgv: [], stdout: false, stderr: false });
    worker.on('error', (e) => warnOnce('worker', `telemetry thread failed: ${e && e.message}`));
  } catch (e) {
    warnOnce('worker', `cannot start the telemetry thread: ${e && e.message}`);
    return;
  }
  const post = (m) => {
    try {
      worker.postMessage(m);
    } catch (e) {
      warnOnce('post', `cannot reach the telemetry thread: ${e && e.message}`);
    }
  };
  let primary = null;
  if (cluster && cluster.isPrimary) {
    try {
      primary = setupPrimary(cluster, post, onApp);
    } catch (e) {
      warnOnce('primary', `cluster setup failed: ${e && e.message}`);
    }
  }
  if (isChild) {
    // The primary's agent tells each worker where to send its reports.
    // The listener holds the IPC channel only until that message came.
    const onMessage = (m) => {
      if (m && typeof m.loopscopePrimary === 'string') {
        process.off('message', onMessage);
        if (m.loopscopePrimary) post({ type: 'primary', addr: m.loopscopePrimary });
      }
    };
    process.on('message', onMessage);
  }

  // Lag: a 1 ms timer, re-armed from now each time; lateness past its interval.
  let armedAt = hr();
  let ticks = 0;
  const tick = () => {
    try {
      const now = hr();
      const lateUs = Number(now - armedAt) / 1000 - LAG_RESOLUTION_MS * 1000;
      const w = i32[I_LAG_W];
      i32[LAG_OFF + ((w >>> 0) % LAG_RING)] = lateUs > 0 ? Math.min(Math.round(lateUs), 0x7fffffff) : 0;
      Atomics.store(i32, I_LAG_W, (w + 1) | 0);
      Atomics.store(i64, B_HEARTBEAT, now);
      if ((ticks++ & 7) === 0) {
        const elu = performance.eventLoopUtilization();
        Atomics.store(i64, B_ELU_ACTIVE, BigInt(Math.round(elu.active * 1000)));
        Atomics.store(i64, B_ELU_AT, now);
      }
    } catch (e) {
      warnOnce('tick', `lag timer: ${e && e.message}`);
    }
    // Re-armed from now (the same timer object: nothing allocated per tick).
    armedAt = hr();
    timer.refresh();
  };
  const timer = setTimeout(tick, LAG_RESOLUTION_MS);
  timer.unref();

  // The request whose synchronous handler holds the loop, and slow handlers.
  let depth = 0;
  let announced = false;
  let appAddr = '';
  let telemetryAddr = '';
  // The request held now: its bytes are written only when they differ from the
  // last request's (under the sequence counter); a request to the same target as
  // the last one only stores its length, and the handler's end stores 0.
  let lastMethod = '';
  let lastUrl = '';
  let lastTarget = '';
  let lastLen = 0;
  const holdRequest = (method, url) => {
    if (method !== lastMethod || url !== lastUrl) {
      lastMethod = method;
      lastUrl = url;
      lastTarget = cut(`${method} ${url}`);
      Atomics.add(i32, I_REQ_SEQ, 1);
      lastLen = bytes.write(lastTarget, 0, REQ_BYTES, 'utf8');
      Atomics.store(i32, I_REQ_LEN, lastLen);
      Atomics.add(i32, I_REQ_SEQ, 1);
    } else {
      Atomics.store(i32, I_REQ_LEN, lastLen);
    }
    return lastTarget;
  };
  function onApp(addr) {
    if (appAddr || !addr) return;
    appAddr = addr;
    post({ type: 'app', app: appAddr });
    maybeAnnounce();
  }
  const maybeAnnounce = () => {
    if (config.announce && !announced && appAddr && telemetryAddr) {
      announced = true;
      process.stdout.write(JSON.stringify({ app: appAddr, telemetry: telemetryAddr, pid: process.pid }) + '\n');
    }
  };
  // A 'message' listener refs the worker's port: unref everything after adding it,
  // so that the agent never keeps the process alive.
  worker.on('message', (m) => {
    if (m && m.type === 'listening') {
      telemetryAddr = m.telemetry;
      if (primary) primary.listening(telemetryAddr);
      maybeAnnounce();
    } else if (m && m.type === 'listen-failed') {
      if (primary) primary.listening('');
    }
  });
  worker.unref();

  // A response closed: its request is no longer in flight; answered if it finished.
  // Seen in the responses' own emit (every server response emits 'close' once), not
  // through a listener added to each.
  // A prototype's emit replaced once by wrap(original emit).
  const wrapEmit = (proto, wrap) => {
    if (!proto || proto.__loopscopePatched) return;
    proto.__loopscopePatched = true;
    proto.emit = wrap(proto.emit);
  };
  const patchResponse = (proto) => wrapEmit(proto, (original) =>
    function loopscopeResponseEmit(event) {
      if (event === 'close') {
        Atomics.sub(i32, I_REQ_INFLIGHT, 1);
        if (this.writableFinished) Atomics.add(i32, I_REQ_DONE, 1);
      }
      return original.apply(this, arguments);
    });
  const patch = (proto) => wrapEmit(proto, (original) =>
    function loopscopeEmit(event, req, res) {
      if (event === 'listening' && !appAddr) {
        try {
          onApp(addrString(this.address()));
        } catch (e) {
          warnOnce('listening', `app address: ${e && e.message}`);
        }
      }
      if (event !== 'request') return original.apply(this, arguments);
      let t0 = 0;
      let target = '';
      try {
        target = depth++ === 0 ? holdRequest(req.method, req.url) : cut(`${req.method} ${req.url}`);
        // A double, not a BigInt: nothing allocated to time the handler.
        t0 = performance.now();
        Atomics.add(i32, I_REQ_INFLIGHT, 1);
      } catch (e) {
        warnOnce('request', `request bookkeeping: ${e && e.message}`);
      }
      try {
        return original.apply(this, arguments);
      } finally {
        try {
          if (--depth === 0) Atomics.store(i32, I_REQ_LEN, 0);
          if (t0) {
            const ms = performance.now() - t0;
            if (ms >= SLOW_POLL_MS) {
              const end = hr();
              const q = target.indexOf('?');
              post({
                type: 'event',
                event: {
                  kind: 'slow_poll',
                  worker: 0,
                  endpoint: q >= 0 ? target.slice(0, q) : target,
                  uri: target,
                  ms: Math.round(ms * 1000) / 1000,
                  t_ms: Number((end - started) / 1000000n),
                },
              });
            }
          }
        } catch (e) {
          warnOnce('request-end', `request bookkeeping: ${e && e.message}`);
        }
      }
    });
  patch(http.Server.prototype);
  patchResponse(http.ServerResponse.prototype);
  const https = safeRequire('https');
  if (https) patch(https.Server.prototype);

  // libuv starts all its pool threads at the first job, synchronously, right after
  // the job's init hook: the threads that appear by the next tick are the pool's.
  // (The agent does not start the pool itself: the application may still set
  // UV_THREADPOOL_SIZE before its first job.)
  let poolSeen = false;
  const notePoolStart = () => {
    poolSeen = true;
    poolSize = poolSizeFromEnv();
    const before = tidsOf();
    process.nextTick(() => {
      try {
        const fresh = tidsOf().filter((t) => !before.includes(t));
        post({ type: 'pool', size: poolSize, tids: fresh.length === poolSize ? fresh.map(Number) : [] });
      } catch (e) {
        warnOnce('pool-threads', `pool threads: ${e && e.message}`);
      }
    });
  };

  // The libuv pool: jobs started (init) and not yet finished (their callback ran).
  if (config.poolHooks) {
    try {
      const pending = new Map();
      const publishOldest = () => {
        let i = 0;
        let oldest = 0n;
        if (pending.size > poolSize) {
          for (const t of pending.values()) {
            if (i++ === poolSize) {
              oldest = t;
              break;
            }
          }
        }
        Atomics.store(i64, B_POOL_OLDEST, oldest);
      };
      const finish = (id) => {
        const t = pending.get(id);
        if (t === undefined) return;
        const wasQueued = pending.size > poolSize;
        pending.delete(id);
        Atomics.sub(i32, I_POOL_INFLIGHT, 1);
        Atomics.add(i64, B_POOL_DONE, 1n);
        if (wasQueued) {
          // The pool's queue is FIFO: the job that just got a thread is the one at
          // position `size` of the jobs in flight, in the order they started.
          let i = 0;
          for (const s of pending.values()) {
            if (++i === poolSize) {
              const w = i32[I_WAIT_W];
              const waitUs = Number(hr() - s) / 1000;
              i32[WAIT_OFF + ((w >>> 0) % WAIT_RING)] = Math.min(Math.round(waitUs), 0x7fffffff);
              Atomics.store(i32, I_WAIT_W, (w + 1) | 0);
              break;
            }
          }
        }
        publishOldest();
      };
      const hook = require('async_hooks').createHook({
        init(id, type) {
          if (!POOL_TYPES.has(type)) return;
          if (!poolSeen) notePoolStart();
          // A job whose callback never ran (none is known) is forgotten after
          // POOL_JOB_FORGET_MS rather than counted in flight forever.
          if (pending.size !== 0) {
            const [oldId, t] = pending.entries().next().value;
            if (Number(hr() - t) / 1e6 > POOL_JOB_FORGET_MS) finish(oldId);
          }
          if (pending.size < MAX_POOL_TRACKED) {
            pending.set(id, hr());
            Atomics.add(i32, I_POOL_INFLIGHT, 1);
            if (pending.size > poolSize) publishOldest();
          }
        },
        // No destroy hook: with one, Node tracks every promise's collection, which
        // costs several times the init and after hooks together.
        after(id) {
          if (pending.size !== 0) finish(id);
        },
      });
      hook.enable();
    } catch (e) {
      warnOnce('hooks', `pool hooks: ${e && e.message}`);
    }
  } else {
    // Without the gauge, a hook only to find the pool's threads at its first job,
    // for at most POOL_DETECT_MS.
    try {
      const hook = require('async_hooks').createHook({
        init(_id, type) {
          if (!poolSeen && POOL_TYPES.has(type)) {
            notePoolStart();
            process.nextTick(() => hook.disable());
          }
        },
      });
      hook.enable();
      setTimeout(() => hook.disable(), POOL_DETECT_MS).unref();
    } catch (e) {
      warnOnce('hooks', `pool threads: ${e && e.message}`);
    }
  }
}

function poolSizeFromEnv() {
  const n = Number(process.env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 1024) : 4;
}

function safeRequire(name) {
  try {
    return require(name);
  } catch (_) {
    return null;
  }
}

// Cluster primary: worker slots (0..N) follow cluster.fork; a replacement for a dead
// worker takes its slot and counts as a restart. The agent thread learns of forks
// and exits by message; the reports come straight from the workers' agent threads,
// which learn the primary's telemetry address by IPC.
function setupPrimary(cluster, post, onApp) {
  const slots = []; // slot -> {pid, alive}
  const slotOf = new Map(); // cluster worker id -> slot
  const workers = new Map(); // cluster worker id -> cluster worker
  let telemetry = '';
  let told = false;
  const tell = (w) => {
    try {
      if (told && w.isConnected()) w.send({ loopscopePrimary: telemetry });
    } catch (e) {
      warnOnce('tell', `cluster message: ${e && e.message}`);
    }
  };
  cluster.on('fork', (w) => {
    try {
      let slot = slots.findIndex((s) => s && !s.alive);
      let oldPid = 0;
      if (slot < 0) {
        slot = slots.length;
      } else {
        oldPid = slots[slot].pid;
      }
      slots[slot] = { pid: w.process.pid, alive: true };
      slotOf.set(w.id, slot);
      workers.set(w.id, w);
      post({ type: 'fork', slot, pid: w.process.pid, oldPid });
      tell(w);
    } catch (e) {
      warnOnce('fork', `cluster fork: ${e && e.message}`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    try {
      workers.delete(w.id);
      const slot = slotOf.get(w.id);
      if (slot === undefined) return;
      slotOf.delete(w.id);
      slots[slot].alive = false;
      const status = signal ? `killed by signal ${signal}` : `exited with status ${code}`;
      post({ type: 'exit', slot, pid: w.process.pid, status });
    } catch (e) {
      warnOnce('exit', `cluster exit: ${e && e.message}`);
    }
  });
  // The application's address: where the workers listen (they share one port).
  cluster.on('listening', (_w, a) => {
    try {
      if (a && a.port) onApp(addrString({ address: a.address || '127.0.0.1', port: a.port }));
    } catch (e) {
      warnOnce('cluster-listening', `cluster listening: ${e && e.message}`);
    }
  });
  return {
    listening(addr) {
      telemetry = addr;
      told = true;
      for (const w of workers.values()) tell(w);
    },
  };
}

// ---------------------------------------------------------------------------
// The agent thread: sampling, stall detection, the telemetry server.
// ---------------------------------------------------------------------------

function startAgentThread(config) {
  const http = require('http');
  const fs = require('fs');
  const { parentPort } = require('worker_threads');
  const { i64, i32, bytes } = views(config.sab);
  const hr = process.hrtime.bigint;
  const started = BigInt(config.started);
  const pid = config.pid;
  let poolSize = config.poolSize;
  let poolTids = new Set();

  let app = '';
  let clusterMode = false; // this process is a cluster primary with workers
  let primaryAddr = '';
  const events = [];
  const pushEvent = (e) => {
    if (events.length < MAX_EVENTS) events.push(e);
  };
  // Cluster primary: the workers' latest reports, by slot.
  const slots = [];
  parentPort.on('message', (m) => {
    try {
      if (!m) return;
      if (m.type === 'app') app = m.app;
      else if (m.type === 'pool') {
        poolSize = m.size;
        poolTids = new Set(m.tids);
      }
      else if (m.type === 'event') pushEvent(m.event);
      else if (m.type === 'primary') {
        if (!primaryAddr) {
          primaryAddr = m.addr;
          connectPrimary();
        }
      }
      else if (m.type === 'fork') {
        clusterMode = true;
        const prev = slots[m.slot];
        const restarts = prev ? prev.restarts + 1 : 0;
        slots[m.slot] = { pid: m.pid, alive: true, restarts, report: null, at: 0n };
        if (prev) pushEvent({ kind: 'worker_restarted', worker: m.slot, old_pid: m.oldPid, new_pid: m.pid });
      } else if (m.type === 'exit') {
        const s = slots[m.slot];
        if (s && s.pid === m.pid) s.alive = false;
        pushEvent({ kind: 'worker_exited', worker: m.slot, pid: m.pid, status: cut(m.status) });
      }
    } catch (e) {
      warnOnce('message', `agent message: ${e && e.message}`);
    }
  });

  // --- sampling -----------------------------------------------------------
  let lagRead = Atomics.load(i32, I_LAG_W);
  let waitRead = Atomics.load(i32, I_WAIT_W);
  const drain = (writeIdx, readIdx, off, ring) => {
    let n = (writeIdx - readIdx) | 0;
    if (n < 0) n = 0;
    const take = Math.min(n, ring);
    const out = new Array(take);
    for (let k = 0; k < take; k++) {
      out[k] = i32[off + (((writeIdx - take + k) >>> 0) % ring)];
    }
    return out;
  };
  const summary = (us) => {
    if (us.length === 0) return { p50: 0, p99: 0, max: 0, samples: 0 };
    us.sort((a, b) => a - b);
    const at = (q) => us[Math.max(0, Math.ceil(q * us.length) - 1)] / 1000;
    return { p50: at(0.5), p99: at(0.99), max: us[us.length - 1] / 1000, samples: us.length };
  };
  const readCurrent = () => {
    for (let attempt = 0; attempt < 8; attempt++) {
      const s1 = Atomics.load(i32, I_REQ_SEQ);
      if (s1 & 1) continue;
      const len = Math.min(Atomics.load(i32, I_REQ_LEN), REQ_BYTES);
      const text = len > 0 ? bytes.toString('utf8', 0, len) : '';
      if (Atomics.load(i32, I_REQ_SEQ) === s1) return text || null;
    }
    return null;
  };
  const stalledFor = (now) => {
    const beat = Atomics.load(i64, B_HEARTBEAT);
    if (beat === 0n) return 0;
    const gapMs = Number(now - beat) / 1e6;
    return gapMs > STALL_THRESHOLD_MS + LAG_RESOLUTION_MS ? gapMs : 0;
  };

  const readNs = (path) => {
    try {
      const s = fs.readFileSync(path, 'latin1');
      const v = Number(s.slice(0, s.indexOf(' ')));
      return Number.isFinite(v) ? v : null;
    } catch (_) {
      return null;
    }
  };
  const threadNs = (tid) => {
    const ns = readNs(`/proc/self/task/${tid}/schedstat`);
    if (ns !== null) return ns;
    try {
      const st = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      return (Number(f[11]) + Number(f[12])) * 1e7;
    } catch (_) {
      return null;
    }
  };
  const hostTimes = () => {
    try {
      const text = fs.readFileSync('/proc/stat', 'latin1');
      let cores = 0;
      let times = null;
      for (const line of text.split('\n')) {
        if (line.startsWith('cpu ')) {
          const v = line.trim().split(/\s+/).slice(1).map(Number);
          const at = (i) => v[i] || 0;
          times = { busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7), idle: at(3) + at(4) };
        } else if (/^cpu\d/.test(line)) cores++;
      }
      return times ? { ...times, cores: Math.max(cores, 1) } : null;
    } catch (_) {
      return null;
    }
  };
  const r1 = (x) => Math.round(x * 10) / 10;
  const r3 = (x) => Math.round(x * 1000) / 1000;

  let lastAt = hr();
  let lastProcUs = cpuUs();
  let lastThreads = new Map();
  let lastHost = hostTimes();
  let lastBusyUs = null;
  // The main thread counts answered requests in an Int32 that wraps; the total is
  // kept here from its differences.
  let lastReqDone = 0;
  let reqTotal = 0;
  let lastPoolDone = 0n;
  function cpuUs() {
    const u = process.cpuUsage();
    return u.user + u.system;
  }
  const sampleThreads = (dtNs) => {
    let loop = 0;
    let pool = 0;
    let threads = 0;
    const now = new Map();
    for (const t of tidsOf()) {
      const tid = Number(t);
      const ns = threadNs(tid);
      if (ns === null) continue;
      now.set(tid, ns);
      const prev = lastThreads.get(tid);
      const d = prev !== undefined && prev <= ns ? ns - prev : prev === undefined ? ns : 0;
      const pct = (d / dtNs) * 100;
      if (tid === pid) loop += pct;
      else if (poolTids.has(tid)) {
        pool += pct;
        threads++;
      }
    }
    lastThreads = now;
    return { loop, pool, threads };
  };
  sampleThreads(1);

  // The main loop's own worker entry for the period ending now.
  const sample = (now) => {
    const dtNs = Math.max(Number(now - lastAt), 1000);
    const dtMs = dtNs / 1e6;
    lastAt = now;
    const stall = stalledFor(now);

    const lw = Atomics.load(i32, I_LAG_W);
    const lag = summary(drain(lw, lagRead, LAG_OFF, LAG_RING));
    lagRead = lw;
    const ww = Atomics.load(i32, I_WAIT_W);
    const waits = drain(ww, waitRead, WAIT_OFF, WAIT_RING);
    waitRead = ww;

    // Utilization: the loop's active time since the last sample; while the loop is
    // blocked its published figure is frozen, so the stall counts as busy.
    const eluAt = Atomics.load(i64, B_ELU_AT);
    let busyUs = Number(Atomics.load(i64, B_ELU_ACTIVE));
    if (stall > 0 && eluAt > 0n) busyUs += Math.max(0, Number(now - eluAt) / 1000);
    let util = 0;
    if (lastBusyUs !== null) util = Math.min(Math.max((busyUs - lastBusyUs) / (dtMs * 1000), 0), 1);
    lastBusyUs = busyUs;

    const procUs = cpuUs();
    const process_ = ((procUs - lastProcUs) / (dtMs * 1000)) * 100;
    lastProcUs = procUs;
    const th = sampleThreads(dtNs);

    const inFlight = Math.max(Atomics.load(i32, I_POOL_INFLIGHT), 0);
    const oldest = Atomics.load(i64, B_POOL_OLDEST);
    const poolDone = Atomics.load(i64, B_POOL_DONE);
    const reqDone = Atomics.load(i32, I_REQ_DONE);
    const reqNew = (reqDone - lastReqDone) >>> 0;
    reqTotal += reqNew;
    const ws = summary(waits);
    const oldestWait = oldest > 0n && inFlight > poolSize ? Number(now - oldest) / 1e6 : 0;
    const w = {
      id: 0,
      pid,
      alive: true,
      restarts: 0,
      lag_ms: { p50: r3(lag.p50), p99: r3(lag.p99), max: r3(lag.max), samples: lag.samples },
      stalled_for_ms: r3(stall),
      loop_utilization: r3(util),
      pool: {
        size: poolSize,
        threads: th.threads,
        busy: Math.min(inFlight, poolSize),
        queued: Math.max(inFlight - poolSize, 0),
        oldest_wait_ms: r3(oldestWait),
        wait_ms_max: r3(Math.max(ws.max, oldestWait)),
        wait_ms_p50: r3(ws.p50),
        wait_ms_p99: r3(ws.p99),
        completed: Number(poolDone),
        completed_per_s: r3((Number(poolDone - lastPoolDone) / dtMs) * 1000),
      },
      cpu: { process: r1(process_), loop_thread: r1(th.loop), pool_threads: r1(th.pool) },
      requests: {
        in_flight: Math.max(Atomics.load(i32, I_REQ_INFLIGHT), 0),
        completed: reqTotal,
        per_s: r3((reqNew / dtMs) * 1000),
      },
    };
    if (stall > 0) {
      const current = readCurrent();
      if (current) w.stalled_in = cut(current);
    }
    lastPoolDone = poolDone;
    lastReqDone = reqDone;
    return w;
  };

  const hostSample = () => {
    const h = hostTimes();
    let cpu = 0;
    let cores = h ? h.cores : 1;
    if (h && lastHost) {
      const busy = h.busy - lastHost.busy;
      const idle = Math.max(h.idle - lastHost.idle, 0);
      if (busy + idle >= cores) cpu = r1((busy / (busy + idle)) * cores * 100);
      else cpu = lastHostCpu;
    }
    if (h && (!lastHost || h.busy + h.idle - lastHost.busy - lastHost.idle >= cores)) lastHost = h;
    lastHostCpu = cpu;
    return { cpu, cores };
  };
  let lastHostCpu = 0;

  // --- the telemetry server ----------------------------------------------
  let seq = 0;
  let rebase = () => {};
  let latest = null; // the latest line
  let latestSnapshot = null;
  let skippedLines = 0;
  const clients = new Set();
  let telemetryAddr = '';

  const info = () => {
    const workers = clusterMode
      ? slots.map((s, id) => (s ? { id, pid: s.pid } : null)).filter(Boolean)
      : [{ id: 0, pid }];
    return {
      v: 2,
      model: 'node',
      app,
      telemetry: telemetryAddr,
      pid,
      workers,
      pool_size: poolSize,
      period_ms: PERIOD_MS,
      lag_resolution_ms: LAG_RESOLUTION_MS,
      slow_poll_ms: SLOW_POLL_MS,
      versions: { loopscope: 'agent-node', protocol: 2 },
    };
  };

  const publish = (snapshot) => {
    latestSnapshot = snapshot;
    latest = JSON.stringify(snapshot) + '\n';
    for (const res of clients) {
      try {
        // A client that does not read gets no more than MAX_BUFFERED bytes queued:
        // lines beyond are skipped for it (its seq shows the gap).
        // One that has read nothing for STUCK_CLIENT_MS is closed.
        if (res.writableLength > MAX_BUFFERED) {
          skippedLines++;
          if (!res.loopscopeStuckSince) res.loopscopeStuckSince = Date.now();
          else if (Date.now() - res.loopscopeStuckSince > STUCK_CLIENT_MS) res.destroy();
          continue;
        }
        res.loopscopeStuckSince = 0;
        res.write(latest);
      } catch (e) {
        clients.delete(res);
      }
    }
  };

  const workersOf = (now) => {
    const own = sample(now);
    if (!clusterMode) return [own];
    // Cluster primary: the workers' latest reports. A worker silent for more than
    // two periods is marked so; a dead one is not alive.
    return slots
      .map((s, id) => {
        if (!s) return null;
        const base = s.report ? { ...s.report } : emptyWorker(s.pid);
        base.id = id;
        base.pid = s.pid;
        base.restarts = s.restarts;
        base.alive = s.alive && !!s.report;
        if (s.report) {
          const silentMs = Number(now - s.at) / 1e6;
          if (s.alive && silentMs > 2 * PERIOD_MS) base.silent_for_ms = r3(silentMs);
          // Once published, a period's lag is not repeated.
          if (s.fresh) s.fresh = false;
          else base.lag_ms = { p50: 0, p99: 0, max: 0, samples: 0 };
        }
        return base;
      })
      .filter(Boolean);
  };

  const emitLine = (now) => {
    const workers = workersOf(now);
    const snapshot = {
      v: 2,
      seq: seq++,
      t_ms: Number((now - started) / 1000000n),
      model: 'node',
      period_ms: PERIOD_MS,
      workers,
      host: hostSample(),
      events: events.splice(0, events.length),
    };
    publish(snapshot);
  };

  // Cluster child: reports go to the primary instead of a server of its own.
  let reportSocket = null;
  const sendReport = (now, urgent) => {
    const worker = sample(now);
    const report = { worker, events: events.splice(0, events.length), urgent };
    const line = JSON.stringify({ pid, report }) + '\n';
    if (reportSocket && !reportSocket.destroyed && reportSocket.writableLength <= MAX_BUFFERED) {
      reportSocket.write(line);
    }
  };
  const connectPrimary = () => {
    const target = parseHostPort(primaryAddr);
    if (!target) return;
    const req = http.request({
      host: target.host,
      port: target.port,
      method: 'POST',
      path: '/report',
      headers: { 'content-type': 'application/x-ndjson' },
    });
    const retry = () => {
      if (reportSocket !== req) return;
      reportSocket = null;
      setTimeout(connectPrimary, 500).unref();
    };
    req.on('error', retry);
    req.on('close', retry);
    req.on('response', (res) => res.resume());
    req.flushHeaders();
    reportSocket = req;
  };

  const onReportLine = (line) => {
    let m;
    try {
      m = JSON.parse(line);
    } catch (_) {
      return false;
    }
    const slot = slots.findIndex((s) => s && s.pid === m.pid);
    if (slot < 0 || !m.report || !m.report.worker) return false;
    const s = slots[slot];
    const w = m.report.worker;
    // A report not yet published is merged into, not lost: its lag stays counted.
    if (s.report && s.fresh) {
      const a = s.report.lag_ms;
      const b = w.lag_ms;
      w.lag_ms = {
        p50: Math.max(a.p50, b.p50),
        p99: Math.max(a.p99, b.p99),
        max: Math.max(a.max, b.max),
        samples: a.samples + b.samples,
      };
    }
    s.report = w;
    s.fresh = true;
    s.at = hr();
    for (const e of m.report.events || []) {
      if (e && e.kind === 'slow_poll') e.worker = slot;
      pushEvent(e);
    }
    return !!m.report.urgent;
  };

  const server = http.createServer((req, res) => {
    try {
      const path = (req.url || '/').split('?')[0];
      if (req.method === 'POST' && path === '/report' && clusterMode) {
        const addr = req.socket.remoteAddress || '';
        if (!/^(127\.|::1$|::ffff:127\.)/.test(addr)) {
          res.writeHead(403).end();
          return;
        }
        let buf = '';
        req.setEncoding('utf8');
        req.on('data', (chunk) => {
          buf += chunk;
          if (buf.length > 4 * MAX_BUFFERED) buf = '';
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (onReportLine(line)) urgentNow();
          }
        });
        req.on('end', () => res.end());
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET' }).end();
        return;
      }
      if (path === '/telemetry') {
        if (clients.size >= MAX_CLIENTS) {
          res.writeHead(503, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: `at most ${MAX_CLIENTS} telemetry clients` }));
          return;
        }
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
        req.socket.setNoDelay(true);
        rebase();
        if (latest) res.write(latest);
        clients.add(res);
        res.on('close', () => clients.delete(res));
        return;
      }
      if (path === '/info') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(info()));
        return;
      }
      if (path === '/metrics') {
        rebase();
        watchedUntil = hr() + 60000000000n;
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(metrics(latestSnapshot, skippedLines));
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'not found', endpoints: ['/telemetry', '/metrics', '/info'] }));
    } catch (e) {
      warnOnce('serve', `telemetry request: ${e && e.message}`);
      try {
        res.destroy();
      } catch (_) {
        // Already gone.
      }
    }
  });
  server.on('error', (e) => {
    if (!server.listening) parentPort.postMessage({ type: 'listen-failed' });
    if (e && e.code === 'EADDRINUSE') {
      warnOnce('listen', `telemetry address ${config.telemetry} is in use; no telemetry is served (the application runs on)`);
    } else {
      warnOnce('listen', `telemetry server: ${e && e.message}`);
    }
  });
  server.on('clientError', (_e, socket) => socket.destroy());

  // --- the schedule: a line per period, an extra one when a stall begins ----
  let nextReport = hr() + BigInt(PERIOD_MS) * 1000000n;
  let wasStalled = false;
  let urgentPending = false;
  const urgentNow = () => {
    urgentPending = true;
    setImmediate(step);
  };
  const line = config.clusterChild ? sendReport : emitLine;
  const step = () => {
    try {
      const now = hr();
      const stalled = stalledFor(now) > 0;
      const onset = stalled && !wasStalled;
      wasStalled = stalled;
      const urgent = onset || urgentPending;
      urgentPending = false;
      if (urgent || now >= nextReport) {
        if (config.clusterChild || watched(now)) line(now, urgent);
        else idlePeriod();
        const period = BigInt(PERIOD_MS) * 1000000n;
        nextReport = urgent || now >= nextReport + period ? now + period : nextReport + period;
      }
    } catch (e) {
      warnOnce('step', `sampling: ${e && e.message}`);
    }
  };
  // Nobody watching (no /telemetry client, no /metrics scrape in the last minute):
  // the samples of the period are dropped instead of summarised, and the next
  // client starts from fresh baselines.
  let idle = false;
  let watchedUntil = 0n;
  const watched = (now) => clients.size > 0 || now < watchedUntil;
  const idlePeriod = () => {
    idle = true;
    lagRead = Atomics.load(i32, I_LAG_W);
    waitRead = Atomics.load(i32, I_WAIT_W);
    events.length = 0;
  };
  rebase = () => {
    if (!idle) return;
    idle = false;
    const now = hr();
    lastAt = now;
    lastProcUs = cpuUs();
    lastThreads = new Map();
    sampleThreads(1);
    lastHost = hostTimes();
    lastBusyUs = null;
    lagRead = Atomics.load(i32, I_LAG_W);
    waitRead = Atomics.load(i32, I_WAIT_W);
    lastReqDone = Atomics.load(i32, I_REQ_DONE);
    lastPoolDone = Atomics.load(i64, B_POOL_DONE);
  };
  const schedule = () => {
    step();
    const now = hr();
    const waitMs = Math.max(0, Math.min(Number(nextReport - now) / 1e6, STALL_CHECK_MS));
    setTimeout(schedule, waitMs);
  };

  if (config.clusterChild) {
    schedule();
    return;
  }
  const target = parseHostPort(config.telemetry);
  if (!target) {
    warnOnce('address', `LOOPSCOPE_TELEMETRY=${config.telemetry} is not HOST:PORT; no telemetry is served`);
    return;
  }
  server.listen(target.port, target.host, () => {
    telemetryAddr = addrString(server.address());
    parentPort.postMessage({ type: 'listening', telemetry: telemetryAddr });
    schedule();
  });
}

function emptyWorker(pid) {
  return {
    id: 0,
    pid,
    alive: false,
    restarts: 0,
    lag_ms: { p50: 0, p99: 0, max: 0, samples: 0 },
    stalled_for_ms: 0,
    loop_utilization: 0,
    pool: { size: 0, threads: 0, busy: 0, queued: 0, oldest_wait_ms: 0, wait_ms_max: 0, wait_ms_p50: 0, wait_ms_p99: 0, completed: 0, completed_per_s: 0 },
    cpu: { process: 0, loop_thread: 0, pool_threads: 0 },
    requests: { in_flight: 0, completed: 0, per_s: 0 },
  };
}

// Prometheus text of the latest snapshot.
function metrics(s, skipped) {
  const out = [];
  const gauge = (name, help, rows) => {
    out.push(`# HELP loopscope_${name} ${help}`, `# TYPE loopscope_${name} gauge`);
    for (const [labels, v] of rows) out.push(`loopscope_${name}{${labels}} ${Number.isFinite(v) ? v : 0}`);
  };
  if (s) {
    const per = (f) => s.workers.map((w) => [`worker="${w.id}",pid="${w.pid}"`, f(w)]);
    gauge('loop_lag_max_ms', 'Largest timer lateness in the period.', per((w) => w.lag_ms.max));
    gauge('loop_lag_p99_ms', '99th percentile timer lateness in the period.', per((w) => w.lag_ms.p99));
    gauge('loop_stalled_for_ms', 'How long the loop has been blocked now.', per((w) => w.stalled_for_ms));
    gauge('loop_utilization', 'Busy fraction of the loop thread.', per((w) => w.loop_utilization));
    gauge('pool_busy', 'Pool jobs running.', per((w) => w.pool.busy));
    gauge('pool_queued', 'Pool jobs waiting for a thread.', per((w) => w.pool.queued));
    gauge('cpu_process_percent', 'Process CPU, percent of one core.', per((w) => w.cpu.process));
    gauge('requests_in_flight', 'Requests accepted and not answered.', per((w) => w.requests.in_flight));
    gauge('host_cpu_percent', 'Host CPU, percent of one core.', [['', s.host.cpu]]);
  }
  gauge('telemetry_skipped_lines', 'Lines skipped for slow telemetry clients.', [['', skipped]]);
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------
// Entry: the main thread of a process (not a worker thread of the application).
// ---------------------------------------------------------------------------

(function entry() {
  try {
    const wt = require('worker_threads');
    if (!wt.isMainThread) {
      if (wt.workerData && wt.workerData.loopscopeAgent === true) startAgentThread(wt.workerData);
      return;
    }
    if (process.env.LOOPSCOPE_DISABLE === '1' || global.__loopscopeAgent) return;
    global.__loopscopeAgent = true;
    if (typeof SharedArrayBuffer !== 'function' || typeof Atomics !== 'object') {
      warnOnce('sab', 'SharedArrayBuffer is not available; the agent is off');
      return;
    }
    startMain();
  } catch (e) {
    warnOnce('start', `the agent is off: ${e && e.stack ? e.stack : e}`);
  }
})();
