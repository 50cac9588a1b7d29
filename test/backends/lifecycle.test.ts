import { BackendLifecycle, type LifecycleHooks } from '../../backends/lifecycle';
import { PendingRequests } from '../../backends/pending';
import { until } from '../helpers/until';

function recording(attempts: Array<() => Promise<void>>) {
  const events: string[] = [];
  const hooks: LifecycleHooks = {
    recover: () => attempts.shift()!(),
    down: (reason, retryMs) => void events.push(`down ${reason} ${retryMs}`),
    stillDown: (err, retryMs) => void events.push(`still ${(err as Error).message} ${retryMs}`),
    recovered: () => void events.push('recovered'),
  };
  return { events, hooks };
}

test('ready → degraded → recovering → degraded → ready, with doubling backoff restarted by the recovery', async () => {
  const { events, hooks } = recording([() => Promise.reject(new Error('no token')), () => Promise.resolve()]);
  const life = new BackendLifecycle(hooks, { firstBackoffMs: 1 });
  expect([life.state, life.healthy]).toEqual(['starting', false]);
  life.opened();
  expect([life.state, life.healthy]).toEqual(['ready', true]);
  expect(life.fail('lost')).toBe(true);
  expect(life.fail('again')).toBe(false); // already down: one recovery only
  expect(life.state).toBe('degraded');
  await until(() => life.healthy, 10_000, 'the second attempt to succeed');
  expect(events).toEqual(['down lost 1', 'still no token 2', 'recovered']);
  life.fail('lost twice');
  expect(events.at(-1)).toBe('down lost twice 1');
  life.close();
  expect([life.state, life.fail('after close')]).toEqual(['closed', false]);
});

test('close() during an attempt: the attempt\'s outcome is ignored and nothing more is scheduled', async () => {
  let finish!: () => void;
  const { events, hooks } = recording([() => new Promise<void>((resolve) => (finish = resolve))]);
  const life = new BackendLifecycle(hooks, { firstBackoffMs: 1 });
  life.opened();
  life.fail('lost');
  await until(() => life.state === 'recovering', 10_000, 'the attempt to start');
  life.close();
  finish();
  await life.idle();
  await new Promise((resolve) => setImmediate(resolve));
  expect([life.state, events]).toEqual(['closed', ['down lost 1']]);
});

test('idle() resolves once the last tracked call returns', async () => {
  const life = new BackendLifecycle(recording([]).hooks);
  let release!: () => void;
  const call = life.track(() => new Promise<void>((resolve) => (release = resolve)));
  let idle = false;
  const waiting = life.idle().then(() => (idle = true));
  await new Promise((resolve) => setImmediate(resolve));
  expect([life.busy, idle]).toEqual([true, false]);
  release();
  await Promise.all([call, waiting]);
  expect([life.busy, idle]).toEqual([false, true]);
});

test('pending requests: answered by id or oldest first, deadline, a failing send, and all rejected at once', async () => {
  const pending = new PendingRequests<string>(3);
  const sent: number[] = [];
  const a = pending.add((id) => sent.push(id));
  const b = pending.add((id) => sent.push(id));
  const c = pending.add((id) => sent.push(id));
  expect(pending.resolve(2, 'two')).toBe(true);
  expect(pending.resolve(2, 'late')).toBe(false);
  const d = pending.add((id) => sent.push(id)); // ids wrap after maxId, passing over 1, still waiting
  expect(sent).toEqual([1, 2, 3, 2]);
  expect(pending.resolveOldest('first')).toBe(true);
  await expect(Promise.all([a, b])).resolves.toEqual(['first', 'two']);
  await expect(pending.add(() => {}, { ms: 1, error: () => new Error('deadline') })).rejects.toThrow('deadline');
  await expect(pending.add(() => { throw new Error('cannot send'); })).rejects.toThrow('cannot send');
  pending.rejectAll(new Error('gone'));
  await expect(c).rejects.toThrow('gone');
  await expect(d).rejects.toThrow('gone');
  expect(pending.size).toBe(0);
});
