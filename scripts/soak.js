#!/usr/bin/env node
// Soak: keylessd under mixed load for a while, with sessions reconnecting and SIGHUP
// reloads, against file keys and a SoftHSM2 token. Reports requests, errors by code and
// the daemon's RSS at start, after warm-up and at the end. Run after `npm run build`:
//   node scripts/soak.js [--seconds 600] [--warmup 60] [--sessions 16]
'use strict';
const { execFileSync, spawn } = require('node:child_process');
const { randomBytes } = require('node:crypto');
const { mkdtempSync, readFileSync, writeFileSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');
const { parseArgs } = require('node:util');
const { ensureDevState } = require('../dist/src/daemon/devstate');
const { KeylessSession } = require('../dist/src/client/session');

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '600' }, warmup: { type: 'string', default: '60' }, sessions: { type: 'string', default: '16' } } });
const seconds = Number(values.seconds);
const warmup = Number(values.warmup);
const root = join(__dirname, '..');

(async () => {
  const work = mkdtempSync(join(tmpdir(), 'keylessd-soak-'));
  const state = join(work, 'state');
  await ensureDevState(state);
  execFileSync(join(root, 'scripts', 'softhsm-token.sh'), ['--dir', join(work, 'token'), '--label', 'soak', '--pin', '1234', '--generate', 'ec:P-256:hsm-p256:01'], { stdio: 'ignore' });
  writeFileSync(join(work, 'pin'), '1234\n');
  const config = join(work, 'keylessd.yaml');
  writeFileSync(
    config,
    `listen: { host: 127.0.0.1, port: 2418 }
tls: { cert: ${state}/pki/server.crt, key: ${state}/pki/server.key, client_ca: ${state}/pki/ca.crt }
metrics: { port: 2416 }
audit: { path: ${work}/audit.log, max_bytes: 50000000 }
keys: { demo-rsa2048: { decrypt: true, decrypt_raw: true } }
backends:
  - { type: file, name: files, dir: ${state}/keys }
  - { type: pkcs11, name: hsm, pool_size: 4, uri: "pkcs11:token=soak?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:${work}/pin" }
`,
  );
  const daemon = spawn(process.execPath, [join(root, 'dist/src/cli/keylessd.js'), '--config', config, '--log-level', 'warn'], {
    env: { ...process.env, SOFTHSM2_CONF: join(work, 'token', 'softhsm2.conf') },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await new Promise((r) => setTimeout(r, 3000));
  const rss = () => Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${daemon.pid}/status`, 'utf8'))[1]) / 1024);
  const pki = (name) => readFileSync(join(state, 'pki', name));
  const connect = () => KeylessSession.connect({ url: 'wss://127.0.0.1:2418/v1', ca: pki('ca.crt'), cert: pki('client.crt'), key: pki('client.key'), requestTimeoutMs: 10_000 });
  const digest = randomBytes(32);
  const operations = [
    (s) => s.sign({ name: 'demo-p256' }, 'ECDSA_SHA256', { digest }),
    (s) => s.sign({ name: 'demo-ed25519' }, 'ED25519', { message: digest }),
    (s) => s.sign({ name: 'demo-rsa2048' }, 'RSA_PSS_SHA256', { digest }),
    (s) => s.sign({ name: 'hsm-p256' }, 'ECDSA_SHA256', { digest }),
    (s) => s.ping(digest),
    (s) => s.listKeys(),
  ];
  const report = { seconds, sessions: Number(values.sessions), requests: 0, errors: {}, reconnects: 0, reloads: 0, rssMiB: { start: rss() } };
  const end = Date.now() + seconds * 1000;
  setTimeout(() => (report.rssMiB.afterWarmup = rss()), warmup * 1000);
  const reloads = setInterval(() => (daemon.kill('SIGHUP'), report.reloads++), 30_000);
  const worker = async (index) => {
    while (Date.now() < end) {
      let session;
      try {
        session = await connect();
      } catch (err) {
        report.errors.connect = (report.errors.connect ?? 0) + 1;
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      // Each session lives 5-25 s, then reconnects, as edges rotate connections.
      const until = Math.min(end, Date.now() + 5000 + Math.random() * 20_000);
      let i = index;
      while (Date.now() < until) {
        await Promise.all(
          Array.from({ length: 8 }, () =>
            operations[i++ % operations.length](session).then(
              () => report.requests++,
              (err) => {
                const code = err.code ?? err.name;
                report.errors[code] = (report.errors[code] ?? 0) + 1;
              },
            ),
          ),
        );
      }
      await session.close();
      report.reconnects++;
    }
  };
  await Promise.all(Array.from({ length: report.sessions }, (_, i) => worker(i)));
  clearInterval(reloads);
  report.rssMiB.end = rss();
  report.rssGrowthAfterWarmup = `${(((report.rssMiB.end - report.rssMiB.afterWarmup) / report.rssMiB.afterWarmup) * 100).toFixed(1)}%`;
  daemon.kill('SIGTERM');
  console.log(JSON.stringify(report, null, 2));
})().catch((err) => {
  console.error(`soak: ${err.message}`);
  process.exit(1);
});
