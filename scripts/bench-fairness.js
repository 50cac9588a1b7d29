#!/usr/bin/env node
// One edge floods, another should not notice. Starts its own keylessd (embedded default
// PKI and demo keys, in a temp folder), then measures a victim session signing RSA-2048
// PSS one request at a time: alone, and while a flood session (another process) keeps
// --inflight requests in flight (its in-flight cap). Prints the victim's p50/p99 and
// errors in both phases. Run after `npm run build`:
//   node scripts/bench-fairness.js [--seconds 10] [--inflight 256] [--daemon dist/src/cli/keylessd.js]
'use strict';
const { fork, spawn } = require('node:child_process');
const { mkdtempSync, readFileSync, writeFileSync } = require('node:fs');
const { createServer } = require('node:net');
const { tmpdir } = require('node:os');
const { join, resolve } = require('node:path');
const { parseArgs } = require('node:util');

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    inflight: { type: 'string', default: '256' },
    daemon: { type: 'string', default: join(__dirname, '..', 'dist', 'src', 'cli', 'keylessd.js') },
    role: { type: 'string' },
    url: { type: 'string' },
    pki: { type: 'string' },
  },
});
const dist = resolve(values.daemon, '..', '..'); // dist/src of that build
const { KeylessSession } = require(join(dist, 'client', 'session'));
const message = Buffer.from('fairness benchmark');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const connect = (url, pki) =>
  KeylessSession.connect({ url, ca: readFileSync(join(pki, 'ca.crt')), cert: readFileSync(join(pki, 'client.crt')), key: readFileSync(join(pki, 'client.key')) });

/** --role flood: keep --inflight signatures in flight on one session until told to stop. */
async function floodRole() {
  const session = await connect(values.url, values.pki);
  let running = true;
  let done = 0;
  let errors = 0;
  const keep = () =>
    session.sign({ name: 'demo-rsa2048' }, 'RSA_PSS_SHA256', { message }).then(
      () => {
        done++;
        if (running) return keep();
      },
      () => {
        errors++;
        if (running) return keep();
      },
    );
  const all = Array.from({ length: Number(values.inflight) }, keep);
  process.send({ started: true });
  process.on('message', async () => {
    running = false;
    await Promise.all(all);
    process.send({ done, errors });
    process.exit(0);
  });
}

const percentile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

async function victimPhase(session, seconds) {
  const ms = [];
  const errors = {};
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    const t0 = process.hrtime.bigint();
    try {
      await session.sign({ name: 'demo-rsa2048' }, 'RSA_PSS_SHA256', { message });
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    } catch (err) {
      errors[err.code ?? err.message] = (errors[err.code ?? err.message] ?? 0) + 1;
    }
  }
  ms.sort((a, b) => a - b);
  const round = (x) => Math.round(x * 100) / 100;
  return { requests: ms.length, p50Ms: round(percentile(ms, 0.5)), p99Ms: round(percentile(ms, 0.99)), maxMs: round(ms[ms.length - 1]), errors };
}

async function main() {
  const { ensureDevState, devConfig, pkiDir } = require(join(dist, 'devstate'));
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-fairness-'));
  await ensureDevState(dir);
  const freePort = () =>
    new Promise((res) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address();
        s.close(() => res(port));
      });
    });
  const [port, metricsPort] = [await freePort(), await freePort()];
  const config = devConfig(dir);
  Object.assign(config, {
    listen: { host: '127.0.0.1', port },
    metrics: { host: '127.0.0.1', port: metricsPort },
    limits: { max_inflight_per_session: Number(values.inflight) },
    log: { level: 'warn' },
  });
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, JSON.stringify(config));
  const daemon = spawn(process.execPath, [values.daemon, '--config', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    for (let i = 0; ; i++) {
      if ((await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.status, () => 0)) === 200) break;
      if (i > 300) throw new Error('keylessd did not become ready');
      await sleep(100);
    }
    const url = `wss://127.0.0.1:${port}/v1`;
    const victim = await connect(url, pkiDir(dir));
    for (let i = 0; i < 200; i++) await victim.sign({ name: 'demo-rsa2048' }, 'RSA_PSS_SHA256', { message }); // warm up
    const seconds = Number(values.seconds);
    const alone = await victimPhase(victim, seconds);

    const flood = fork(__filename, ['--role', 'flood', '--url', url, '--pki', pkiDir(dir), '--inflight', values.inflight], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise((r) => flood.once('message', r));
    await sleep(1000); // the flood reaches its cap
    const flooded = await victimPhase(victim, seconds);
    flood.send('stop');
    const floodResult = await new Promise((r) => flood.once('message', r));
    await victim.close();
    console.log(JSON.stringify({ seconds, floodInflight: Number(values.inflight), victimAlone: alone, victimDuringFlood: flooded, flood: { ...floodResult, perSecond: Math.round(floodResult.done / (seconds + 1)) } }, null, 1));
  } finally {
    daemon.kill('SIGTERM');
  }
}

(values.role === 'flood' ? floodRole() : main()).catch((err) => {
  console.error(`bench-fairness: ${err.stack}`);
  process.exit(1);
});
