import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog } from '../../src/audit/log';
import { AuditRecords, type OperationEvent } from '../../src/audit/record';
import { verifyAuditFiles } from '../../src/audit/verify';
import { until } from '../helpers/until';

const records = new AuditRecords();
const session = { id: 's-1', identity: { subject: 'CN=edge', fingerprint: 'ab'.repeat(32) }, peer: '127.0.0.1:5000', listener: 'keyless.v1' };
const key = { name: 'k', publicKey: { ski: Buffer.alloc(20, 0xcd) } };
const event = (i: number): OperationEvent => ({ session, operation: 'sign', algorithm: 'ECDSA_SHA256', key, result: 'ok', started: 1_700_000_000_000 + i, durationMs: i % 7 });
const record = (i: number): string => records.operation(event(i));

async function writeLog(dir: string, count: number, maxBytes = 1 << 20): Promise<string[]> {
  const path = join(dir, 'audit.log');
  const log = await AuditLog.open({ path, maxBytes, flushIntervalMs: 1000 });
  await Promise.all(Array.from({ length: count }, (_, i) => log.append(record(i))));
  await log.close();
  const rotated = readdirSync(dir).filter((f) => f.startsWith('audit.log.')).sort().map((f) => join(dir, f));
  return [...rotated, path];
}

function editLines(path: string, edit: (lines: string[]) => string[], keepFinalNewline = true): void {
  const lines = readFileSync(path, 'utf8').split('\n').slice(0, -1);
  writeFileSync(path, edit(lines).join('\n') + (keepFinalNewline ? '\n' : ''));
}

test('an untouched log verifies across rotations, and restarts continue the chain', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-audit-'));
  await writeLog(dir, 300, 8192);
  const files = await writeLog(dir, 50, 8192); // reopened: continues from the last record
  expect(files.length).toBeGreaterThan(3);
  // 350 records, the genesis record, and one link record per rotated file.
  expect(verifyAuditFiles(files)).toMatchObject({ ok: true, records: 350 + 1 + files.length - 1, firstSeq: 1 });
  expect(JSON.parse(readFileSync(files[0]!, 'utf8').split('\n')[0]!)).toMatchObject({ seq: 1, type: 'genesis' });
  const first = JSON.parse(readFileSync(files[1]!, 'utf8').split('\n')[0]!);
  expect(first).toMatchObject({ type: 'rotate', prev_file: files[0]!.split('/').pop() });
});

describe('tampering is found at the right file and line', () => {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keylessd-audit-'));
    [path] = await writeLog(dir, 20);
  });

  test('one byte changed', () => {
    editLines(path, (lines) => lines.map((l, i) => (i === 9 ? l.replace('"duration_ms":1', '"duration_ms":3') : l)));
    expect(verifyAuditFiles([path])).toMatchObject({ ok: false, file: path, line: 10, reason: expect.stringContaining('record 10 was altered: its hash') });
  });

  test('a record\'s prev changed: that record is blamed, not its neighbour', () => {
    editLines(path, (lines) => lines.map((l, i) => (i === 9 ? l.replace(/"prev":"[0-9a-f]{4}/, '"prev":"0000') : l)));
    expect(verifyAuditFiles([path])).toMatchObject({ ok: false, file: path, line: 10, reason: expect.stringContaining('record 10 was altered: its prev') });
  });

  test('a line deleted', () => {
    editLines(path, (lines) => lines.filter((_, i) => i !== 4));
    expect(verifyAuditFiles([path])).toMatchObject({ ok: false, file: path, line: 5, reason: expect.stringContaining('expected record 5, found 6') });
  });

  test('two lines swapped', () => {
    editLines(path, (lines) => lines.map((l, i) => (i === 6 ? lines[7]! : i === 7 ? lines[6]! : l)));
    expect(verifyAuditFiles([path])).toMatchObject({ ok: false, file: path, line: 7, reason: expect.stringContaining('expected record 7, found 8') });
  });

  test('a truncated last line', () => {
    const text = readFileSync(path, 'utf8');
    writeFileSync(path, text.slice(0, text.length - 20));
    expect(verifyAuditFiles([path])).toMatchObject({ ok: false, file: path, line: 21, reason: expect.stringContaining('truncated') });
  });

  test('a rotated file missing from the middle', async () => {
    const files = await writeLog(mkdtempSync(join(tmpdir(), 'keylessd-audit-')), 200, 8192);
    expect(verifyAuditFiles([files[0]!, ...files.slice(2)])).toMatchObject({ ok: false, file: files[2], line: 1 });
  });
});

test('appends are batched: many records share one write', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-audit-'));
  const batches: number[] = [];
  const log = await AuditLog.open({ path: join(dir, 'audit.log'), maxBytes: 1 << 20, flushIntervalMs: 1000, onWritten: (n) => batches.push(n) });
  await Promise.all(Array.from({ length: 1000 }, (_, i) => log.append(record(i))));
  await log.close();
  expect(batches.reduce((a, b) => a + b, 0)).toBe(1000);
  expect(batches.length).toBeLessThan(10);
});

test('keylessctl audit verify prints the count or the broken record, with the exit status', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-audit-'));
  const [path] = await writeLog(dir, 5);
  const cli = join(__dirname, '..', '..', 'dist', 'src', 'cli', 'keylessctl.js');
  expect(execFileSync(process.execPath, [cli, 'audit', 'verify', path!]).toString()).toBe('OK: 6 records (1–6) verified in 1 file(s), 0 checkpoints\n');
  editLines(path!, (lines) => lines.filter((_, i) => i !== 2));
  try {
    execFileSync(process.execPath, [cli, 'audit', 'verify', path!], { stdio: 'pipe' });
    throw new Error('expected a failure');
  } catch (err) {
    expect((err as { status: number }).status).toBe(1);
    expect((err as { stderr: Buffer }).stderr.toString()).toBe(`keylessctl: audit log broken at ${path}:3: expected record 3, found 4: record 3 is missing: deleted\n`);
  }
});

/** A 64 KiB filesystem, to fill for real. Needs root with mount rights (CI has them). */
function smallDisk(): string | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'ignore' });
    return dir;
  } catch {
    return undefined;
  }
}

const disk = smallDisk();
(disk ? test : test.skip)('a full disk makes the log unwritable and refuses appends; freeing space recovers it with the chain intact', async () => {
  try {
    await fillTheDisk(disk!);
  } finally {
    execFileSync('umount', [disk!]);
  }
});

async function fillTheDisk(disk: string): Promise<void> {
  const states: boolean[] = [];
  const path = join(disk, 'audit.log');
  const log = await AuditLog.open({ path, maxBytes: 1 << 20, flushIntervalMs: 1000, onStateChange: (writable) => states.push(writable) });
  await log.append(record(0));
  for (const chunk of [4096, 1]) {
    try {
      for (;;) appendFileSync(join(disk, 'filler'), Buffer.alloc(chunk));
    } catch {
      // ENOSPC: the disk is full at this granularity
    }
  }
  // Records still fit in the log's last partly used page; the first that does not is refused.
  let appended = 1;
  let refused: unknown;
  while (refused === undefined && appended < 1000) {
    refused = await log.append(record(appended)).then(() => undefined, (err: unknown) => err);
    appended++;
  }
  expect(refused).toMatchObject({ code: 'BACKEND_UNAVAILABLE' });
  expect(log.writable()).toBe(false);
  rmSync(join(disk, 'filler'));
  await until(() => log.writable(), 30_000, 'the audit log to be writable once the disk has room');
  await log.append(record(appended));
  await log.close();
  expect(states).toEqual([false, true]);
  // The record that could not be acknowledged was still written, in order, once space returned.
  expect(verifyAuditFiles([path])).toMatchObject({ ok: true, records: appended + 2 });
}

test('the audit module alone decides a record: the documented fields, in order, with client text bounded', () => {
  const hostile = { ...session, identity: { subject: `CN=edge\u001b[2J${'x'.repeat(2000)}`, fingerprint: 'ab'.repeat(32) } };
  const line = records.operation({ ...event(3), session: hostile, key: { requested: 'name "nope\nnope"' }, result: 'KEY_NOT_FOUND', context: { sni: 'www.example.com', clientIp: undefined } });
  const parsed = JSON.parse(line) as Record<string, unknown>;
  expect(Object.keys(parsed)).toEqual(['time', 'session', 'client', 'peer', 'listener', 'operation', 'algorithm', 'key', 'result', 'duration_ms', 'context']);
  expect(parsed).toMatchObject({ time: '2023-11-14T22:13:20.003Z', key: { name: 'name "nope\\u{a}nope"' }, result: 'KEY_NOT_FOUND', duration_ms: 3, context: { sni: 'www.example.com' } });
  expect((parsed.client as { subject: string }).subject).toMatch(/^CN=edge\\u\{1b\}\[2Jx+…\(\+\d+ chars\)$/);
  expect(JSON.parse(records.operation(event(1)))).toEqual({
    time: '2023-11-14T22:13:20.001Z',
    session: 's-1',
    client: { subject: 'CN=edge', fingerprint: 'ab'.repeat(32) },
    peer: '127.0.0.1:5000',
    listener: 'keyless.v1',
    operation: 'sign',
    algorithm: 'ECDSA_SHA256',
    key: { name: 'k', ski: 'cd'.repeat(20) },
    result: 'ok',
    duration_ms: 1,
  });
});
