#!/usr/bin/env node
// Bounded under overload (issue 17): starts keylessd (embedded demo PKI, file keys, audit
// and metrics on), measures its peak with a closed loop, then offers FACTOR x that peak
// open-loop (requests sent at a fixed rate whatever the answers) and reports answered/s,
// OVERLOADED/s, other errors, and the latency of answered requests (p50/p99, and p99 of the
// first and second half of the run: a growing tail shows as a second half far above the
// first). With --compare it repeats the overload against a daemon whose backend queue is
// unbounded (limits.max_queued_per_backend: 1000000), i.e. the behaviour before the bound.
//
//   npm run build && flock /work/notes/bench.lock node scripts/bench-overload.js [--seconds 8] [--factor 2] [--key demo-rsa2048] [--compare]
//   SERVER_FLAGS="--cpu-prof --cpu-prof-dir=DIR" node scripts/bench-overload.js …   # node flags for keylessd, as words
// --json: the lines go to stderr, and stdout gets one JSON object with every figure (bench.sh reads it).
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { cpuMs, nodeFlags } = require('./bench-proc');
const { WebSocket } = require('ws');
const { ensureDevState } = require('../dist/src/daemon/devstate');
const { runLoad, webSocketConnection } = require('../dist/src/bench/load');
const { v1Protocol } = require('../dist/src/bench/v1-protocol');
const { LatencyHistogram } = require('../dist/src/bench/histogram');
const { keyRefToMessage, signatureAlgorithmNumber, SUBPROTOCOL } = require('../dist/src/protocols/v1/codec');

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    factor: { type: 'string', default: '2' },
    sessions: { type: 'string', default: '8' },
    key: { type: 'string', default: 'demo-rsa2048' },
    algorithm: { type: 'string' },
    compare: { type: 'boolean', default: false },
    port: { type: 'string', default: '2428' },
    json: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const factor = Number(values.factor);
const sessions = Number(values.sessions);
const algorithm = values.algorithm ?? (values.key.includes('rsa') ? 'RSA_PKCS1_SHA256' : values.key.includes('ed25519') ? 'ED25519' : 'ECDSA_SHA256');
const port = Number(values.port);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'keylessd-overload-'));
const state = path.join(work, 'state');

function config(name, limits) {
  const S = state;
  const file = path.join(work, `${name}.yaml`);
  fs.writeFileSync(
    file,
    `listen: { host: 127.0.0.1, port: ${port} }
tls: { cert: ${S}/pki/server.crt, key: ${S}/pki/server.key, client_ca: ${S}/pki/ca.crt }
metrics: { port: ${port + 1} }
audit: { path: ${work}/${name}-audit.log }
limits: ${JSON.stringify(limits)}
backends: [{ type: file, name: demo, dir: ${S}/keys }]
`,
  );
  return file;
}

async function serve(file) {
  const child = spawn(process.execPath, [...nodeFlags('SERVER_FLAGS'), path.join(__dirname, '../dist/src/cli/keylessd.js'), '--config', file, '--log-level', 'error'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await (await fetch(`http://127.0.0.1:${port + 1}/metrics`)).text();
      return child;
    } catch {
      if (Date.now() > deadline) throw new Error('keylessd did not start');
      await sleep(100);
    }
  }
}

async function stop(child) {
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** Cores each side used while `phase` ran: keylessd's process and this one (the load generator). */
async function withCpu(daemon, phase) {
  const [server, generator, started] = [cpuMs(daemon.pid), process.cpuUsage(), performance.now()];
  const result = await phase();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(generator);
  return { ...result, cores: { keylessd: (cpuMs(daemon.pid) - server) / 1000 / seconds, generator: (used.user + used.system) / 1e6 / seconds } };
}
const cores = (c) => `CPU: keylessd ${c.keylessd.toFixed(2)} cores, load generator ${c.generator.toFixed(2)} cores`;
const tls = () => ({ ca: fs.readFileSync(`${state}/pki/ca.crt`), cert: fs.readFileSync(`${state}/pki/client.crt`), key: fs.readFileSync(`${state}/pki/client.key`) });
function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/v1`, SUBPROTOCOL, { ...tls(), perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

const digestLength = { RSA_PKCS1_SHA256: 32, ECDSA_SHA256: 32 };
const protocol = v1Protocol({
  sign: {
    key: keyRefToMessage({ name: values.key }),
    algorithm: signatureAlgorithmNumber(algorithm),
    ...(digestLength[algorithm] ? { digest: Buffer.alloc(digestLength[algorithm], 7) } : { message: Buffer.from('overload') }),
  },
});

/** Open loop: `rate` requests/s spread over the sessions for `seconds`, whatever the answers. */
async function openLoop(rate) {
  const sockets = await Promise.all(Array.from({ length: sessions }, connect));
  const sentAt = new Map();
  const outcomes = {};
  const all = new LatencyHistogram();
  const halves = [new LatencyHistogram(), new LatencyHistogram()];
  let nextId = 1;
  let half = 0;
  let measuring = true;
  let late = 0;
  for (const ws of sockets) {
    ws.on('message', (data) => {
      const { id, outcome } = protocol.answer(data);
      const sent = sentAt.get(id);
      if (sent === undefined) return;
      sentAt.delete(id);
      if (!measuring) {
        late += 1; // answered after the offered period: the backlog draining
        return;
      }
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
      if (outcome === 'ok') {
        const us = (performance.now() - sent) * 1000;
        all.record(us);
        halves[half].record(us);
      }
    });
  }
  const tickMs = 5;
  const started = performance.now();
  let owed = 0;
  let next = 0;
  const ticker = setInterval(() => {
    const elapsed = (performance.now() - started) / 1000;
    half = elapsed < seconds / 2 ? 0 : 1;
    owed = rate * elapsed - (nextId - 1);
    for (; owed >= 1; owed--) {
      const id = nextId++;
      sentAt.set(id, performance.now());
      sockets[next].send(protocol.frame(id));
      next = (next + 1) % sockets.length;
    }
  }, tickMs);
  await sleep(seconds * 1000);
  clearInterval(ticker);
  measuring = false;
  const elapsed = (performance.now() - started) / 1000;
  const sent = nextId - 1;
  // Answers still owed after the offered period: wait a little for them, then count the rest as unanswered.
  const drainBy = Date.now() + 10_000;
  while (sentAt.size > 0 && Date.now() < drainBy) await sleep(20);
  for (const ws of sockets) ws.terminate();
  const ms = (h, p) => (h.count ? (h.percentile(p) / 1000).toFixed(1) : '-');
  return {
    offeredPerSecond: Math.round(sent / elapsed),
    answeredOkPerSecond: Math.round((outcomes.ok ?? 0) / elapsed),
    overloadedPerSecond: Math.round((outcomes.OVERLOADED ?? 0) / elapsed),
    otherErrors: Object.fromEntries(Object.entries(outcomes).filter(([k]) => k !== 'ok' && k !== 'OVERLOADED')),
    backlog: late + sentAt.size,
    unanswered: sentAt.size,
    okLatencyMs: { p50: ms(all, 0.5), p99: ms(all, 0.99), p99FirstHalf: ms(halves[0], 0.99), p99SecondHalf: ms(halves[1], 0.99) },
  };
}

async function peak() {
  const result = await runLoad({
    sessions,
    inflight: algorithm.startsWith('RSA') ? 4 : 16,
    seconds,
    warmupSeconds: 1,
    connect: async () => webSocketConnection(await connect()),
    protocol,
  });
  return { opsPerSecond: Math.round(result.opsPerSecond), p50Ms: (result.latencyUs.p50 / 1000).toFixed(1), p99Ms: (result.latencyUs.p99 / 1000).toFixed(1), errors: result.errors };
}

/** The report lines: stdout, or stderr when --json keeps stdout for the figures. */
const say = values.json ? (line) => process.stderr.write(`${line}\n`) : (line) => console.log(line);

async function main() {
  await ensureDevState(state);
  const figures = [];
  say(`keylessd overload: ${values.key} ${algorithm}, ${sessions} sessions, ${seconds} s per figure, offered ${factor}x the peak; ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}`);
  const runs = [['bounded (default limits)', {}]];
  if (values.compare) runs.push(['unbounded queue (before)', { max_queued_per_backend: 1_000_000 }]);
  for (const [name, limits] of runs) {
    const daemon = await serve(config(name.split(' ')[0], limits));
    try {
      const top = await withCpu(daemon, peak);
      say(`${name}: peak (closed loop) ${top.opsPerSecond.toLocaleString('en')} /s, p50 ${top.p50Ms} ms, p99 ${top.p99Ms} ms${Object.keys(top.errors).length ? `, errors ${JSON.stringify(top.errors)}` : ''}; ${cores(top.cores)}`);
      const over = await withCpu(daemon, () => openLoop(factor * top.opsPerSecond));
      const ratio = over.answeredOkPerSecond / top.opsPerSecond;
      figures.push({ name, peak: top, overload: over, ratio });
      say(
        `${name}: offered ${over.offeredPerSecond.toLocaleString('en')} /s -> answered ok ${over.answeredOkPerSecond.toLocaleString('en')} /s (${ratio.toFixed(2)} of peak), OVERLOADED ${over.overloadedPerSecond.toLocaleString('en')} /s, ` +
          `other ${JSON.stringify(over.otherErrors)}, still owed at the end ${over.backlog} (unanswered 10 s later ${over.unanswered}); ok latency p50 ${over.okLatencyMs.p50} ms, p99 ${over.okLatencyMs.p99} ms (first half ${over.okLatencyMs.p99FirstHalf}, second half ${over.okLatencyMs.p99SecondHalf}); ${cores(over.cores)}`,
      );
    } finally {
      await stop(daemon);
    }
  }
  fs.rmSync(work, { recursive: true, force: true });
  if (values.json) console.log(JSON.stringify({ key: values.key, algorithm, factor, runs: figures }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
