import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/ports';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');

let daemon: ChildProcess;
let stateDir: string;
let port: number;
let banner = '';

beforeAll(async () => {
  stateDir = join(mkdtempSync(join(tmpdir(), 'keylessd-embedded-')), 'state');
  port = await freePort();
  const metricsPort = await freePort();
  daemon = spawn(process.execPath, [keylessd, '--state-dir', stateDir, '--port', String(port), '--metrics-port', String(metricsPort)], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    daemon.stderr!.on('data', (chunk: Buffer) => {
      banner += chunk.toString();
      if (banner.includes('--message package.json')) resolve();
    });
    daemon.once('exit', (code) => reject(new Error(`keylessd exited with ${code}: ${banner}`)));
  });
}, 60_000);

afterAll(async () => {
  const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
  daemon.kill('SIGTERM');
  expect(await exited).toBe(0);
});

test('the first run creates a development PKI and the demo keys', () => {
  expect(readdirSync(join(stateDir, 'pki')).sort()).toEqual(['audit-signing.key', 'audit-signing.pub', 'ca.crt', 'ca.key', 'client.crt', 'client.key', 'server.crt', 'server.key']);
  expect(readdirSync(join(stateDir, 'keys')).sort()).toEqual(['demo-ed25519.pem', 'demo-p256.pem', 'demo-rsa2048.pem']);
});

test('the printed keylessctl command works as printed', () => {
  const line = banner.split('\n').find((l) => l.includes('keylessctl.js sign'))!.trim();
  const args = line.split(/\s+/).slice(1).map((a) => (a.startsWith('dist/') ? join(process.cwd(), a) : a));
  const signature = execFileSync(process.execPath, args, { cwd: root }).toString().trim();
  expect(signature).toMatch(/^[0-9a-f]+$/);
});

test.each([
  ['demo-p256', 'ECDSA_SHA256', ['-digest', 'sha256']],
  ['demo-rsa2048', 'RSA_PKCS1_SHA256', ['-digest', 'sha256']],
  ['demo-ed25519', 'ED25519', []],
])('keylessctl signs with %s and openssl pkeyutl -verify accepts it', (key, algorithm, digestFlags) => {
  const work = mkdtempSync(join(tmpdir(), 'keylessd-verify-'));
  const message = join(work, 'message');
  writeFileSync(message, 'the quick brown fox');
  const common = ['--state-dir', stateDir, '--server', `127.0.0.1:${port}`];
  execFileSync(process.execPath, [keylessctl, 'sign', '--key', key, '--algorithm', algorithm, '--message', message, '--format', 'raw', '--out', join(work, 'sig'), ...common]);
  writeFileSync(join(work, 'pub.pem'), execFileSync(process.execPath, [keylessctl, 'key', key, '--pem', ...common]));
  const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', join(work, 'pub.pem'), '-rawin', ...digestFlags, '-in', message, '-sigfile', join(work, 'sig')]);
  expect(out.toString()).toContain('Signature Verified Successfully');
});

test('keylessctl failures are one line naming the problem, with the documented exit status', () => {
  const run = (args: string[], status = 1) => {
    try {
      execFileSync(process.execPath, [keylessctl, ...args], { stdio: 'pipe' });
      throw new Error('expected keylessctl to fail');
    } catch (err) {
      const e = err as { status: number; stderr: Buffer };
      expect(e.status).toBe(status);
      return e.stderr.toString();
    }
  };
  const common = ['--state-dir', stateDir, '--server', `127.0.0.1:${port}`];
  expect(run(['sign', '--key', 'nope', '--algorithm', 'ED25519', '--digest', '00', ...common])).toBe('keylessctl: server answered KEY_NOT_FOUND: no key with name "nope"\n');
  expect(run(['sign', '--key', 'demo-p256', '--algorithm', 'FOO', '--digest', '00', ...common], 2)).toMatch(/^keylessctl: unknown --algorithm FOO; choose one of /);
  expect(run(['ping', '--state-dir', stateDir, '--server', '127.0.0.1:1'], 3)).toBe('keylessctl: cannot connect to wss://127.0.0.1:1/v1: connection refused (is keylessd running there?)\n');
  expect(run(['ping', '--state-dir', join(stateDir, 'nothing-here'), '--server', `127.0.0.1:${port}`], 2)).toMatch(/^keylessctl: no --ca given, \$KEYLESS_CA unset, and no embedded default in /);
  expect(run(['frobnicate'], 2)).toMatch(/^keylessctl: unknown command frobnicate/);
});
