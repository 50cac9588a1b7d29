#!/usr/bin/env node
// A flood of TCP connections that never start TLS, against a keylessd it starts itself
// (both ports: keyless.v1 and the Cloudflare-compatible one), while a legitimate edge on
// another loopback address (127.0.0.2) keeps connecting. Reports the daemon's RSS before,
// at the peak of, and after the flood, and how many of the edge's connections succeeded.
// Run after `npm run build`:
//   node scripts/handshake-flood.js [--connections 5000] [--seconds 20] [--settle 30]
//                                   [--daemon dist/src/cli/keylessd.js] [--limits '{"max_pending_handshakes":1000}']
// --connections is per port; each flood socket the server closes is opened again at once.
// --daemon runs another build (for a before/after comparison).
'use strict';
const { spawn } = require('node:child_process');
const { mkdtempSync, readFileSync, writeFileSync } = require('node:fs');
const { createServer, connect: netConnect } = require('node:net');
const { connect: tlsConnect } = require('node:tls');
const { tmpdir } = require('node:os');
const { join, resolve } = require('node:path');
const { parseArgs } = require('node:util');
const { WebSocket } = require('ws');

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '5000' },
    seconds: { type: 'string', default: '20' },
    settle: { type: 'string', default: '30' },
    daemon: { type: 'string', default: join(__dirname, '..', 'dist', 'src', 'cli', 'keylessd.js') },
    limits: { type: 'string', default: '{}' },
    role: { type: 'string' },
    ports: { type: 'string' },
  },
});
const root = resolve(values.daemon, '..', '..'); // dist/src of that build
const { ensureDevState, devConfig, pkiDir } = require(join(root, 'devstate'));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const freePort = () =>
  new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });

const heap = (text) => {
  const get = (name) => Math.round(Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 0) / 1048576);
  return { total: get('nodejs_heap_size_total_bytes'), used: get('nodejs_heap_size_used_bytes'), external: get('nodejs_external_memory_bytes') };
};
const percentiles = (xs) => {
  const sorted = [...xs].sort((a, b) => a - b);
  const at = (q) => Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0);
  return { n: sorted.length, p50: at(0.5), p99: at(0.99), max: Math.round(sorted[sorted.length - 1] ?? 0) };
};

/** --role flood: keep N idle TCP connections open from 127.0.0.1 to each port; reopen each one the server closes. */
function floodRole() {
  let opened = 0;
  const floodOne = (port) => {
    const s = netConnect({ host: '127.0.0.1', port, localAddress: '127.0.0.1' });
    opened++;
    s.on('error', () => {});
    s.on('close', () => setImmediate(() => floodOne(port)));
  };
  for (const port of values.ports.split(',').map(Number)) for (let i = 0; i < Number(values.connections); i++) floodOne(port);
  process.on('SIGTERM', () => {
    process.stdout.write(`${opened}\n`, () => process.exit(0));
  });
}

if (values.role === 'flood') floodRole();
else (async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-flood-'));
  await ensureDevState(dir);
  const [v1Port, compatPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
  const config = devConfig(dir);
  Object.assign(config, {
    listen: { host: '127.0.0.1', port: v1Port },
    metrics: { host: '127.0.0.1', port: metricsPort },
    compat: { enabled: true, host: '127.0.0.1', port: compatPort },
    limits: JSON.parse(values.limits),
    log: { level: 'warn' },
  });
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, JSON.stringify(config));
  const daemon = spawn(process.execPath, [values.daemon, '--config', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  const rssMiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${daemon.pid}/status`, 'utf8'))[1]) / 1024;
  const metrics = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  for (let i = 0; ; i++) {
    if ((await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.status, () => 0)) === 200) break;
    if (i > 300) throw new Error('keylessd did not become ready');
    await sleep(100);
  }
  const pki = pkiDir(dir);
  const tlsFiles = { ca: readFileSync(join(pki, 'ca.crt')), cert: readFileSync(join(pki, 'client.crt')), key: readFileSync(join(pki, 'client.key')) };

  // A legitimate edge: a full handshake and one answered ping, on either port.
  const edgeV1 = () =>
    new Promise((res, rej) => {
      const ws = new WebSocket(`wss://127.0.0.1:${v1Port}/v1`, 'keyless.v1', { ...tlsFiles, localAddress: '127.0.0.2', handshakeTimeout: 10_000 });
      ws.once('error', rej);
      ws.once('open', () => ws.ping());
      ws.once('pong', () => {
        ws.terminate();
        res();
      });
    });
  const edgeCompat = () =>
    new Promise((res, rej) => {
      const socket = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port: compatPort, localAddress: '127.0.0.2' }), servername: 'localhost', ...tlsFiles });
      socket.once('error', rej);
      socket.setTimeout(10_000, () => rej(new Error('timeout')));
      socket.once('secureConnect', () => {
        socket.destroy();
        res();
      });
    });

  // Warm up (JIT, TLS contexts, allocator), then the baseline.
  for (let i = 0; i < 50; i++) await Promise.all([edgeV1(), edgeCompat()]);
  await sleep(3000);
  const baseline = rssMiB();
  const heapBefore = heap(await metrics());

  // The flood runs in a child process, so it does not slow this one's edge connections.
  const perPort = Number(values.connections);
  const flood = spawn(process.execPath, [__filename, '--role', 'flood', '--connections', String(perPort), '--ports', `${v1Port},${compatPort}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let floodOutput = '';
  flood.stdout.on('data', (d) => (floodOutput += d));
  let peak = baseline;
  const edge = { v1: { ok: 0, failed: 0 }, compat: { ok: 0, failed: 0 } };
  const edgeMs = [];
  const timed = (f) => {
    const t0 = process.hrtime.bigint();
    return f().then(() => edgeMs.push(Number(process.hrtime.bigint() - t0) / 1e6));
  };
  const until = Date.now() + Number(values.seconds) * 1000;
  while (Date.now() < until) {
    await Promise.all([
      timed(edgeV1).then(() => edge.v1.ok++, () => edge.v1.failed++),
      timed(edgeCompat).then(() => edge.compat.ok++, () => edge.compat.failed++),
    ]);
    peak = Math.max(peak, rssMiB());
    await sleep(50);
  }
  const text = await metrics();
  const refused = {};
  for (const m of text.matchAll(/^keyless_connections_refused_total\{listener="([^"]+)",reason="([^"]+)"\} (\S+)$/gm)) refused[`${m[1]}/${m[2]}`] = Number(m[3]);
  const heapDuring = heap(text);
  const floodEnded = new Promise((r) => flood.once('exit', r));
  flood.kill('SIGTERM');
  await floodEnded;
  const floodOpened = Number(floodOutput.trim() || 0);
  const endedAt = Date.now();
  let after = rssMiB();
  const settleUntil = endedAt + Number(values.settle) * 1000;
  while (Date.now() < settleUntil && after > baseline * 1.2) {
    await sleep(1000);
    after = rssMiB();
  }
  console.log(
    JSON.stringify(
      {
        floodPerPort: perPort,
        floodConnectionsOpened: floodOpened,
        seconds: Number(values.seconds),
        edge,
        refused,
        edgeConnectMs: percentiles(edgeMs),
        rssBaselineMiB: Math.round(baseline),
        rssPeakMiB: Math.round(peak),
        rssAfterMiB: Math.round(after),
        afterOverBaseline: Number((after / baseline).toFixed(2)),
        secondsToSettle: Math.round((Date.now() - endedAt) / 1000),
        heapMiB: { before: heapBefore, during: heapDuring, after: heap(await metrics()) },
      },
      null,
      1,
    ),
  );
  daemon.kill('SIGTERM');
})().catch((err) => {
  console.error(`handshake-flood: ${err.stack}`);
  process.exit(1);
});
