import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeylessSession } from '../../src/client/session';
import { freePort } from '../helpers/ports';
import { until } from '../helpers/until';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');
const stateDir = join(mkdtempSync(join(tmpdir(), 'keylessd-audit-daemon-')), 'state');
const auditPath = join(stateDir, 'audit.log');
const publicKey = join(stateDir, 'pki', 'audit-signing.pub');

interface Running {
  readonly process: ChildProcess;
  readonly port: number;
  readonly metricsPort: number;
  output(): string;
}

async function start(): Promise<Running> {
  const port = await freePort();
  const metricsPort = await freePort();
  const child = spawn(process.execPath, [keylessd, '--state-dir', stateDir, '--port', String(port), '--metrics-port', String(metricsPort)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  await until(() => output.includes('keylessd serving') || child.exitCode !== null, 60_000, 'keylessd to serve');
  if (child.exitCode !== null) throw new Error(`keylessd exited: ${output}`);
  return { process: child, port, metricsPort, output: () => output };
}

async function stop(running: Running): Promise<void> {
  const exited = new Promise<number | null>((resolve) => running.process.once('exit', resolve));
  running.process.kill('SIGTERM');
  expect(await exited).toBe(0);
}

async function sign(running: Running, count: number): Promise<void> {
  const pki = (name: string) => readFileSync(join(stateDir, 'pki', name));
  const session = await KeylessSession.connect({ url: `wss://127.0.0.1:${running.port}/v1`, ca: pki('ca.crt'), cert: pki('client.crt'), key: pki('client.key') });
  for (let i = 0; i < count; i++) await session.sign({ name: 'demo-p256' }, 'ECDSA_SHA256', { message: Buffer.from(`m${i}`) });
  await session.close();
}

function ctl(args: string[]): { status: number; out: string } {
  try {
    return { status: 0, out: execFileSync(process.execPath, [keylessctl, ...args], { stdio: 'pipe' }).toString() };
  } catch (err) {
    return { status: (err as { status: number }).status, out: (err as { stderr: Buffer }).stderr.toString() };
  }
}

test('the embedded default signs checkpoints; verify checks them and an anchor from the CLI; the logs carry them', async () => {
  const running = await start();
  await sign(running, 5);
  await stop(running);
  expect(running.output()).toContain('"msg":"audit checkpoint"');
  const anchor = join(stateDir, 'anchor.json');
  const checkpoint = ctl(['audit', 'checkpoint', auditPath]);
  expect(checkpoint.status).toBe(0);
  writeFileSync(anchor, checkpoint.out);
  expect(ctl(['audit', 'verify', '--public-key', publicKey, '--anchor', anchor, auditPath])).toMatchObject({
    status: 0,
    out: expect.stringMatching(/^OK: 7 records \(1–7\) verified in 1 file\(s\), 1 checkpoints, 1 signed records verified, anchor found\n$/),
  });
  // Cutting the checkpoint and the records before it off the end leaves a chain that is whole, but not the anchored one.
  const lines = readFileSync(auditPath, 'utf8').split('\n').slice(0, -1);
  writeFileSync(auditPath, `${lines.slice(0, 3).join('\n')}\n`);
  expect(ctl(['audit', 'verify', auditPath]).status).toBe(0);
  expect(ctl(['audit', 'verify', '--public-key', publicKey, '--anchor', anchor, auditPath])).toMatchObject({ status: 1, out: expect.stringContaining('cut off its end') });
}, 120_000);

test('an audit log removed while the daemon runs is noticed, logged at error, counted, and a new file continues the chain', async () => {
  const running = await start();
  await sign(running, 2);
  unlinkSync(auditPath);
  await until(() => running.output().includes('audit log tampering'), 10_000, 'the daemon to notice the removed audit log');
  await sign(running, 1);
  const metrics = await (await fetch(`http://127.0.0.1:${running.metricsPort}/metrics`)).text();
  expect(metrics).toMatch(/^keyless_audit_events_total\{event="reopened"\} 1$/m);
  expect((await fetch(`http://127.0.0.1:${running.metricsPort}/readyz`)).status).toBe(200);
  await stop(running);
  expect(JSON.parse(readFileSync(auditPath, 'utf8').split('\n')[0]!)).toMatchObject({ type: 'reopen', reason: 'audit.log was removed while the daemon ran' });
  expect(ctl(['audit', 'verify', auditPath])).toMatchObject({ status: 1, out: expect.stringContaining('not the genesis record') });
}, 120_000);
