import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/ports';
import { run } from '../helpers/run';
import { until } from '../helpers/until';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version as string;


const ctl = (args: string[]) => run(process.execPath, [keylessctl, ...args]);

/** keylessd serving the embedded default in a fresh state folder, as a process a test may kill. */
async function startKeylessd(): Promise<{ child: ChildProcess; common: string[]; metricsPort: number; stateDir: string }> {
  const stateDir = mkdtempSync(join(tmpdir(), 'keylessctl-state-'));
  const [port, metricsPort] = [await freePort(), await freePort()];
  const child = spawn(process.execPath, [keylessd, '--state-dir', stateDir, '--port', String(port), '--metrics-port', String(metricsPort)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (c: Buffer) => (log += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (log += c.toString()));
  await until(() => log.includes('keylessd serving') || child.exitCode !== null, 60_000, 'keylessd to serve');
  if (child.exitCode !== null) throw new Error(`keylessd exited: ${log}`);
  return { child, common: ['--state-dir', stateDir, '--server', `127.0.0.1:${port}`], metricsPort, stateDir };
}

test('--version on both programs prints the package version', async () => {
  for (const cli of [keylessctl, keylessd]) {
    const result = await run(process.execPath, [cli, '--version']);
    expect(result).toEqual({ status: 0, stdout: `${version}\n`, stderr: '' });
  }
});

test('bare keylessctl prints the help on standard error and exits 2; --help prints it on standard output and exits 0', async () => {
  const bare = await ctl([]);
  expect(bare.status).toBe(2);
  expect(bare.stdout).toBe('');
  expect(bare.stderr).toMatch(/^Usage: keylessctl COMMAND/);
  expect(bare.stderr).toContain('Exit status:');
  const help = await ctl(['--help']);
  expect(help.status).toBe(0);
  expect(help.stdout).toBe(bare.stderr);
});

describe('against a running keylessd', () => {
  let server: Awaited<ReturnType<typeof startKeylessd>>;
  beforeAll(async () => {
    server = await startKeylessd();
  }, 90_000);
  afterAll(() => {
    if (server?.child.exitCode === null) server.child.kill('SIGKILL');
  });

  test('exit statuses: 0 ok, 1 refused by the server, 2 usage, 3 connection', async () => {
    expect((await ctl(['ping', ...server.common])).status).toBe(0);
    const refused = await ctl(['sign', '--key', 'nope', '--algorithm', 'ED25519', '--digest', '00', ...server.common]);
    expect([refused.status, refused.stderr]).toEqual([1, 'keylessctl: server answered KEY_NOT_FOUND: no key with name "nope"\n']);
    const usage = await ctl(['keys', '--frobnicate', ...server.common]);
    expect(usage.status).toBe(2);
    expect(usage.stderr).toMatch(/^keylessctl: Unknown option '--frobnicate'.*\(see --help\)\n$/);
    expect((await ctl(['sign', '--key', 'demo-p256', '--algorithm', 'ECDSA_SHA256', ...server.common, '--message', '/nonexistent'])).status).toBe(2);
    const connection = await ctl(['ping', '--state-dir', server.stateDir, '--server', '127.0.0.1:1']);
    expect([connection.status, connection.stderr]).toEqual([3, 'keylessctl: cannot connect to wss://127.0.0.1:1/v1: connection refused (is keylessd running there?)\n']);
  });

  test('every read command prints JSON with --json', async () => {
    const ping = JSON.parse((await ctl(['ping', '--count', '2', '--json', ...server.common])).stdout);
    expect(ping).toMatchObject({ protocol: 'keyless.v1', round_trips_ms: [expect.any(Number), expect.any(Number)] });
    const keys = JSON.parse((await ctl(['keys', '--json', ...server.common])).stdout) as Array<{ name: string }>;
    expect(keys.map((k) => k.name).sort()).toEqual(['demo-ed25519', 'demo-p256', 'demo-rsa2048']);
    const key = JSON.parse((await ctl(['key', 'demo-p256', '--json', ...server.common])).stdout);
    expect(key).toMatchObject({ name: 'demo-p256', type: 'ec', curve: 'P-256' });
    const audit = await ctl(['audit', 'verify', '--json', join(server.stateDir, 'audit.log')]);
    expect(audit.status).toBe(0);
    expect(JSON.parse(audit.stdout)).toMatchObject({ ok: true, records: expect.any(Number) });
    const gokeyless = join(server.stateDir, 'gokeyless.yaml');
    writeFileSync(gokeyless, 'auth_cert: a.crt\nauth_key: a.key\ncloudflare_ca_cert: ca.crt\nprivate_key_stores: [{dir: keys}]\nhostname: x\n');
    const converted = JSON.parse((await ctl(['config', 'convert', '--json', gokeyless])).stdout);
    expect(converted.config.tls).toEqual({ cert: 'a.crt', key: 'a.key', client_ca: 'ca.crt' });
    expect(converted.notes).toContainEqual({ key: 'hostname', why: expect.any(String) });
  });

  test('a broken audit chain is a failed check: exit 1, with JSON saying where', async () => {
    const log = join(mkdtempSync(join(tmpdir(), 'keylessctl-audit-')), 'audit.log');
    writeFileSync(log, 'not json\n');
    const result = await ctl(['audit', 'verify', '--json', log]);
    expect(result.status).toBe(1);
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, file: log, line: 1 });
  });

  test('bench shows progress on a terminal', async () => {
    const command = [process.execPath, keylessctl, 'bench', '--operation', 'ping', '--sessions', '1', '--inflight', '1', '--duration', '2', '--warmup', '0', ...server.common].join(' ');
    // script(1) gives the command a pseudo-terminal, as an operator's shell would.
    const result = await run('script', ['-qec', command, '/dev/null']);
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/\r\d+ ops\/s, \d+ answered, \d of 2 s/);
    expect(result.stdout).toContain('errors: none');
    // Its own CPU per request: on one machine, what the generator takes from the server measured.
    const generatorUs = Number(/load generator CPU: ([\d.]+) µs per request/.exec(result.stdout)?.[1]);
    expect(generatorUs).toBeGreaterThan(0);
  });
});

test('bench reports the lost sessions and exits 3 when the server dies mid-run', async () => {
  const server = await startKeylessd();
  try {
    const sessionsActive = async () => {
      const text = await (await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`)).text();
      return Number(/^keyless_sessions_active\{listener="keyless.v1"\} (\d+)/m.exec(text)?.[1] ?? 0);
    };
    const bench = run(process.execPath, [keylessctl, 'bench', '--operation', 'ping', '--sessions', '4', '--inflight', '4', '--duration', '60', '--warmup', '0', ...server.common]);
    await until(async () => (await sessionsActive()) >= 4, 30_000, 'the bench sessions to open');
    server.child.kill('SIGKILL');
    const result = await bench;
    expect(result.status).toBe(3);
    expect(result.stdout).toMatch(/connection errors: 4 x session (lost: \w+|closed by the server \(\d+\))/);
    expect(result.stdout).not.toContain('errors: none');
    expect(result.stderr).toBe('keylessctl: 4 of 4 sessions were lost during the run; the figures above cover only what was answered\n');
  } finally {
    if (server.child.exitCode === null) server.child.kill('SIGKILL');
  }
}, 90_000);
