#!/usr/bin/env node
// What keylessd allocates per request, by function: P-256 signatures at one request in flight
// (or --sessions/--inflight), with V8's sampling heap profiler counting objects the young
// generation collected too (what drives the scavenges behind the 1x1 tail). Needs
// `npm run build` done. Prints the bytes per request and the functions that allocate most.
//   node scripts/bench-alloc.js [--seconds 5] [--sessions 1] [--inflight 1] [--top 25]
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const { once } = require('node:events');
const { mkdtempSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join, relative } = require('node:path');
const WebSocket = require('ws');
const { PORTS, writeBenchConfigs } = require('./bench-config');

const root = join(__dirname, '..');
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const seconds = option('seconds', 5);
const sessions = option('sessions', 1);
const inflight = option('inflight', 1);
const top = option('top', 25);

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'keylessd-alloc-'));
  const { state, on: config } = await writeBenchConfigs(work); // bench.sh's "on" config
  const daemon = spawn(process.execPath, ['--inspect=127.0.0.1:0', join(root, 'dist/src/cli/keylessd.js'), '--config', config, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    const url = await new Promise((resolve, reject) => {
      let text = '';
      daemon.stderr.on('data', (chunk) => {
        text += chunk;
        const match = /ws:\/\/\S+/.exec(text);
        if (match) resolve(match[0]);
      });
      daemon.on('exit', (code) => reject(new Error(`keylessd exited (${code}) before its inspector listened: ${text}`)));
    });
    const ctl = (...more) => execFileSync(process.execPath, [join(root, 'dist/src/cli/keylessctl.js'), ...more, '--server', `127.0.0.1:${PORTS.v1}`, '--state-dir', state], { encoding: 'utf8' });
    for (let attempt = 0; ; attempt++) {
      try {
        ctl('keys');
        break;
      } catch (err) {
        if (attempt === 100) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const inspector = await connect(url);
    const bench = (duration) => JSON.parse(ctl('bench', '--key', 'demo-p256', '--algorithm', 'ECDSA_SHA256', '--sessions', String(sessions), '--inflight', String(inflight), '--duration', String(duration), '--no-limit', '--json').split('\n').find((l) => l.startsWith('{')));
    bench(2); // warm up: code optimised, pools and caches filled
    await inspector.call('HeapProfiler.enable');
    await inspector.call('HeapProfiler.startSampling', { samplingInterval: 256, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true });
    const result = bench(seconds);
    const { profile } = await inspector.call('HeapProfiler.stopSampling');
    inspector.close();
    report(profile, result.operations);
  } finally {
    daemon.kill();
    if (daemon.exitCode === null) await once(daemon, 'exit'); // it writes its audit log until it has gone
    rmSync(work, { recursive: true, force: true });
  }
}

function connect(url) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    const pending = new Map();
    let next = 1;
    socket.on('message', (data) => {
      const message = JSON.parse(data);
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`${message.error.message}`));
      else waiter.resolve(message.result);
    });
    socket.on('error', reject);
    socket.on('open', () =>
      resolve({
        call: (method, params = {}) =>
          new Promise((res, rej) => {
            const id = next++;
            pending.set(id, { resolve: res, reject: rej });
            socket.send(JSON.stringify({ id, method, params }));
          }),
        close: () => socket.close(),
      }),
    );
  });
}

/** Sums each call-tree node's sampled bytes by function and source line. */
function report(profile, operations) {
  const bySite = new Map();
  let total = 0;
  const walk = (node) => {
    const size = node.selfSize;
    if (size > 0) {
      const { functionName, url, lineNumber } = node.callFrame;
      const file = url ? relative(root, url.replace(/^file:\/\//, '')) || url : '(native)';
      const site = `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}`;
      bySite.set(site, (bySite.get(site) ?? 0) + size);
      total += size;
    }
    for (const child of node.children) walk(child);
  };
  walk(profile.head);
  console.log(`keylessd, P-256 ${sessions}x${inflight}, ${operations} requests in ${seconds} s: ${(total / operations).toFixed(0)} bytes allocated per request (sampled)`);
  for (const [site, size] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${(size / operations).toFixed(0).padStart(7)}  ${site}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
