import { read, sourceFiles } from './sources';

// Issue 18 item 7: tests wait for conditions (test/helpers/until.ts: a deadline and a message),
// never for a fixed time, and keep no poll loops of their own. Load comes from keepBusy
// (test/helpers/load.ts), whose loops cannot starve the timers that end a test.
const TESTS = sourceFiles('test').filter((file) => file !== 'test/helpers/until.ts' && file !== 'test/helpers/load.ts');

test('no test sleeps: no promise that only resolves after a timer', () => {
  const sleeps = TESTS.filter((file) => /new Promise[^\n]*=>\s*setTimeout\(\s*(\w+|\(\)\s*=>\s*\w+\(\))\s*,/.test(read(file)));
  expect(sleeps).toEqual([]);
});

test('no test keeps a wait helper of its own', () => {
  const helpers = TESTS.filter((file) => /function (until|waitFor|sleep|delay|poll)\b/.test(read(file)));
  expect(helpers).toEqual([]);
});

test('no test keeps a load loop of its own', () => {
  const loops = TESTS.filter((file) => /while \(!\w*(stop|done)/i.test(read(file)));
  expect(loops).toEqual([]);
});
