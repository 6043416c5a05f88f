'use strict';
// The agent's own cost, on the test server (tests/agents/node_server.js) without the
// agent, with it and LOOPSCOPE_POOL_HOOKS=0, and with it (pool hooks on):
//   - idle: each server alone, its CPU (the sum of its threads' run time,
//     /proc/PID/task/*/schedstat) over IDLE_S seconds, then again with a /telemetry
//     client reading; IDLE_ROUNDS times;
//   - per request: all the servers running at once, taking turns in measures of
//     REQUESTS requests per endpoint, ROUNDS rounds, under a closed-loop load of
//     CONCURRENCY keep-alive connections from a client that keeps the server busy
//     (LOAD=http: Node's own client, slower than the server);
//   - how soon a stall shows (STALLS parses of 20 MB).
// Prints medians, and each agent variant's ratio to the bare server in the same
// round (median, quartiles, totals). Each server has run one pool job before it is
// measured.
//
//   node assets/agents/node/bench.js     (ROUNDS=20 REQUESTS=20000 IDLE_ROUNDS=3 IDLE_S=3 MAX_S=60)
const { spawn } = require('child_process');
const { performance } = require('perf_hooks');
const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

// With two CPUs or more and taskset, the servers run on CPU 1 and this client on
// CPU 0 (it runs itself again under taskset), so that neither slows the other.
const PINNED = (() => {
  if (require('os').cpus().length < 2) return false;
  const probe = require('child_process').spawnSync('taskset', ['-c', '0', 'true']);
  return probe.status === 0;
})();
if (PINNED && !process.env.LOOPSCOPE_BENCH_CLIENT) {
  const r = require('child_process').spawnSync('taskset', ['-c', '0', process.execPath, __filename], {
    stdio: 'inherit',
    env: { ...process.env, LOOPSCOPE_BENCH_CLIENT: '1' },
  });
  process.exit(r.status === null ? 1 : r.status);
}
const ROUNDS = Number(process.env.ROUNDS || 20);
const IDLE_ROUNDS = Number(process.env.IDLE_ROUNDS || 3);
const IDLE_S = Number(process.env.IDLE_S || 3);
const REQUESTS = Number(process.env.REQUESTS || 20000);
const CONCURRENCY = Number(process.env.CONCURRENCY || 8);
// raw: a raw-socket client that keeps the server busy (the agent's cost per request);
// http: Node's own http client, slower than the server, which then sleeps between
// requests (each of the agent's timer ticks then costs a loop wake-up as well).
const LOAD = process.env.LOAD || 'raw';
// Any one load gives up (and the run fails) after MAX_S seconds.
const MAX_S = Number(process.env.MAX_S || 60);
const SERVER = path.join(__dirname, '../../../tests/agents/node_server.js');
const AGENT = path.join(__dirname, 'loopscope.js');
const ENDPOINTS = ['/hello', '/promises?n=100', '/fs'];
const VARIANTS = [
  { name: 'no agent', args: [], env: {} },
  { name: 'agent, pool hooks off', args: ['--require', AGENT], env: { LOOPSCOPE_POOL_HOOKS: '0' } },
  { name: 'agent, pool hooks on', args: ['--require', AGENT], env: {} },
];

// CPU time of all the process's threads (schedstat: nanoseconds), in ms.
function cpuMs(pid) {
  let ns = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'latin1').split(' ')[0]);
    } catch (_) {
      // The thread ended.
    }
  }
  return ns / 1e6;
}

function start(v) {
  return new Promise((ok, fail) => {
    const argv = [process.execPath, ...v.args, SERVER];
    const [cmd, ...args] = PINNED ? ['taskset', '-c', '1', ...argv] : argv;
    const child = spawn(cmd, args, {
      env: { ...process.env, LOOPSCOPE_TELEMETRY: '127.0.0.1:0', LOOPSCOPE_ANNOUNCE: '1', ...v.env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let buf = '';
    const want = v.args.length ? 2 : 1;
    child.stdout.on('data', (d) => {
      buf += d;
      const lines = buf.split('\n');
      if (lines.length > want) {
        child.stdout.removeAllListeners('data');
        child.stdout.resume();
        const parsed = lines.slice(0, want).map((l) => JSON.parse(l));
        const telemetry = parsed.map((p) => p.telemetry).find(Boolean);
        ok({ child, app: parsed[0].app, telemetry });
      }
    });
    child.on('error', fail);
  });
}

// The measured load: raw HTTP/1.1 on CONCURRENCY keep-alive sockets, each sending
// its next request as soon as the previous answer is in (closed loop), parsed no
// further than its Content-Length, so that the client, pinned to the other core,
// outpaces the server and keeps it busy: the server's CPU per request is then its
// work per request, not the cost of waking up between requests.
function rawLoad(app, target, n) {
  const [host, port] = app.split(':');
  const request = Buffer.from(`GET ${target} HTTP/1.1\r\nHost: ${app}\r\n\r\n`);
  let sent = 0;
  let answered = 0;
  const deadline = Date.now() + MAX_S * 1000;
  return new Promise((ok, fail) => {
    let open = CONCURRENCY;
    for (let c = 0; c < CONCURRENCY; c++) {
      const socket = net.connect({ host, port: Number(port) });
      socket.setNoDelay(true);
      socket.setTimeout(MAX_S * 1000, () => socket.destroy(new Error(`no answer within ${MAX_S} s`)));
      let buf = Buffer.alloc(0);
      const next = () => {
        if (sent < n && Date.now() < deadline) {
          sent++;
          socket.write(request);
        } else {
          socket.end();
        }
      };
      socket.on('connect', next);
      socket.on('data', (d) => {
        buf = buf.length ? Buffer.concat([buf, d]) : d;
        for (;;) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = buf.toString('latin1', 0, end).toLowerCase();
          const m = /content-length: *(\d+)/.exec(head);
          const total = end + 4 + (m ? Number(m[1]) : 0);
          if (buf.length < total) return;
          buf = buf.subarray(total);
          answered++;
          next();
        }
      });
      socket.on('error', fail);
      socket.on('close', () => {
        if (--open === 0) (answered >= n ? ok : fail)(new Error(`${answered} of ${n} answered within ${MAX_S} s`));
      });
    }
  });
}

function load(app, target, n) {
  const [host, port] = app.split(':');
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let sent = 0;
  const deadline = Date.now() + MAX_S * 1000;
  const one = () =>
    new Promise((ok, fail) => {
      const req = http.get({ host, port, path: target, agent }, (res) => {
        res.resume();
        res.on('end', ok);
      });
      req.setTimeout(MAX_S * 1000, () => req.destroy(new Error(`no answer within ${MAX_S} s`)));
      req.on('error', fail);
    });
  const lane = async () => {
    while (sent < n) {
      if (Date.now() >= deadline) throw new Error(`${sent} of ${n} sent within ${MAX_S} s`);
      sent++;
      await one();
    }
  };
  return Promise.all(Array.from({ length: CONCURRENCY }, lane)).finally(() => agent.destroy());
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs, q) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))];
const median = (xs) => quantile(xs, 0.5);

(async () => {
  const results = VARIANTS.map(() => ({ idle: [], watched: [], per: ENDPOINTS.map(() => []), rps: ENDPOINTS.map(() => []) }));
  const warm = async (app) => {
    await load(app, '/hello', 500);
    // One pool job first: with the pool hooks off, the agent's hook that finds the
    // pool's threads stays on until the pool's first job (or 10 s); the figures are
    // the steady state's, after it.
    await load(app, '/fs', 1);
  };
  // Idle: one server at a time, IDLE_ROUNDS times.
  for (let round = 0; round < IDLE_ROUNDS; round++) {
    for (const [i, v] of VARIANTS.entries()) {
      const { child, app, telemetry } = await start(v);
      await sleep(500);
      await warm(app);
      await sleep(1000);
      const c0 = cpuMs(child.pid);
      await sleep(IDLE_S * 1000);
      results[i].idle.push(((cpuMs(child.pid) - c0) / (IDLE_S * 1000)) * 100);
      if (telemetry) {
        const [host, port] = telemetry.split(':');
        const req = http.get({ host, port, path: '/telemetry' }, (res) => res.resume());
        req.on('error', () => {});
        await sleep(300);
        const c1 = cpuMs(child.pid);
        await sleep(IDLE_S * 1000);
        results[i].watched.push(((cpuMs(child.pid) - c1) / (IDLE_S * 1000)) * 100);
        req.destroy();
      }
      child.kill();
      await new Promise((r) => child.once('exit', r));
    }
  }
  // Per request: every variant's server runs at once, and they take turns in short
  // measures (REQUESTS each, the first of each round rotating), so that a slow spell
  // of the machine falls on all of them alike.
  const servers = [];
  for (const v of VARIANTS) servers.push(await start(v));
  for (const { app } of servers) {
    await warm(app);
    for (const e of ENDPOINTS) await rawLoad(app, e, Math.min(REQUESTS, 5000));
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const [j, e] of ENDPOINTS.entries()) {
      for (let k = 0; k < VARIANTS.length; k++) {
        const i = (k + round) % VARIANTS.length;
        const { child, app } = servers[i];
        const a = cpuMs(child.pid);
        const t0 = process.hrtime.bigint();
        await (LOAD === 'http' ? load : rawLoad)(app, e, REQUESTS);
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        results[i].per[j].push(((cpuMs(child.pid) - a) * 1000) / REQUESTS);
        results[i].rps[j].push(REQUESTS / s);
      }
    }
  }
  for (const { child } of servers) {
    child.kill();
    await new Promise((r) => child.once('exit', r));
  }
  console.log(`idle: medians of ${IDLE_ROUNDS} rounds; per request: medians of ${ROUNDS} rounds of ${REQUESTS} requests per endpoint, ${CONCURRENCY} connections, ${LOAD} client${PINNED ? ', server on CPU 1, client on CPU 0' : ''}`);
  for (const [i, v] of VARIANTS.entries()) {
    const r = results[i];
    const cols = ENDPOINTS.map((e, j) => {
      // The ratio to the bare server of the same round: its median and quartiles,
      // and the ratio of the sums.
      const ratios = r.per[j].map((x, k) => x / results[0].per[j][k]);
      const sum = (xs) => xs.reduce((a, b) => a + b, 0);
      const ratio = i === 0
        ? ''
        : ` (${pct(median(ratios))}, quartiles ${pct(quantile(ratios, 0.25))} .. ${pct(quantile(ratios, 0.75))}, totals ${pct(sum(r.per[j]) / sum(results[0].per[j]))})`;
      return `${e}: ${median(r.per[j]).toFixed(1)} µs CPU/req${ratio}, ${median(r.rps[j]).toFixed(0)} req/s`;
    });
    const watched = r.watched.length ? `, watched ${median(r.watched).toFixed(1)}%` : '';
    console.log(`${v.name.padEnd(22)} idle ${median(r.idle).toFixed(1)}%${watched} of a core | ${cols.join(' | ')}`);
  }
  await stallVisibility();
})();

function pct(ratio) {
  return `${ratio >= 1 ? '+' : ''}${((ratio - 1) * 100).toFixed(1)}%`;
}

// How soon a stall shows: STALLS times, a 20 MB JSON.parse on the loop (the agent,
// pool hooks on) while a client reads /telemetry; for each, the first line showing
// the stall: its stalled_for_ms (how long the loop had been held when the agent's
// thread made the line) and the time from sending the request to reading the line.
async function stallVisibility() {
  const STALLS = Number(process.env.STALLS ?? 10);
  if (!STALLS) return;
  const { child, app, telemetry } = await start(VARIANTS[2]);
  const [host, port] = telemetry.split(':');
  const lines = [];
  let wake = null;
  const stream = http.get({ host, port, path: '/telemetry' }, (res) => {
    let buf = '';
    res.setEncoding('utf8');
    res.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          lines.push({ at: performance.now(), snap: JSON.parse(line) });
        } catch (_) {
          // A line cut by the end of the run.
        }
        if (wake) wake();
      }
    });
  });
  stream.on('error', () => {});
  await sleep(1000);
  const shown = [];
  const sent = [];
  for (let k = 0; k < STALLS; k++) {
    lines.length = 0;
    const t0 = performance.now();
    const answer = load(app, '/json?mb=20', 1);
    const deadline = t0 + 5000;
    let seen = null;
    while (!seen && performance.now() < deadline) {
      seen = lines.find((l) => l.snap.workers.some((w) => w.stalled_for_ms > 0));
      if (!seen) await new Promise((r) => { wake = r; setTimeout(r, 50); });
    }
    await answer;
    if (seen) {
      shown.push(Math.max(...seen.snap.workers.map((w) => w.stalled_for_ms)));
      sent.push(seen.at - t0);
    }
    await sleep(300);
  }
  stream.destroy();
  child.kill();
  await new Promise((r) => child.once('exit', r));
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  const q = (xs, f) => sorted(xs)[Math.min(xs.length - 1, Math.floor(xs.length * f))];
  console.log(`stall visibility over ${STALLS} parses: ${shown.length} seen; stalled_for_ms in the first line showing it: median ${q(shown, 0.5).toFixed(1)} ms, p90 ${q(shown, 0.9).toFixed(1)}, max ${Math.max(...shown).toFixed(1)}; request sent to that line read: median ${q(sent, 0.5).toFixed(1)} ms, max ${Math.max(...sent).toFixed(1)}`);
}
