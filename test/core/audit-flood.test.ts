import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { verifyAuditFiles } from '../../src/audit/verify';
import { startDaemon, writeKeyDir } from '../helpers/daemon';

/**
 * A hostile but authenticated edge sends requests that are refused, each carrying the
 * largest SNI and request id a frame allows, full of control characters. The audit log
 * must stay bounded: one full record per client and result per second plus a summary.
 */
test('a flood of refused requests with huge, hostile fields costs bounded audit bytes, and every refusal is accounted for', async () => {
  const server = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'locked', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }]) }],
    groups: { nobody: { subject_cn: ['somebody else'] } },
    keys: { locked: { policy: { groups: ['nobody'] } } },
  });
  const audit = join(server.pki.dir, 'audit.log');
  const before = statSync(audit).size;
  const sessions = await Promise.all([server.connect(), server.connect()]);
  const hostile = `evil\n{"seq":1}\u001b[2J\u202e${'x'.repeat(10_000)}`;
  const started = Date.now();
  let refused = 0;
  const total = 1000;
  for (let sent = 0; sent < total; sent += 200) {
    await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        sessions[i % 2]!.request({ sign: { key: { name: i % 3 === 0 ? 'locked' : hostile }, algorithm: 9, digest: Buffer.alloc(32) }, context: { sni: hostile, requestId: hostile } }).then((r) => {
          if (r.result === 'error') refused += 1;
        }),
      ),
    );
  }
  const seconds = (Date.now() - started) / 1000;
  await Promise.all(sessions.map((s) => s.close()));
  await server.stop();
  expect(refused).toBe(total);

  const lines = readFileSync(audit, 'utf8').trim().split('\n');
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const full = records.filter((r) => r.type === undefined && (r.result === 'FORBIDDEN' || r.result === 'KEY_NOT_FOUND'));
  const summaries = records.filter((r) => r.type === 'refusals');
  // Every refusal is either a full record or counted in a summary.
  expect(full.length + summaries.reduce((n, r) => n + (r.count as number), 0)).toBe(total);
  // One full record per result per started second, at most.
  expect(full.length).toBeLessThanOrEqual(2 * (Math.ceil(seconds) + 1));
  // Each record is bounded, and hostile characters are visible escapes, not raw control bytes.
  for (const line of lines) expect(line.length).toBeLessThan(2048);
  const withContext = full.find((r) => r.context !== undefined)!;
  expect((withContext.context as { sni: string }).sni).toMatch(/^evil\\u\{a\}\{"seq":1\}\\u\{1b\}\[2J\\u\{202e\}x+…\(\+\d+ chars\)$/);
  const bytes = statSync(audit).size - before;
  expect(bytes).toBeLessThan(8192 * (Math.ceil(seconds) + 1));
  expect(verifyAuditFiles([audit])).toMatchObject({ ok: true });
});
