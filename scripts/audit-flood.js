#!/usr/bin/env node
// The worst client for the audit log: an authenticated edge that sends nothing but refused
// requests (a key it may not use, keys that do not exist), each with the largest SNI and
// request id a frame carries, as fast as it can over several sessions. Prints refusals/s and
// the audit log's growth in bytes/s. Run after `npm run build`:
//   node scripts/audit-flood.js [--seconds 10] [--sessions 4]
'use strict';
const { spawn } = require('node:child_process');
const { mkdtempSync, readFileSync, statSync, writeFileSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');
const { parseArgs } = require('node:util');
const { ensureDevState } = require('../dist/src/daemon/devstate');
const { KeylessSession } = require('../dist/src/client/session');

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '10' }, sessions: { type: 'string', default: '4' } } });
const root = join(__dirname, '..');

(async () => {
  const work = mkdtempSync(join(tmpdir(), 'keylessd-audit-flood-'));
  const state = join(work, 'state');
  await ensureDevState(state);
  const config = join(work, 'keylessd.yaml');
  const audit = join(work, 'audit.log');
  writeFileSync(
    config,
    `listen: { host: 127.0.0.1, port: 2428 }
tls: { cert: ${state}/pki/server.crt, key: ${state}/pki/server.key, client_ca: ${state}/pki/ca.crt }
metrics: { enabled: false }
audit: { path: ${audit}, signing_key: ${state}/pki/audit-signing.key }
groups: { nobody: { subject_cn: [somebody else] } }
keys: { demo-p256: { policy: { groups: [nobody] } } }
backends: [ { type: file, name: files, dir: ${state}/keys } ]
`,
  );
  const daemon = spawn(process.execPath, [join(root, 'dist/src/cli/keylessd.js'), '--config', config, '--log-level', 'error'], { stdio: ['ignore', 'ignore', 'inherit'] });
  process.on('exit', () => daemon.kill('SIGKILL'));
  const pki = (name) => readFileSync(join(state, 'pki', name));
  const connect = () => KeylessSession.connect({ url: 'wss://127.0.0.1:2428/v1', ca: pki('ca.crt'), cert: pki('client.crt'), key: pki('client.key'), requestTimeoutMs: 10_000 });
  let sessions;
  for (let attempt = 0; !sessions; attempt++) {
    try {
      sessions = await Promise.all(Array.from({ length: Number(values.sessions) }, connect));
    } catch (err) {
      if (attempt > 100) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const hostile = `\n\u001b[2J${'x'.repeat(20_000)}`;
  const before = statSync(audit).size;
  const started = Date.now();
  const end = started + Number(values.seconds) * 1000;
  let refused = 0;
  await Promise.all(
    sessions.map(async (session) => {
      while (Date.now() < end) {
        await Promise.all(
          Array.from({ length: 64 }, (_, i) =>
            session.request({ sign: { key: { name: i % 2 ? 'demo-p256' : `no-such-key-${hostile}` }, algorithm: 9, digest: Buffer.alloc(32) }, context: { sni: hostile, requestId: hostile } }).then((r) => {
              if (r.result === 'error') refused += 1;
            }),
          ),
        );
      }
    }),
  );
  const seconds = (Date.now() - started) / 1000;
  await Promise.all(sessions.map((s) => s.close()));
  daemon.kill('SIGTERM');
  await new Promise((r) => daemon.once('exit', r));
  const bytes = statSync(audit).size - before;
  console.log(JSON.stringify({ seconds: Number(seconds.toFixed(1)), refusalsPerSecond: Math.round(refused / seconds), auditBytesPerSecond: Math.round(bytes / seconds), auditBytesPerRefusal: Number((bytes / refused).toFixed(2)) }));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
