import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createPublicKey, verify } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { freePort } from '../helpers/ports';
import { GiveUp, until } from '../helpers/until';

// The compose stack without Docker: the token-init script and the mounted keylessd.yaml run
// for real here (SoftHSM2 is installed), with the volumes replaced by temp folders and the
// listeners moved to free loopback ports. What Docker adds (images, networks) is checked
// statically in compose.test.ts. Uses dist/, like the other CLI tests (`npm test` builds first).
const run = promisify(execFile);
const root = join(__dirname, '..', '..');
const cli = (name: string) => join(root, 'dist', 'src', 'cli', name);

const work = mkdtempSync(join(tmpdir(), 'keylessd-compose-'));
const volumes = { token: join(work, 'token'), pki: join(work, 'pki'), state: join(work, 'state') };
const initEnv = {
  ...process.env,
  TOKEN_DIR: volumes.token,
  PKI_DIR: volumes.pki,
  APP_DIR: root,
  KEYLESSD_UID: String(process.getuid!()),
  KEYLESSD_GID: String(process.getgid!()),
};
const softhsmConf = join(volumes.token, 'softhsm2.conf');
let daemon: ChildProcess;
let ports: { listen: number; compat: number; metrics: number };
let log = '';

/** deploy/compose/keylessd.yaml with the container paths mapped onto the temp folders. */
function stackConfigHere(): string {
  const text = readFileSync(join(root, 'deploy', 'compose', 'keylessd.yaml'), 'utf8')
    .replaceAll('/token/', `${volumes.token}/`)
    .replaceAll('/pki/', `${volumes.pki}/`)
    .replaceAll('/var/lib/keylessd/', `${volumes.state}/`);
  const config = parse(text);
  config.listen = { ...config.listen, host: '127.0.0.1', port: ports.listen };
  config.compat = { ...config.compat, host: '127.0.0.1', port: ports.compat };
  config.metrics = { ...config.metrics, host: '127.0.0.1', port: ports.metrics };
  return stringify(config);
}

const tlsFlags = () => ['--ca', join(volumes.pki, 'ca.crt'), '--client-cert', join(volumes.pki, 'client.crt'), '--client-key', join(volumes.pki, 'client.key')];

beforeAll(async () => {
  Object.values(volumes).forEach((dir) => mkdirSync(dir));
  await run('sh', [join(root, 'deploy', 'compose', 'init-token.sh')], { env: initEnv });
  ports = { listen: await freePort(), compat: await freePort(), metrics: await freePort() };
  const configFile = join(work, 'keylessd.yaml');
  writeFileSync(configFile, stackConfigHere());
  daemon = spawn(process.execPath, [cli('keylessd.js'), '--config', configFile], { env: { ...process.env, SOFTHSM2_CONF: softhsmConf }, stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  daemon.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  await until(
    async () => {
      if (daemon.exitCode !== null) throw new GiveUp(`keylessd exited with ${daemon.exitCode}:\n${log}`);
      return (await fetch(`http://127.0.0.1:${ports.metrics}/readyz`)).ok;
    },
    30_000,
    () => `/readyz:\n${log}`,
  );
}, 60_000);

afterAll(async () => {
  if (!daemon || daemon.exitCode !== null) return;
  const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
  daemon.kill('SIGTERM');
  expect(await exited).toBe(0);
});

test('token-init made the token, a PIN only its owner reads, and the PKI; a second run changes nothing', async () => {
  const pin = readFileSync(join(volumes.token, 'user.pin'), 'utf8');
  expect(pin).toMatch(/^[0-9a-f]{16}$/);
  expect(statSync(join(volumes.token, 'user.pin')).mode & 0o777).toBe(0o600);
  expect(statSync(join(volumes.pki, 'server.key')).mode & 0o777).toBe(0o600);
  const { stdout } = await run('sh', [join(root, 'deploy', 'compose', 'init-token.sh')], { env: initEnv });
  expect(stdout).toContain('already initialized');
  expect(readFileSync(join(volumes.token, 'user.pin'), 'utf8')).toBe(pin);
});

test('the stack serves the token key over keyless.v1: a signature that verifies', async () => {
  const message = join(work, 'message');
  writeFileSync(message, 'keylessd compose stack\n');
  const server = ['--server', `127.0.0.1:${ports.listen}`];
  const signature = (await run(process.execPath, [cli('keylessctl.js'), 'sign', '--key', 'demo-p256', '--algorithm', 'ECDSA_SHA256', '--message', message, ...server, ...tlsFlags()])).stdout.trim();
  const pem = (await run(process.execPath, [cli('keylessctl.js'), 'key', 'demo-p256', '--pem', ...server, ...tlsFlags()])).stdout;
  const publicKey = createPublicKey(pem);
  expect(publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  expect(verify('sha256', readFileSync(message), publicKey, Buffer.from(signature, 'hex'))).toBe(true);
});

test('the stack answers on the Cloudflare-compatible port', async () => {
  const { stdout } = await run(process.execPath, [cli('keylessctl.js'), 'ping', '--protocol', 'cloudflare', '--server', `127.0.0.1:${ports.compat}`, ...tlsFlags()]);
  expect(stdout).toContain(`pong from 127.0.0.1:${ports.compat}`);
});

test('the metrics Prometheus scrapes show the PKCS#11 backend up with its one key', async () => {
  const text = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
  expect(text).toMatch(/^keyless_backend_up\{backend="softhsm"\} 1$/m);
  expect(text).toMatch(/^keyless_keys_loaded\{backend="softhsm"\} 1$/m);
  expect((await fetch(`http://127.0.0.1:${ports.metrics}/healthz`)).status).toBe(200);
});
