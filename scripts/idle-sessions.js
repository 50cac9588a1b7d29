#!/usr/bin/env node
// Opens N idle keyless.v1 sessions to a running keylessd and reports its RSS before and
// after (Linux: /proc/PID/status). Run after `npm run build`:
//   node scripts/idle-sessions.js --pid PID [--sessions 10000] [--state-dir DIR | --server URL --ca F --client-cert F --client-key F]
// Each session is one socket here too: raise `ulimit -n` for both processes first.
'use strict';
const { readFileSync } = require('node:fs');
const { parseArgs } = require('node:util');
const { WebSocket } = require('ws');
const { sessionOptions } = require('../dist/src/cli/ctl/connection');

const { values } = parseArgs({
  options: {
    pid: { type: 'string' },
    sessions: { type: 'string', default: '10000' },
    batch: { type: 'string', default: '50' }, // under limits.max_pending_handshakes_per_address (64)
    hold: { type: 'string', default: '5' },
    server: { type: 'string' },
    ca: { type: 'string' },
    'client-cert': { type: 'string' },
    'client-key': { type: 'string' },
    'state-dir': { type: 'string' },
  },
});
if (!values.pid) {
  console.error('usage: idle-sessions.js --pid PID_OF_KEYLESSD [--sessions N]');
  process.exit(2);
}
const rssMiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${values.pid}/status`, 'utf8'))[1]) / 1024;
const options = sessionOptions(values);
const open = () =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(options.url, 'keyless.v1', { ca: options.ca, cert: options.cert, key: options.key, perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });

(async () => {
  const before = rssMiB();
  const sockets = [];
  const total = Number(values.sessions);
  const started = Date.now();
  while (sockets.length < total) {
    const batch = Math.min(Number(values.batch), total - sockets.length);
    sockets.push(...(await Promise.all(Array.from({ length: batch }, open))));
  }
  const opened = (Date.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, Number(values.hold) * 1000));
  const after = rssMiB();
  console.log(JSON.stringify({ sessions: sockets.length, openSeconds: opened, rssBeforeMiB: Math.round(before), rssAfterMiB: Math.round(after), perSessionKiB: Math.round(((after - before) * 1024) / sockets.length) }));
  for (const ws of sockets) ws.terminate();
})().catch((err) => {
  console.error(`idle-sessions: ${err.message}`);
  process.exit(1);
});
