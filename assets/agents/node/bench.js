'use strict';
// The agent's own cost: the test server (tests/agents/node_server.js) without the
// agent, with it and LOOPSCOPE_POOL_HOOKS=0, and with it (pool hooks on), taking
// turns for ROUNDS rounds. Per variant, the server's CPU (the sum of its threads'
// run time, /proc/PID/task/*/schedstat) idle over IDLE_S seconds, idle again with a
// /telemetry client reading, and per request under a closed-loop load of
// CONCURRENCY keep-alive connections on each endpoint. Prints medians.
//
//   node assets/agents/node/bench.js            (ROUNDS=3 IDLE_S=3 REQUESTS=4000)
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const path = require('path');

const ROUNDS = Number(process.env.ROUNDS || 3);
const IDLE_S = Number(process.env.IDLE_S || 3);
const REQUESTS = Number(process.env.REQUESTS || 4000);
const CONCURRENCY = Number(process.env.CONCURRENCY || 8);
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
    const child = spawn(process.execPath, [...v.args, SERVER], {
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

function load(app, target, n) {
  const [host, port] = app.split(':');
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let sent = 0;
  const one = () =>
    new Promise((ok, fail) => {
      http.get({ host, port, path: target, agent }, (res) => {
        res.resume();
        res.on('end', ok);
      }).on('error', fail);
    });
  const lane = async () => {
    while (sent < n) {
      sent++;
      await one();
    }
  };
  return Promise.all(Array.from({ length: CONCURRENCY }, lane)).then(() => agent.destroy());
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

(async () => {
  const results = VARIANTS.map(() => ({ idle: [], watched: [], per: ENDPOINTS.map(() => []), rps: ENDPOINTS.map(() => []) }));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, v] of VARIANTS.entries()) {
      const { child, app, telemetry } = await start(v);
      await sleep(500);
      await load(app, '/hello', 500);
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
      for (const [j, e] of ENDPOINTS.entries()) {
        const a = cpuMs(child.pid);
        const t0 = process.hrtime.bigint();
        await load(app, e, REQUESTS);
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        results[i].per[j].push(((cpuMs(child.pid) - a) * 1000) / REQUESTS);
        results[i].rps[j].push(REQUESTS / s);
      }
      child.kill();
      await new Promise((r) => child.once('exit', r));
    }
  }
  console.log(`medians of ${ROUNDS} rounds; ${REQUESTS} requests per endpoint, ${CONCURRENCY} connections`);
  for (const [i, v] of VARIANTS.entries()) {
    const r = results[i];
    const cols = ENDPOINTS.map((e, j) => `${e}: ${median(r.per[j]).toFixed(0)} µs CPU/req, ${median(r.rps[j]).toFixed(0)} req/s`);
    const watched = r.watched.length ? `, watched ${median(r.watched).toFixed(1)}%` : '';
    console.log(`${v.name.padEnd(22)} idle ${median(r.idle).toFixed(1)}%${watched} of a core | ${cols.join(' | ')}`);
  }
})();
