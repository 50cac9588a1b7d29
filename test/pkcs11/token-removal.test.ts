import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { KeylessSession } from '../../src/client/session';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { answerOf, keepBusy, type Load } from '../helpers/load';
import { GiveUp, until } from '../helpers/until';

// A SoftHSM2 token taken away from a running keylessd and put back, under load. SoftHSM
// reads its token folder at C_Initialize, so this needs the daemon in its own process with
// its own SOFTHSM2_CONF (the module in this jest process already read the shared one). Uses
// dist/ like the other CLI tests (`npm test` builds first).
const root = join(__dirname, '..', '..');
const PIN = '135790';
const work = mkdtempSync(join(tmpdir(), 'keylessd-removal-'));
const tokenRoot = join(work, 'token');
const away = join(work, 'away');
const fileKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
let pki: TestPki;
let daemon: ChildProcess;
let ports: { listen: number; metrics: number };
let log = '';
let session: KeylessSession;
let tokenFolder: string;
let load: Load | undefined;

/** A check that gives up at once when keylessd has exited; what it waited for comes with the log. */
const serving =
  <T>(check: () => T | Promise<T>) =>
  async (): Promise<T> => {
    if (daemon.exitCode !== null) throw new GiveUp(`keylessd exited with ${daemon.exitCode}:\n${log}`);
    load?.assertRunning();
    return check();
  };
const withLog = (what: string) => () => `${what}:\n${log.slice(-4000)}`;

const readyz = async () => {
  const res = await fetch(`http://127.0.0.1:${ports.metrics}/readyz`);
  return { status: res.status, body: await res.text() };
};
const backendUp = async (name: string) => {
  const text = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
  return new RegExp(`^keyless_backend_up\\{backend="${name}"\\} (\\d)$`, 'm').exec(text)?.[1];
};

beforeAll(async () => {
  mkdirSync(away);
  // A second token on the same module stays: C_Finalize interrupts its backend too (the module is
  // process-global), so it must drain its calls first and reconnect by itself.
  execFileSync(join(root, 'scripts', 'softhsm-token.sh'), ['--dir', tokenRoot, '--label', 'steady', '--pin', PIN, '--generate', 'ec:P-256:steady-p256:01'], { stdio: 'ignore' });
  const before = new Set(readdirSync(join(tokenRoot, 'tokens')));
  execFileSync(join(root, 'scripts', 'softhsm-token.sh'), ['--dir', tokenRoot, '--label', 'removable', '--pin', PIN, '--generate', 'ec:P-256:hsm-p256:01'], { stdio: 'ignore' });
  tokenFolder = readdirSync(join(tokenRoot, 'tokens')).find((f) => !before.has(f))!;
  writeFileSync(join(work, 'user.pin'), `${PIN}\n`, { mode: 0o600 });
  const keyDir = join(work, 'keys');
  mkdirSync(keyDir);
  writeFileSync(join(keyDir, 'file-p256.pem'), fileKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  pki = await makeTestPki();
  ports = { listen: await freePort(), metrics: await freePort() };
  const config = {
    listen: { host: '127.0.0.1', port: ports.listen },
    metrics: { host: '127.0.0.1', port: ports.metrics },
    tls: { cert: pki.files.serverCert, key: pki.files.serverKey, client_ca: pki.files.caCert },
    audit: { path: join(work, 'audit.log') },
    log: { level: 'info' },
    backends: [
      { type: 'pkcs11', name: 'hsm', uri: `pkcs11:token=removable?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:${join(work, 'user.pin')}`, pool_size: 4 },
      { type: 'pkcs11', name: 'steady', uri: `pkcs11:token=steady?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:${join(work, 'user.pin')}`, pool_size: 2 },
      { type: 'file', name: 'disk', dir: keyDir },
    ],
  };
  writeFileSync(join(work, 'keylessd.yaml'), stringify(config));
  daemon = spawn(process.execPath, [join(root, 'dist', 'src', 'cli', 'keylessd.js'), '--config', join(work, 'keylessd.yaml')], {
    env: { ...process.env, SOFTHSM2_CONF: join(tokenRoot, 'softhsm2.conf') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  daemon.stdout!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  daemon.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  await until(serving(async () => (await readyz().catch(() => ({ status: 0 }))).status === 200), 60_000, withLog('/readyz'));
  session = await KeylessSession.connect({
    url: `wss://127.0.0.1:${ports.listen}/v1`,
    ca: Buffer.from(pki.ca.certPem),
    cert: Buffer.from(pki.client.certPem),
    key: Buffer.from(pki.client.keyPem),
  });
}, 120_000);

afterAll(async () => {
  // A failed expectation leaves the load running: it stops before its session closes. (A loop
  // that ended on an error has failed the test already.)
  await load?.stop().catch(() => undefined);
  await session?.close();
  if (daemon && daemon.exitCode === null) {
    const exited = new Promise((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGTERM');
    await exited;
  }
  rmSync(work, { recursive: true, force: true });
});

test('the token folder moved away under load and back: BACKEND_UNAVAILABLE, /readyz and keyless_backend_up say so, the file backend keeps serving, then the token serves again without a restart', async () => {
  const message = Buffer.from('token removal');
  const publicKeyOf = async (name: string) => createPublicKey({ key: Buffer.from((await session.getKey({ name })).publicKey!), format: 'der', type: 'spki' });
  const hsmPublic = await publicKeyOf('hsm-p256');
  const hsm: string[] = [];
  const steady: string[] = [];
  const disk: string[] = [];
  const sign = async (name: string, into: string[], publicKey: KeyObject) => {
    into.push(await answerOf(session.sign({ name }, 'ECDSA_SHA256', { message }), (signature) => verify('sha256', message, publicKey, signature)));
  };
  const steadyPublic = await publicKeyOf('steady-p256');
  const diskPublic = createPublicKey(fileKey);
  // 6 loops on the removable token, 2 on the other token of the module, 2 on the file backend.
  load = keepBusy(10, (loop) => (loop < 6 ? sign('hsm-p256', hsm, hsmPublic) : loop < 8 ? sign('steady-p256', steady, steadyPublic) : sign('file-p256', disk, diskPublic)));
  await until(serving(() => hsm.length >= 200 && disk.length >= 50 && steady.length >= 50), 60_000, withLog('signing under load'));

  renameSync(join(tokenRoot, 'tokens', tokenFolder), join(away, tokenFolder));
  await until(serving(() => hsm.includes('BACKEND_UNAVAILABLE')), 60_000, withLog('BACKEND_UNAVAILABLE from the removed token'));
  await until(serving(async () => {
    const { status, body } = await readyz();
    return status === 503 && body.includes('backend:hsm') && !body.includes('backend:disk');
  }), 60_000, withLog('/readyz to name the backend'));
  expect(await backendUp('hsm')).toBe('0');
  expect(await backendUp('disk')).toBe('1');
  const diskWhileDown = disk.length;
  await until(serving(() => disk.length >= diskWhileDown + 50), 60_000, withLog('the file backend to keep serving'));
  expect(new Set(disk)).toEqual(new Set(['ok']));

  renameSync(join(away, tokenFolder), join(tokenRoot, 'tokens', tokenFolder));
  const putBack = hsm.length;
  const steadyAt = steady.length;
  await until(serving(() => hsm.slice(putBack).filter((o) => o === 'ok').length >= 100), 60_000, withLog('the token key to sign again'));
  await until(serving(() => steady.slice(steadyAt).filter((o) => o === 'ok').length >= 50), 60_000, withLog('the other token on the module to sign after the last C_Finalize'));
  await until(serving(async () => (await readyz()).status === 200), 60_000, withLog('/readyz to be ready again'));
  expect(await backendUp('hsm')).toBe('1');
  await load.stop();

  expect(new Set(hsm)).toEqual(new Set(['ok', 'BACKEND_UNAVAILABLE']));
  // Interrupted by each C_Finalize of the shared module, never with anything but BACKEND_UNAVAILABLE.
  expect([...new Set(steady)].sort()).toEqual(steady.includes('BACKEND_UNAVAILABLE') ? ['BACKEND_UNAVAILABLE', 'ok'] : ['ok']);
  expect(steady.at(-1)).toBe('ok');
  expect(new Set(disk)).toEqual(new Set(['ok']));
  expect(log).toMatch(/finalizing and initializing the PKCS#11 module/);
  expect(log).toMatch(/backend hsm reconnected to its token/);
}, 180_000);
