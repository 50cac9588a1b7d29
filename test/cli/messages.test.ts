import { spawn } from 'node:child_process';
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileBackendSchema } from '../../backends/file';
import { envOverrides, validateConfig } from '../../src/config/load';
import { createBackend } from '../../src/daemon/backends';
import { createLogger } from '../../src/log';
import { hashMessage } from '../../src/core/crypto/hashes';
import { startDaemon, writeKeyDir } from '../helpers/daemon';
import { makeTestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { run } from '../helpers/run';
import { until } from '../helpers/until';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');

const runCli = (cli: string, args: string[], env: NodeJS.ProcessEnv = {}) => run(process.execPath, [cli, ...args], { env });

describe('configuration errors name the environment variable or flag that set the field', () => {
  const base = { tls: { cert: '/c', key: '/k', client_ca: '/ca' }, backends: [{ type: 'file', dir: '/keys' }] };

  test('a bad value from the environment', () => {
    expect(() => validateConfig(base, envOverrides({ KEYLESSD_LISTEN_PORT: 'abc' }))).toThrow('listen.port (set by $KEYLESSD_LISTEN_PORT): expected a number between 1 and 65535, got "abc"');
  });

  test('several problems, each blamed on its source', () => {
    expect(() => validateConfig(base, envOverrides({ KEYLESSD_LISTEN_PORT: 'abc', KEYLESSD_LOG_LEVEL: 'loud' }))).toThrow(/listen\.port \(set by \$KEYLESSD_LISTEN_PORT\)[^]*log\.level \(set by \$KEYLESSD_LOG_LEVEL\)/);
  });

  test('keylessd: a file named by a variable, and a flag', async () => {
    const pki = await makeTestPki();
    const file = join(pki.dir, 'k.yaml');
    writeFileSync(file, `tls: {cert: server.crt, key: server.key, client_ca: ca.crt}\naudit: {path: audit.log}\nbackends: [{type: file, dir: ${pki.dir}}]\n`);
    const fromEnv = await runCli(keylessd, ['--check-config', file, '--skip-port-check'], { KEYLESSD_TLS_CERT: '/nonexistent/server.crt' });
    expect(fromEnv.status).toBe(1);
    expect(fromEnv.stderr).toContain('keylessd: tls.cert (set by $KEYLESSD_TLS_CERT): cannot read /nonexistent/server.crt: ENOENT');
    const fromFlag = await runCli(keylessd, ['--check-config', file, '--port', '99999']);
    expect(fromFlag.stderr).toBe('keylessd: listen.port (set by --port): expected a number between 1 and 65535, got 99999\n');
  });
});

test('sign --message names the file it could not read, and why', async () => {
  const result = await runCli(keylessctl, ['sign', '--key', 'x', '--algorithm', 'ECDSA_SHA256', '--message', '/nonexistent/message.txt']);
  expect(result.stderr).toBe('keylessctl: cannot read the message file /nonexistent/message.txt: ENOENT (no such file)\n');
  const dir = mkdtempSync(join(tmpdir(), 'keylessctl-'));
  const again = await runCli(keylessctl, ['sign', '--key', 'x', '--algorithm', 'ECDSA_SHA256', '--message', dir]);
  expect(again.stderr).toBe(`keylessctl: cannot read the message file ${dir}: EISDIR (it is a directory)\n`);
});

test('backend log lines carry each field once (the backend is bound once, by the child logger)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  writeFileSync(join(dir, 'notes.txt'), 'not a key');
  writeFileSync(join(dir, 'open.pem'), generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o644 });
  const lines: string[] = [];
  const logger = createLogger('info', new Writable({ write: (chunk, _e, done) => (lines.push(chunk.toString()), done()) }));
  await createBackend(fileBackendSchema.parse({ type: 'file', name: 'disk', dir }), logger).open();
  await new Promise((r) => setImmediate(r));
  expect(lines.length).toBeGreaterThanOrEqual(2);
  for (const line of lines) {
    const keys = [...line.matchAll(/[{,]"([^"]+)":/g)].map((m) => m[1]);
    expect(keys.filter((k, i) => keys.indexOf(k) !== i)).toEqual([]);
    expect(JSON.parse(line).backend).toBe('disk');
  }
});

test('the algorithm label uses one naming scheme: keyless.v1 enum names for signatures and decryption alike', async () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const d = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'rsa', key: rsa }, { name: 'ec', key: ec }]) }],
    keys: { rsa: { decrypt: true, decrypt_raw: true } },
    metrics: { enabled: true },
  });
  try {
    const session = await d.connect();
    await session.sign({ name: 'ec' }, 'ECDSA_SHA256', { digest: hashMessage('sha256', Buffer.from('x')) });
    await session.decrypt({ name: 'rsa' }, 'rsa-oaep-sha256', publicEncrypt({ key: createPublicKey(rsa), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('secret')));
    await session.decrypt({ name: 'rsa' }, 'rsa-raw', publicEncrypt({ key: createPublicKey(rsa), padding: constants.RSA_PKCS1_PADDING }, Buffer.from('secret')));
    await session.close();
    const text = await (await fetch(`http://127.0.0.1:${d.addresses.metrics!.port}/metrics`)).text();
    const algorithms = new Set([...text.matchAll(/^keyless_requests_total\{[^}]*algorithm="([^"]+)"/gm)].map((m) => m[1]));
    expect([...algorithms].sort()).toEqual(['ECDSA_SHA256', 'RSA_OAEP_SHA256', 'RSA_RAW']);
  } finally {
    await d.stop();
  }
});

test('npm start stopped with SIGTERM stops the daemon too (no orphan holding the ports)', async () => {
  const state = mkdtempSync(join(tmpdir(), 'keylessd-npmstart-'));
  const [port, metricsPort] = [await freePort(), await freePort()];
  // --ignore-scripts skips prestart (the build, which would rewrite dist/ under the other tests) and runs start itself.
  const npm = spawn('npm', ['start', '--silent', '--ignore-scripts', '--', '--state-dir', state, '--port', String(port), '--metrics-port', String(metricsPort)], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  npm.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  npm.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const listening = () =>
    new Promise<boolean>((resolve) => {
      const socket = connect(metricsPort, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
    });
  try {
    await until(() => out.includes('keylessd serving') || npm.exitCode !== null, 170_000, `npm start to serve:\n${out}`);
    expect(await listening()).toBe(true);
    const exited = new Promise((resolve) => npm.once('exit', resolve));
    npm.kill('SIGTERM');
    await exited;
    await until(async () => !(await listening()), 15_000, `the daemon started by npm start to stop after SIGTERM:\n${out}`);
    expect(out).toContain('keylessd stopped');
  } finally {
    try {
      process.kill(-npm.pid!, 'SIGKILL'); // whatever is left of the group this test started
    } catch {
      /* already gone */
    }
  }
}, 200_000);
