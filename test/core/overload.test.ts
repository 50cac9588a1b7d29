import { createHash, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { FairScheduler } from '../../src/core/fair-scheduler';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';

// Issue 17: at twice the load a backend sustains, requests used to queue without bound in
// front of it, so every answer came later and later and then as TIMEOUT. Work beyond a
// bounded queue is now refused with OVERLOADED at once; the rest is served.

describe('FairScheduler queue bound', () => {
  test('beyond the bound calls are refused OVERLOADED at once; a session below its share still gets in', async () => {
    const scheduler = new FairScheduler(() => 1, () => 4);
    const backend = {};
    const [flood, quiet] = [{}, {}];
    const release: Array<() => void> = [];
    const started: string[] = [];
    const submit = (session: object, name: string) =>
      scheduler.run(backend, session, 60_000, {
        describe: () => name,
        start: () => {
          started.push(name);
          return new Promise<string>((resolve) => release.push(() => resolve(name)));
        },
      });
    const outcomes: Record<string, string> = {};
    const calls = Array.from({ length: 11 }, (_, i) => {
      const name = `flood${i}`;
      return submit(flood, name).then(
        () => (outcomes[name] = 'ok'),
        (err: { code?: string }) => (outcomes[name] = err.code ?? 'error'),
      );
    });
    // One runs, four wait, six are refused without the backend doing anything.
    await until(() => Object.keys(outcomes).length === 6, 10_000, 'the refusals');
    expect(Object.values(outcomes)).toEqual(Array(6).fill('OVERLOADED'));
    expect(started).toEqual(['flood0']);
    expect(scheduler.queued(backend)).toBe(4);
    // The queue is full, but the quiet session has nothing waiting: its share is 4 / 2.
    const quietCall = submit(quiet, 'quiet');
    expect(scheduler.queued(backend)).toBe(5);
    while (release.length > 0 || started.length < 6) {
      await until(() => release.length > 0, 10_000, 'a call to release');
      release.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    await expect(quietCall).resolves.toBe('quiet');
    await Promise.all(calls);
    expect(Object.values(outcomes).filter((o) => o === 'ok')).toHaveLength(5);
    // Round-robin still holds: the quiet call went second, not behind the flood's queue.
    expect(started.slice(0, 3)).toEqual(['flood0', 'flood1', 'quiet']);
  });
});

describe('a daemon offered more than its backend sustains', () => {
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  let server: RunningDaemon;
  beforeAll(async () => {
    server = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'rsa', key }]) }], limits: { max_inflight_per_session: 10_000, max_queued_per_backend: 8 } });
  });
  afterAll(() => server.stop());

  test('answers the excess OVERLOADED at once and the rest with signatures that verify', async () => {
    const session = await server.connect();
    const digest = createHash('sha256').update('overload').digest();
    const order: string[] = [];
    const signatures: Buffer[] = [];
    const requests = 400;
    await Promise.all(
      Array.from({ length: requests }, () =>
        session.sign({ name: 'rsa' }, 'RSA_PKCS1_SHA256', { digest }).then(
          (signature) => {
            signatures.push(signature);
            order.push('ok');
          },
          (err: { code?: string }) => order.push(err.code ?? String(err)),
        ),
      ),
    );
    expect(order).toHaveLength(requests);
    // Only two outcomes: served, or refused; nothing waited until its deadline (TIMEOUT).
    expect(order.filter((o) => o !== 'ok' && o !== 'OVERLOADED')).toEqual([]);
    const overloaded = order.filter((o) => o === 'OVERLOADED').length;
    expect(overloaded).toBeGreaterThan(0);
    expect(signatures.length).toBeGreaterThanOrEqual(8);
    // Refusals did not wait for the backlog: the first came before the last signature.
    expect(order.indexOf('OVERLOADED')).toBeLessThan(order.lastIndexOf('ok'));
    const publicKey = createPublicKey(key);
    for (const signature of signatures) expect(verify('sha256', Buffer.from('overload'), publicKey, signature)).toBe(true);
    // The server is fine afterwards: a request alone is served.
    await expect(session.sign({ name: 'rsa' }, 'RSA_PKCS1_SHA256', { digest })).resolves.toBeInstanceOf(Buffer);
    await session.close();
  });
});
