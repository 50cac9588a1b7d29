#!/usr/bin/env node
// What the edge costs: full TLS handshakes per second through ONE nginx that serves the same
// key two ways on two ports — from a local key file, and through the keylessd PKCS#11 module
// (module -> agent -> keylessd) — RSA-2048 and P-256, phases interleaved, in one run. Also the
// added latency per handshake (p50/p99 at 1 in flight). No resumption: every handshake is full.
//
//   npm run build && scripts/build-pkcs11-module.sh && node scripts/bench-edge.js [--seconds 5] [--concurrency 8] [--rounds 2] [--warmup 5] [--workers N]
//   SERVER_FLAGS=--perf-basic-prof node scripts/bench-edge.js --serve    # start everything, print pids and ports, stay up (for strace/perf/--cpu-prof)
//
// Before round 1, each target takes --warmup seconds of the same load, not counted: the agent and
// keylessd are long-running processes, and in their first seconds V8 is still compiling their hot
// paths (the agent's CPU per handshake was ~270 µs in a first phase, ~150 µs in later ones).
//
// Per throughput phase it also prints the CPU time per handshake of nginx (master + workers),
// the agent and keylessd, read from /proc; and P-256 signs through the agent's socket with 1
// and 8 in flight with the agent's and keylessd's CPU per sign (docs/benchmarks.md, Edge).
//
// Throughput: N parallel `openssl s_time -new` clients; latency: this process, one handshake at a
// time (Node's TLS client, which verifies nothing: the handshake cost is the server's).
// Everything (nginx with 4 workers per core unless --workers, as docs/edge.md recommends for keys in
// keylessd; keylessd, the agent and the load generators) shares the
// machine's cores, as the targets in docs/benchmarks.md assume. Needs nginx-light,
// libengine-pkcs11-openssl and openssl; run as root so nginx's workers switch to nobody.
'use strict';
const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');
const { parseArgs } = require('node:util');
const { CLK_TCK, cpuMs, nodeFlags } = require('./bench-proc');

const ROOT = path.resolve(__dirname, '..');
const MODULE = path.join(ROOT, 'build/pkcs11/libkeylessd-pkcs11.so');
const ENGINE = '/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so';
const { values } = parseArgs({ options: { serve: { type: 'boolean', default: false }, workers: { type: 'string', default: String(4 * os.cpus().length) }, seconds: { type: 'string', default: '5' }, concurrency: { type: 'string', default: '8' }, rounds: { type: 'string', default: '2' }, warmup: { type: 'string', default: '5' }, latency: { type: 'string', default: '400' } } });
const seconds = Number(values.seconds);
const concurrency = Number(values.concurrency);
const rounds = Number(values.rounds);
const warmupSeconds = Number(values.warmup);
const latencySamples = Number(values.latency);

if (!fs.existsSync(MODULE)) throw new Error(`${MODULE} is missing: run scripts/build-pkcs11-module.sh`);
const children = [];
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill('SIGTERM')));
// A signal ends the script through exit, so the children stop with it (--serve is ended this way).
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

// SERVER_FLAGS / AGENT_FLAGS: node flags for keylessd / the agent, as words (e.g. --cpu-prof, --perf-basic-prof).
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
const canConnect = (opts) =>
  new Promise((resolve) => {
    const s = net.connect(opts);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  child.on('exit', (code) => code && code !== 0 && process.stderr.write(`${cmd} exited ${code}: ${err}\n`));
  children.push(child);
  return child;
}

/** One full handshake; resolves with its duration in microseconds, or rejects. */
function handshakeOnce(port, options) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false, session: undefined, ...options }, () => {
      const us = Number(process.hrtime.bigint() - t0) / 1000;
      socket.destroy();
      resolve(us);
    });
    socket.once('error', reject);
  });
}

function childrenOf(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
/** The whole machine's busy CPU time (ms, all cores), from /proc/stat. */
function machineBusyMs() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + (f[4] ?? 0);
  return ((f.slice(0, 8).reduce((a, b) => a + b, 0) - idle) * 1000) / CLK_TCK;
}
let procs; // { nginx, agent, keylessd } pids, set in main()
function cpuSnapshot() {
  return {
    nginx: cpuMs(procs.nginx) + childrenOf(procs.nginx).reduce((a, p) => a + cpuMs(p), 0),
    agent: cpuMs(procs.agent),
    keylessd: cpuMs(procs.keylessd),
    machine: machineBusyMs(),
  };
}

/** Full handshakes per second from `concurrency` parallel `openssl s_time -new` clients (C, so the load generator costs little CPU). */
async function throughput(port, phaseSeconds = seconds) {
  const before = cpuSnapshot();
  const runs = await Promise.all(
    Array.from(
      { length: concurrency },
      () =>
        new Promise((resolve) => {
          const child = spawn('openssl', ['s_time', '-connect', `127.0.0.1:${port}`, '-new', '-time', String(phaseSeconds)], { env: { ...process.env, OPENSSL_CONF: '/dev/null' }, stdio: ['ignore', 'pipe', 'ignore'] });
          let out = '';
          child.stdout.on('data', (d) => (out = (out + d).slice(-4096)));
          child.on('close', () => resolve(Number(/(\d+) connections in [\d.]+s;/.exec(out)?.[1] ?? 0)));
        }),
    ),
  );
  const after = cpuSnapshot();
  const count = runs.reduce((a, b) => a + b, 0);
  // CPU per handshake (µs) of each process; "rest" is everything else on the machine: the openssl clients, this script, others.
  const cpu = {};
  for (const k of Object.keys(before)) cpu[k] = count ? ((after[k] - before[k]) * 1000) / count : 0;
  cpu.rest = cpu.machine - cpu.nginx - cpu.agent - cpu.keylessd;
  return { rate: count / phaseSeconds, failed: 0, cpu };
}

async function latency(port, options) {
  const samples = [];
  for (let i = 0; i < latencySamples; i++) samples.push(await handshakeOnce(port, options));
  samples.sort((a, b) => a - b);
  const at = (f) => samples[Math.min(samples.length - 1, Math.ceil(samples.length * f) - 1)] / 1000;
  return { p50: at(0.5), p99: at(0.99) };
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keylessd-bench-edge-'));
  fs.chmodSync(dir, 0o755);
  // keylessd's embedded default: a development PKI and demo keys (demo-rsa2048, demo-p256).
  const state = path.join(dir, 'state');
  const [v1, metrics] = [await freePort(), await freePort()];
  const keylessd = start(process.execPath, [...nodeFlags('SERVER_FLAGS'), path.join(ROOT, 'dist/src/cli/keylessd.js'), '--state-dir', state, '--port', String(v1), '--metrics-port', String(metrics), '--log-level', 'warn']);
  await waitFor('keylessd', () => canConnect({ port: v1, host: '127.0.0.1' }));
  const pki = path.join(state, 'pki');
  const socket = path.join(dir, 'agent.sock');
  const agent = start(process.execPath, [...nodeFlags('AGENT_FLAGS'), path.join(ROOT, 'dist/src/cli/keylessd-agent.js'), '--server', `wss://127.0.0.1:${v1}/v1`, '--servername', 'localhost', '--ca', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'client.crt'), '--key', path.join(pki, 'client.key'), '--socket', socket, '--socket-mode', '666', '--log-level', 'warn']);
  await waitFor('the agent', () => fs.existsSync(socket) && canConnect({ path: socket }));
  await sleep(500);

  // The local-file baseline needs the key where nginx's master can read it (root): a copy in the bench folder.
  const keys = path.join(state, 'keys');
  const conf = path.join(dir, 'openssl.cnf');
  fs.writeFileSync(conf, `openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = ${ENGINE}\nMODULE_PATH = ${MODULE}\ninit = 1\n`);
  const cert = (name) => {
    const out = path.join(dir, `${name}.crt`);
    execFileSync('openssl', ['req', '-x509', '-new', '-key', path.join(keys, `${name}.pem`), '-subj', '/CN=localhost', '-days', '2', '-out', out], { stdio: 'pipe', env: { ...process.env, OPENSSL_CONF: '/dev/null' } });
    return out;
  };
  const targets = [];
  for (const name of ['demo-rsa2048', 'demo-p256']) {
    const crt = cert(name);
    targets.push({ key: name, via: 'file', port: await freePort(), cert: crt, keyRef: path.join(keys, `${name}.pem`) });
    targets.push({ key: name, via: 'module', port: await freePort(), cert: crt, keyRef: `"engine:pkcs11:pkcs11:token=keylessd;object=${name};type=private"` });
  }
  const prefix = path.join(dir, 'nginx');
  fs.mkdirSync(path.join(prefix, 'logs'), { recursive: true });
  const tmp = path.join(prefix, 'tmp');
  fs.mkdirSync(tmp);
  const isRoot = process.getuid && process.getuid() === 0;
  fs.writeFileSync(
    path.join(prefix, 'nginx.conf'),
    [
      isRoot ? 'user nobody nogroup;' : '',
      `worker_processes ${values.workers};`,
      'daemon off;',
      `pid ${path.join(prefix, 'nginx.pid')};`,
      `error_log ${path.join(prefix, 'logs/error.log')} warn;`,
      'events { worker_connections 4096; }',
      'http {',
      '  access_log off;',
      `  client_body_temp_path ${tmp}; proxy_temp_path ${tmp}; fastcgi_temp_path ${tmp}; uwsgi_temp_path ${tmp}; scgi_temp_path ${tmp};`,
      ...targets.map((t) => `  server { listen 127.0.0.1:${t.port} ssl; ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off; ssl_certificate ${t.cert}; ssl_certificate_key ${t.keyRef}; return 200 "ok\\n"; }`),
      '}',
      '',
    ].join('\n'),
  );
  const nginx = start('nginx', ['-p', prefix, '-c', path.join(prefix, 'nginx.conf')], { OPENSSL_CONF: conf, KEYLESSD_PKCS11_SOCKET: socket, KEYLESSD_PKCS11_CONF: path.join(dir, 'none.conf') });
  for (const t of targets) await waitFor(`nginx on ${t.port}`, () => canConnect({ port: t.port, host: '127.0.0.1' }));

  if (values.serve) {
    // For profiling (strace/perf on a worker, --cpu-prof on the agent): everything stays up until Ctrl-C.
    console.log(JSON.stringify({ nginx: nginx.pid, agent: agent.pid, keylessd: keylessd.pid, socket, targets: targets.map((t) => ({ key: t.key, via: t.via, port: t.port })) }, null, 1));
    await new Promise(() => {});
  }
  procs = { nginx: nginx.pid, agent: agent.pid, keylessd: keylessd.pid };
  const cpus = os.cpus();
  console.log(`bench-edge: ${cpus.length} x ${cpus[0].model}, node ${process.version}, ${require('node:child_process').spawnSync('nginx', ['-v'], { encoding: 'utf8' }).stderr.trim()}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`TLS 1.3 full handshakes, nginx worker_processes ${values.workers}, ${concurrency} openssl s_time -new clients in parallel, ${seconds} s per phase, ${rounds} round(s); latency: ${latencySamples} sequential handshakes\n`);
  const results = {};
  for (const t of targets) results[`${t.key}/${t.via}`] = { rates: [], failed: 0, lat: [], cpu: [] };
  if (warmupSeconds > 0) {
    for (const t of targets) await throughput(t.port, warmupSeconds);
    console.log(`warm-up: ${warmupSeconds} s of the same load on each target, not counted\n`);
  }
  for (let round = 0; round < rounds; round++) {
    for (const t of targets) {
      const options = t.key === 'demo-p256' ? { sigalgs: 'ecdsa_secp256r1_sha256' } : { sigalgs: 'rsa_pss_rsae_sha256' };
      await latency(t.port, options); // warm up
      const r = results[`${t.key}/${t.via}`];
      const { rate, failed, cpu } = await throughput(t.port);
      r.rates.push(rate);
      r.cpu.push(cpu);
      r.failed += failed;
      r.lat.push(await latency(t.port, options));
      console.log(`round ${round + 1} ${t.key.padEnd(12)} ${t.via.padEnd(6)} ${rate.toFixed(0).padStart(6)} handshakes/s  p50 ${r.lat.at(-1).p50.toFixed(2)} ms  p99 ${r.lat.at(-1).p99.toFixed(2)} ms${failed ? `  (${failed} failed)` : ''}  CPU µs/handshake: nginx ${cpu.nginx.toFixed(0)} agent ${cpu.agent.toFixed(0)} keylessd ${cpu.keylessd.toFixed(0)} rest ${cpu.rest.toFixed(0)} (machine ${cpu.machine.toFixed(0)})`);
    }
  }
  // Where the added time goes: P-256 signs one at a time, directly through a client pool to
  // keylessd, and through the agent's socket (what the module does).
  const { encodeRequest, decodeResponse } = require(path.join(ROOT, 'dist/src/protocols/v1/codec'));
  const { KeylessPool } = require(path.join(ROOT, 'dist/src/client/pool'));
  const digest = require('node:crypto').createHash('sha256').update('probe').digest();
  const pct = (xs) => (xs.sort((a, b) => a - b), { p50: xs[Math.floor(xs.length / 2)], p99: xs[Math.ceil(xs.length * 0.99) - 1] });
  const pool = new KeylessPool({ servers: [{ url: `wss://127.0.0.1:${v1}/v1`, servername: 'localhost' }], ca: fs.readFileSync(path.join(pki, 'ca.crt')), cert: fs.readFileSync(path.join(pki, 'client.crt')), key: fs.readFileSync(path.join(pki, 'client.key')) });
  await pool.ready();
  const direct = [];
  for (let i = 0; i < 300; i++) {
    const t0 = process.hrtime.bigint();
    await pool.sign({ name: 'demo-p256' }, 'ECDSA_SHA256', { digest });
    direct.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  await pool.close();
  // The module's path without nginx: signs over the agent's socket, `inflight` connections each
  // with one request outstanding (as `inflight` blocked nginx workers would), with the CPU each
  // process spends per sign.
  async function viaAgent(inflight, count) {
    const conns = await Promise.all(
      Array.from({ length: inflight }, async () => {
        const c = net.connect(socket);
        await new Promise((r) => c.once('connect', r));
        let pendingFrame = Buffer.alloc(0);
        let answer;
        c.on('data', (d) => {
          pendingFrame = pendingFrame.length ? Buffer.concat([pendingFrame, d]) : d;
          if (pendingFrame.length >= 4 && pendingFrame.length >= 4 + pendingFrame.readUInt32BE(0)) {
            const frame = pendingFrame.subarray(4, 4 + pendingFrame.readUInt32BE(0));
            pendingFrame = pendingFrame.subarray(4 + frame.length);
            answer(decodeResponse(frame));
          }
        });
        return { c, call: (bytes) => new Promise((r) => ((answer = r), c.write(bytes))) };
      }),
    );
    const frame = (id) => {
      const body = encodeRequest({ id, sign: { key: { name: 'demo-p256' }, algorithm: 9, digest } });
      const header = Buffer.alloc(4);
      header.writeUInt32BE(body.length);
      return Buffer.concat([header, body]);
    };
    for (const { call } of conns) for (let i = 0; i < 20; i++) await call(frame(i + 1)); // warm up
    const times = [];
    const before = cpuSnapshot();
    const t0 = process.hrtime.bigint();
    await Promise.all(
      conns.map(async ({ call }) => {
        for (let i = 0; i < count / inflight; i++) {
          const t = process.hrtime.bigint();
          await call(frame(i + 1));
          times.push(Number(process.hrtime.bigint() - t) / 1e6);
        }
      }),
    );
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    const after = cpuSnapshot();
    conns.forEach(({ c }) => c.destroy());
    return { ...pct(times), rate: times.length / elapsed, agent: ((after.agent - before.agent) * 1000) / times.length, keylessd: ((after.keylessd - before.keylessd) * 1000) / times.length };
  }
  const d = pct(direct);
  const a1 = await viaAgent(1, 1000);
  const a8 = await viaAgent(8, 4000);
  console.log(`\nP-256 sign, one at a time: client pool -> keylessd p50 ${d.p50.toFixed(2)} ms p99 ${d.p99.toFixed(2)} ms; agent socket -> agent -> keylessd p50 ${a1.p50.toFixed(2)} ms p99 ${a1.p99.toFixed(2)} ms`);
  for (const [n, a] of [[1, a1], [8, a8]]) {
    console.log(`P-256 sign through the agent's socket, ${n} in flight: ${a.rate.toFixed(0)}/s, p50 ${a.p50.toFixed(2)} ms; CPU µs/sign: agent ${a.agent.toFixed(0)}, keylessd ${a.keylessd.toFixed(0)}`);
  }

  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  console.log('\nkey           file hs/s  module hs/s  ratio  p50 file  p50 module  added p50  p99 file  p99 module  added p99');
  for (const key of ['demo-rsa2048', 'demo-p256']) {
    const f = results[`${key}/file`];
    const m = results[`${key}/module`];
    const fp50 = mean(f.lat.map((l) => l.p50));
    const mp50 = mean(m.lat.map((l) => l.p50));
    const fp99 = mean(f.lat.map((l) => l.p99));
    const mp99 = mean(m.lat.map((l) => l.p99));
    console.log(
      `${key.padEnd(12)} ${mean(f.rates).toFixed(0).padStart(10)} ${mean(m.rates).toFixed(0).padStart(12)} ${(mean(m.rates) / mean(f.rates)).toFixed(2).padStart(6)}` +
        `  ${fp50.toFixed(2).padStart(8)} ${mp50.toFixed(2).padStart(11)} ${(mp50 - fp50).toFixed(2).padStart(10)}  ${fp99.toFixed(2).padStart(8)} ${mp99.toFixed(2).padStart(11)} ${(mp99 - fp99).toFixed(2).padStart(10)}` +
        (f.failed + m.failed ? `  failed: ${f.failed}/${m.failed}` : ''),
    );
  }
  // The machine's noise moves single rounds by several hundredths: each round's ratio, file and module measured minutes apart at most.
  for (const key of ['demo-rsa2048', 'demo-p256']) {
    const perRound = results[`${key}/module`].rates.map((rate, i) => (rate / results[`${key}/file`].rates[i]).toFixed(2));
    console.log(`${key} ratio per round: ${perRound.join(' ')}`);
  }
  console.log('\nCPU µs per handshake (throughput phases, mean of rounds; rest = the openssl clients and everything else on the machine)');
  console.log('key          via     nginx  agent  keylessd  rest  machine');
  for (const [k, r] of Object.entries(results)) {
    const c = (f) => mean(r.cpu.map((x) => x[f])).toFixed(0);
    const [key, via] = k.split('/');
    console.log(`${key.padEnd(12)} ${via.padEnd(6)} ${c('nginx').padStart(6)} ${c('agent').padStart(6)} ${c('keylessd').padStart(9)} ${c('rest').padStart(5)} ${c('machine').padStart(8)}`);
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
