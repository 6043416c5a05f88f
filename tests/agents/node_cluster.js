'use strict';
// A cluster of WORKERS (default 2) processes running node_server.js on one shared
// port; a worker that dies is replaced. The primary prints {"primary":PID} on stdout.
const cluster = require('cluster');
const path = require('path');

if (cluster.isPrimary) {
  const n = Number(process.env.WORKERS || 2);
  cluster.setupPrimary({ exec: path.join(__dirname, 'node_server.js') });
  for (let i = 0; i < n; i++) cluster.fork();
  let restarts = 0;
  cluster.on('exit', () => {
    if (restarts++ < 10) cluster.fork();
  });
  process.stdout.write(JSON.stringify({ primary: process.pid }) + '\n');
}
