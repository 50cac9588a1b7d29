#!/usr/bin/env node
// What the PKCS#11 backend costs on top of the token: raw pkcs11js asynchronous signing
// (N sessions, one operation each in flight: the ceiling) against the backend's
// KeyHandle.sign (pool of N sessions, 2N callers so the pool never idles), in one process,
// on one fresh SoftHSM2 token, RSA-2048 PKCS#1 and ECDSA P-256, rounds interleaved.
//
//   node scripts/bench-pkcs11.js [--seconds 5] [--sessions 4] [--rounds 2]
//
// Runs from the TypeScript sources (no build needed); needs softhsm2 and opensc.
'use strict';
const { execFileSync } = require('node:child_process');
const { generateKeyPairSync, createHash } = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const ts = require('typescript');

require.extensions['.ts'] = (mod, filename) => {
  const source = fs.readFileSync(filename, 'utf8');
  const options = { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true };
  mod._compile(ts.transpileModule(source, { fileName: filename, compilerOptions: options }).outputText, filename);
};

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const PIN = '1234';
const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, sessions: { type: 'string', default: '4' }, rounds: { type: 'string', default: '2' } } });
const seconds = Number(values.seconds);
const sessions = Number(values.sessions);
const rounds = Number(values.rounds);

// The token, before the module is loaded: SoftHSM reads SOFTHSM2_CONF once.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keylessd-bench-token-'));
const pemOf = (name, key) => {
  const file = path.join(dir, `${name}.pem`);
  fs.writeFileSync(file, key.export({ format: 'pem', type: 'pkcs8' }));
  return file;
};
const rsa = pemOf('rsa', generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
const p256 = pemOf('p256', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
execFileSync(path.join(__dirname, 'softhsm-token.sh'), ['--dir', dir, '--label', 'bench', '--pin', PIN, '--import', `${rsa}:bench-rsa:01`, '--import', `${p256}:bench-p256:02`], { stdio: 'ignore' });
process.env.SOFTHSM2_CONF = path.join(dir, 'softhsm2.conf');

const pkcs11js = require('pkcs11js');
const { createPkcs11Backend, pkcs11BackendSchema } = require('../backends/pkcs11');
const { loadModule } = require('../backends/pkcs11/module');
const { createLogger } = require('../src/log');

const digest = createHash('sha256').update('bench').digest();
const CASES = [
  { label: 'bench-rsa', title: 'RSA-2048 PKCS#1 SHA-256', scheme: { kind: 'rsa-pkcs1', hash: 'sha256' }, mechanism: pkcs11js.CKM_RSA_PKCS, data: Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]), outLength: 256 },
  { label: 'bench-p256', title: 'ECDSA P-256 SHA-256', scheme: { kind: 'ecdsa', hash: 'sha256' }, mechanism: pkcs11js.CKM_ECDSA, data: digest, outLength: 64 },
];

/** Runs `workers` loops of `once(worker)` for the duration; operations per second. */
async function rate(workers, once) {
  const end = Date.now() + seconds * 1000;
  let count = 0;
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: workers }, async (_, worker) => {
    while (Date.now() < end) {
      await once(worker);
      count++;
    }
  }));
  return count / (Number(process.hrtime.bigint() - started) / 1e9);
}

async function main() {
  const backend = createPkcs11Backend(pkcs11BackendSchema.parse({ type: 'pkcs11', name: 'bench', pool_size: sessions, uri: `pkcs11:token=bench?module-path=${MODULE}&pin-value=${PIN}` }), createLogger('silent'));
  const { keys } = await backend.open();
  // Raw: the same module instance and login, sessions of its own.
  const p = loadModule(MODULE);
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === 'bench');
  const raw = Array.from({ length: sessions }, () => p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
  const objectOf = (label) => {
    p.C_FindObjectsInit(raw[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
    const [object] = p.C_FindObjects(raw[0], 1);
    p.C_FindObjectsFinal(raw[0]);
    return object;
  };

  console.log(`SoftHSM2 ${seconds} s per figure, ${sessions} sessions, ${rounds} rounds, ${os.cpus().length} CPUs, node ${process.version}`);
  for (const c of CASES) {
    const object = objectOf(c.label);
    const key = keys.find((k) => k.name === c.label);
    for (let round = 1; round <= rounds; round++) {
      const rawRate = await rate(sessions, (worker) => {
        const session = raw[worker]; // one operation per session at a time
        p.C_SignInit(session, { mechanism: c.mechanism }, object);
        return p.C_SignAsync(session, c.data, Buffer.alloc(c.outLength));
      });
      const backendRate = await rate(2 * sessions, () => key.sign(c.scheme, digest));
      console.log(`${c.title.padEnd(24)} round ${round}: raw pkcs11js ${Math.round(rawRate).toLocaleString('en')} /s, backend KeyHandle.sign ${Math.round(backendRate).toLocaleString('en')} /s, ratio ${(backendRate / rawRate).toFixed(2)}`);
    }
  }
  for (const session of raw) p.C_CloseSession(session);
  await backend.close();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
