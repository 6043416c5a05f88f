'use strict';
// A plain Node http server for the agent's tests. Prints its address line
// {"app":"127.0.0.1:PORT","pid":N} on stdout once it listens (port from PORT, default 0).
//   GET /hello          a small JSON answer
//   GET /json?mb=20     JSON.parse of a ~20 MB string, synchronously in the handler;
//                       answers {"parse_ms":...} as measured around JSON.parse
//   GET /pbkdf2?n=12    n concurrent crypto.pbkdf2 calls; answers when all are done
//   GET /promises?n=1000  awaits n resolved promises (an async_hooks-heavy path)
//   GET /fs             one fs.stat on the libuv pool
//   GET /exit           the process exits (code 0)
const http = require('http');
const crypto = require('crypto');

const strings = new Map();
function jsonOf(mb) {
  if (!strings.has(mb)) {
    const item = JSON.stringify({ id: 12345, name: 'loopscope', tags: ['a', 'b', 'c'], value: 3.14159 });
    const n = Math.max(1, Math.round((mb * 1024 * 1024) / (item.length + 1)));
    strings.set(mb, '[' + new Array(n).fill(item).join(',') + ']');
  }
  return strings.get(mb);
}
// Built before listening, so that a request's handler is the parse alone.
jsonOf(20);

const iterations = Number(process.env.PBKDF2_ITERATIONS || 300000);

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const send = (obj) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(obj));
  };
  if (url.pathname === '/hello') return send({ hello: 'world', pid: process.pid });
  if (url.pathname === '/json') {
    const text = jsonOf(Number(url.searchParams.get('mb') || 20));
    const t0 = process.hrtime.bigint();
    const parsed = JSON.parse(text);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return send({ parse_ms: ms, items: parsed.length });
  }
  if (url.pathname === '/pbkdf2') {
    const n = Number(url.searchParams.get('n') || 12);
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: n }, () =>
        new Promise((ok, fail) =>
          crypto.pbkdf2('secret', 'salt', iterations, 32, 'sha256', (e) => (e ? fail(e) : ok())))));
    return send({ n, ms: Date.now() - t0 });
  }
  if (url.pathname === '/promises') {
    const n = Number(url.searchParams.get('n') || 1000);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += await Promise.resolve(i);
    return send({ sum });
  }
  if (url.pathname === '/fs') {
    // An asynchronous file read: one libuv pool job per request.
    return require('fs').stat(__filename, (e, st) => send({ size: e ? 0 : st.size }));
  }
  if (url.pathname === '/exit') {
    send({ bye: true });
    setTimeout(() => process.exit(0), 10);
    return;
  }
  res.writeHead(404).end();
});
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const a = server.address();
  process.stdout.write(JSON.stringify({ app: `${a.address}:${a.port}`, pid: process.pid }) + '\n');
});
