import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog, type AuditEvent } from '../../src/audit/log';
import { loadAuditSigner } from '../../src/audit/signing';
import { auditLogFiles, latestCheckpoint, verifyAuditFiles } from '../../src/audit/verify';
import { until } from '../helpers/until';

const freshDir = () => mkdtempSync(join(tmpdir(), 'keylessd-audit-'));
const op = (n: number) => JSON.stringify({ op: n });

function linesOf(path: string): string[] {
  return readFileSync(path, 'utf8').split('\n').slice(0, -1);
}

function opsIn(path: string): Set<number> {
  const ops = new Set<number>();
  for (const file of auditLogFiles(path)) for (const line of linesOf(file)) {
    const record = JSON.parse(line) as { op?: number };
    if (record.op !== undefined) ops.add(record.op);
  }
  return ops;
}

async function writeOps(path: string, from: number, count: number, options: Partial<Parameters<typeof AuditLog.open>[0]> = {}): Promise<AuditEvent[]> {
  const events: AuditEvent[] = [];
  const log = await AuditLog.open({ path, maxBytes: 1 << 20, flushIntervalMs: 1000, onEvent: (e) => events.push(e), ...options });
  await Promise.all(Array.from({ length: count }, (_, i) => log.append(op(from + i))));
  await log.close();
  return events;
}

describe('nothing is lost across stop, crash and rotation', () => {
  /** Runs the writer child until it has acknowledged a random number of batches, then kills or stops it. */
  function runOnce(path: string, firstOp: number, acknowledged: Set<number>, stop: 'SIGKILL' | 'SIGTERM', after: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(__dirname, 'writer-process.js'), path, String(firstOp)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let buffered = '';
      let batches = 0;
      let highest = firstOp - 1;
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => {
        buffered += d.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        for (const line of lines) {
          if (!line.startsWith('ack ')) continue;
          for (const n of line.slice(4).split(' ').map(Number)) {
            acknowledged.add(n);
            highest = Math.max(highest, n);
          }
          batches += 1;
          if (batches === after) child.kill(stop);
        }
      });
      child.on('exit', (code, signal) => {
        if (code === 3 || (code !== 0 && signal === null)) reject(new Error(`writer failed (exit ${code}): ${stderr}`));
        else resolve(highest + 1);
      });
    });
  }

  test('200 kills and stops at random points during constant rotation lose no acknowledged record, and verify stays clean', async () => {
    const path = join(freshDir(), 'audit.log');
    const acknowledged = new Set<number>();
    let next = 1;
    for (let run = 0; run < 200; run++) {
      next = await runOnce(path, next, acknowledged, run % 4 === 3 ? 'SIGTERM' : 'SIGKILL', 1 + Math.floor(Math.random() * 12));
      // Operations a killed writer had in flight may or may not be on disk; they were never acknowledged.
      next += 8;
    }
    const onDisk = opsIn(path);
    const missing = [...acknowledged].filter((n) => !onDisk.has(n));
    expect(missing).toEqual([]);
    const result = verifyAuditFiles(auditLogFiles(path));
    expect(result).toMatchObject({ ok: true, firstSeq: 1 });
    expect(auditLogFiles(path).length).toBeGreaterThan(50);
  }, 600_000);
});

test('a foreign last line is set aside, recorded, and the chain continues from the last record', async () => {
  const dir = freshDir();
  const path = join(dir, 'audit.log');
  await writeOps(path, 1, 5);
  appendFileSync(path, '{"note": "checked by hand, all fine"}\n');
  const events = await writeOps(path, 6, 3);
  expect(events).toEqual([expect.objectContaining({ type: 'set_aside', bytes: 38 })]);
  const records = linesOf(path).map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  expect(records[6]).toMatchObject({ type: 'set_aside', file: expect.stringMatching(/^audit\.log\.damaged-/) });
  const aside = readdirSync(dir).find((f) => f.startsWith('audit.log.damaged-'))!;
  expect(readFileSync(join(dir, aside), 'utf8')).toBe('{"note": "checked by hand, all fine"}\n');
  expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true, records: 10 });
});

test('a cut last record is set aside the same way', async () => {
  const path = join(freshDir(), 'audit.log');
  await writeOps(path, 1, 5);
  const text = readFileSync(path, 'utf8');
  writeFileSync(path, text.slice(0, -10));
  await writeOps(path, 6, 1);
  expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true });
  expect(linesOf(path).map((l) => JSON.parse(l).seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
});

describe('truncation and deletion are detected', () => {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = freshDir();
    path = join(dir, 'audit.log');
    await writeOps(path, 1, 300, { maxBytes: 4096 });
  });

  test('an untouched log starts at its genesis record', () => {
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true, firstSeq: 1 });
  });

  test('removing the head of the oldest file', () => {
    const oldest = auditLogFiles(path)[0]!;
    writeFileSync(oldest, `${linesOf(oldest).slice(3).join('\n')}\n`);
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: false, file: oldest, line: 1, reason: expect.stringContaining('not the genesis record') });
  });

  test('deleting the oldest rotated files', () => {
    const files = auditLogFiles(path);
    unlinkSync(files[0]!);
    unlinkSync(files[1]!);
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: false, file: files[2], reason: expect.stringContaining('no retention record accounts') });
  });

  test('emptying a file', () => {
    const files = auditLogFiles(path);
    writeFileSync(files[3]!, '');
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: false, file: files[3], reason: expect.stringContaining('empty') });
  });

  test('the current file absent while the rotated ones are complete is no false alarm', () => {
    unlinkSync(path);
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true, firstSeq: 1 });
  });

  test('a start with the current file missing continues from the newest rotated file, saying so', async () => {
    const before = auditLogFiles(path);
    const lastSeq = Number(/\.(\d{12})$/.exec(before[before.length - 2]!)![1]);
    unlinkSync(path);
    // Everything after the newest rotated file is gone: the resumed chain links to it, and says why.
    const events = await writeOps(path, 1000, 2, { maxBytes: 4096 });
    expect(events).toEqual([expect.objectContaining({ type: 'resumed' })]);
    expect(JSON.parse(linesOf(path)[0]!)).toMatchObject({ seq: lastSeq + 1, type: 'rotate', note: expect.stringContaining('was missing at start') });
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true });
  });
});

describe('the daemon notices its file removed or replaced while it runs', () => {
  test('removed: a new file continues the chain, the event is reported, and verify names the lost records', async () => {
    const dir = freshDir();
    const path = join(dir, 'audit.log');
    const events: AuditEvent[] = [];
    const log = await AuditLog.open({ path, maxBytes: 1 << 20, flushIntervalMs: 50, onEvent: (e) => events.push(e) });
    await Promise.all([1, 2, 3].map((n) => log.append(op(n))));
    unlinkSync(path);
    await until(() => events.some((e) => e.type === 'reopened'), 5000, 'the removal was not noticed by the periodic check');
    await log.append(op(4));
    await log.close();
    const first = JSON.parse(linesOf(path)[0]!);
    expect(first).toMatchObject({ seq: 5, type: 'reopen', reason: 'audit.log was removed while the daemon ran' });
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: false, file: path, line: 1, reason: expect.stringContaining('not the genesis record') });
  });

  test('replaced: the foreign file is set aside and never written to', async () => {
    const dir = freshDir();
    const path = join(dir, 'audit.log');
    const events: AuditEvent[] = [];
    const log = await AuditLog.open({ path, maxBytes: 1 << 20, flushIntervalMs: 60_000, onEvent: (e) => events.push(e) });
    await log.append(op(1));
    renameSync(path, join(dir, 'elsewhere'));
    writeFileSync(path, 'planted\n');
    await log.append(op(2)); // checked before the batch
    await log.close();
    expect(events.find((e) => e.type === 'reopened')).toMatchObject({ reason: expect.stringContaining('replaced by another file') });
    const foreign = readdirSync(dir).find((f) => f.startsWith('audit.log.foreign-'))!;
    expect(readFileSync(join(dir, foreign), 'utf8')).toBe('planted\n');
    expect(linesOf(path).map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ seq: 3, type: 'reopen' }), expect.objectContaining({ seq: 4, op: 2 })]);
  });
});

describe('signed checkpoints and anchors', () => {
  const pair = generateKeyPairSync('ed25519');
  const signer = loadAuditSigner(pair.privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const publicKey = pair.publicKey;
  let path: string;
  let events: AuditEvent[];
  beforeEach(async () => {
    path = join(freshDir(), 'audit.log');
    events = await writeOps(path, 1, 100, { signer, checkpointEveryRecords: 10, maxBytes: 4096 });
  });

  test('checkpoints are written, reported for the log shipper, and verify with the public key', () => {
    const result = verifyAuditFiles(auditLogFiles(path), { publicKey });
    expect(result).toMatchObject({ ok: true });
    expect(result.ok && result.checkpoints).toBeGreaterThanOrEqual(10);
    expect(result.ok && result.signaturesChecked).toBe(result.ok && result.checkpoints);
    expect(events.filter((e) => e.type === 'checkpoint').length).toBe(result.ok && result.checkpoints);
    // The last record written at close is a checkpoint.
    expect(JSON.parse(linesOf(path).pop()!)).toMatchObject({ type: 'checkpoint', key_id: signer.keyId });
  });

  test('a forged or altered checkpoint, or another key, fails', () => {
    const other = generateKeyPairSync('ed25519').publicKey;
    expect(verifyAuditFiles(auditLogFiles(path), { publicKey: other })).toMatchObject({ ok: false, reason: expect.stringContaining('does not verify') });
    const lines = linesOf(path);
    const last = lines.length - 1;
    lines[last] = lines[last]!.replace(/"time":"[^"]+"/, '"time":"2020-01-01T00:00:00.000Z"');
    writeFileSync(path, `${lines.join('\n')}\n`);
    expect(verifyAuditFiles(auditLogFiles(path), { publicKey })).toMatchObject({ ok: false, file: path, line: last + 1, reason: expect.stringContaining('signature does not verify') });
  });

  test('an anchor proves the log still holds the checkpoint: tail truncation and a rewritten log are caught', async () => {
    const anchor = latestCheckpoint(path)!;
    expect(verifyAuditFiles(auditLogFiles(path), { publicKey, anchor })).toMatchObject({ ok: true });
    // Cut the tail: drop the last file and the end of the one before, so the chain itself is still whole.
    const files = auditLogFiles(path);
    unlinkSync(files[files.length - 1]!);
    const kept = files.slice(0, -1);
    expect(verifyAuditFiles(kept)).toMatchObject({ ok: true });
    expect(verifyAuditFiles(kept, { publicKey, anchor })).toMatchObject({ ok: false, reason: expect.stringContaining('cut off its end') });
    // A whole new log of the same length, written by someone without the signing key.
    const forged = join(freshDir(), 'audit.log');
    await writeOps(forged, 1, 100, { maxBytes: 4096 });
    expect(verifyAuditFiles(auditLogFiles(forged), { publicKey, anchor })).toMatchObject({ ok: false });
  });
});

describe('retention', () => {
  const pair = generateKeyPairSync('ed25519');
  const signer = loadAuditSigner(pair.privateKey.export({ format: 'pem', type: 'pkcs8' }));

  test('keep_files: the daemon deletes the oldest files itself, records it signed, and verify still holds', async () => {
    const dir = freshDir();
    const path = join(dir, 'audit.log');
    const events = await writeOps(path, 1, 400, { signer, keepFiles: 3, maxBytes: 4096 });
    await until(() => auditLogFiles(path).length <= 4, 5000, 'retention left more than 3 rotated files');
    expect(events.some((e) => e.type === 'retention')).toBe(true);
    const result = verifyAuditFiles(auditLogFiles(path), { publicKey: pair.publicKey });
    expect(result).toMatchObject({ ok: true });
    expect(result.ok && result.firstSeq).toBeGreaterThan(1);
    // Deleting one more file by hand is not retention.
    unlinkSync(auditLogFiles(path)[0]!);
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: false, reason: expect.stringContaining('no retention record accounts') });
  });

  test('max_total_bytes bounds the files together', async () => {
    const path = join(freshDir(), 'audit.log');
    await writeOps(path, 1, 400, { maxTotalBytes: 16_384, maxBytes: 4096 });
    const total = auditLogFiles(path).reduce((sum, f) => sum + readFileSync(f).length, 0);
    expect(total).toBeLessThanOrEqual(16_384 + 4096);
    expect(verifyAuditFiles(auditLogFiles(path))).toMatchObject({ ok: true });
    expect(existsSync(path)).toBe(true);
    rmSync(path);
  });
});
