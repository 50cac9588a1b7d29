/**
 * Tier 1: the cng backend against a fake shim (fake-shim.ts: same frame protocol, Node's
 * OpenSSL behind it). Always runs; the real shim under Wine is wine.test.ts.
 */
import { constants, createPublicKey, publicEncrypt, randomBytes, type KeyObject } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CngBackend, cngBackendSchema } from '../../backends/cng';
import { SCHEME_OF, type SignatureAlgorithm } from '../../src/core/crypto/algorithms';
import { hashMessage } from '../../src/core/crypto/hashes';
import { computeSki } from '../../src/core/crypto/keyid';
import { BackendUnavailableError, BadRequestError, ConfigError, TimeoutError, UnsupportedError } from '../../src/errors';
import type { KeyHandle } from '../../src/core/keys/types';
import { createLogger } from '../../src/log';
import { verifies } from '../helpers/verify';
import { prepareFakeShim, type FakeKeys } from './fake';
import { childPids } from './processes';
import { until } from '../helpers/until';

const FAKE_ENV = ['FAKE_CNG_KEY_DIR', 'FAKE_CNG_HOLD', 'FAKE_CNG_DIE_ONCE', 'FAKE_CNG_EXIT_AT_START', 'FAKE_CNG_LIVES'];

let dir: string;
let shimPath: string;
let keys: FakeKeys;
let backend: CngBackend | undefined;
let logLines: Array<Record<string, unknown>>;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keylessd-cng-fake-'));
  ({ shimPath, keys } = prepareFakeShim(dir));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeEach(() => {
  for (const name of FAKE_ENV) delete process.env[name];
  process.env.FAKE_CNG_KEY_DIR = dir;
  logLines = [];
});
afterEach(async () => {
  await backend?.close();
  backend = undefined;
});

function makeBackend(config: Record<string, unknown> = {}): CngBackend {
  const logger = createLogger('info', { write: (line: string) => void logLines.push(JSON.parse(line)) });
  backend = new CngBackend(
    cngBackendSchema.parse({ type: 'cng', name: 'win', shim_path: shimPath, keys: [{ key_name: 'rsa' }, { key_name: 'ec' }], ...config }),
    logger,
  );
  return backend;
}

async function openKeys(config: Record<string, unknown> = {}): Promise<Map<string, KeyHandle>> {
  const { keys: handles } = await makeBackend(config).open();
  return new Map(handles.map((k) => [k.name, k]));
}

const message = (i: number) => Buffer.from(`handshake transcript ${i}`);

async function signs(key: KeyHandle, algorithm: SignatureAlgorithm, publicKey: KeyObject, i = 0): Promise<boolean> {
  const scheme = SCHEME_OF[algorithm];
  const input = scheme.kind === 'ed25519' ? message(i) : hashMessage(scheme.hash, message(i));
  return verifies(algorithm, publicKey, message(i), await key.sign(scheme, input));
}

const spkiOf = (key: KeyObject) => createPublicKey(key).export({ format: 'der', type: 'spki' });
const lives = () => (existsSync(process.env.FAKE_CNG_LIVES!) ? readFileSync(process.env.FAKE_CNG_LIVES!, 'utf8').trim().split('\n').length : 0);

test('opens user and machine keys by name with the SKI of their SPKI, and skips keys the provider lacks', async () => {
  const { keys: handles, skipped } = await makeBackend({
    keys: [{ key_name: 'rsa' }, { name: 'edge-ec', key_name: 'ec' }, { key_name: 'mach', machine: true }, { key_name: 'mach' }, { key_name: 'absent' }],
  }).open();
  expect(handles.map((k) => [k.name, k.publicKey.type, k.publicKey.bits])).toEqual([
    ['rsa', 'rsa', 2048],
    ['edge-ec', 'ec', 256],
    ['mach', 'ec', 256],
  ]);
  expect(handles[0]!.publicKey.ski).toEqual(computeSki(spkiOf(keys.rsa)));
  expect(handles[1]!.publicKey.spki).toEqual(spkiOf(keys.ec));
  expect(handles[2]!.publicKey.spki).toEqual(spkiOf(keys.machine));
  expect(skipped).toEqual([
    { source: 'user key "mach"', reason: 'no such key in provider "Microsoft Software Key Storage Provider" (0x80090016)' },
    { source: 'user key "absent"', reason: 'no such key in provider "Microsoft Software Key Storage Provider" (0x80090016)' },
  ]);
  expect(backend!.healthy()).toBe(true);
});

test('signs every RSA and ECDSA scheme; node verifies each signature', async () => {
  const handles = await openKeys({ keys: [{ key_name: 'rsa' }, { key_name: 'ec' }, { key_name: 'ec384' }] });
  const rsaAlgorithms: SignatureAlgorithm[] = ['RSA_PKCS1_SHA256', 'RSA_PKCS1_SHA384', 'RSA_PKCS1_SHA512', 'RSA_PKCS1_SHA1', 'RSA_PKCS1_MD5_SHA1', 'RSA_PSS_SHA256', 'RSA_PSS_SHA384', 'RSA_PSS_SHA512'];
  for (const algorithm of rsaAlgorithms) expect([algorithm, await signs(handles.get('rsa')!, algorithm, keys.rsa)]).toEqual([algorithm, true]);
  for (const algorithm of ['ECDSA_SHA256', 'ECDSA_SHA384', 'ECDSA_SHA1'] as const) {
    expect([algorithm, await signs(handles.get('ec')!, algorithm, keys.ec)]).toEqual([algorithm, true]);
    expect([algorithm, await signs(handles.get('ec384')!, algorithm, keys.ec384)]).toEqual([algorithm, true]);
  }
});

test('decrypts raw and OAEP-SHA256', async () => {
  const rsa = (await openKeys()).get('rsa')!;
  const secret = randomBytes(48);
  const oaep = publicEncrypt({ key: keys.rsa, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
  expect(await rsa.decrypt('rsa-oaep-sha256', oaep)).toEqual(secret);
  const pkcs1 = publicEncrypt({ key: keys.rsa, padding: constants.RSA_PKCS1_PADDING }, secret);
  const block = await rsa.decrypt('rsa-raw', pkcs1);
  expect(block.length).toBe(256);
  expect(block.subarray(0, 2)).toEqual(Buffer.from([0, 2]));
  expect(block.subarray(-48)).toEqual(secret);
});

test('refuses what CNG cannot do before asking the shim, and maps the shim\'s refusals', async () => {
  const handles = await openKeys();
  const rsa = handles.get('rsa')!;
  const ec = handles.get('ec')!;
  await expect(rsa.sign({ kind: 'ed25519' }, message(0))).rejects.toBeInstanceOf(UnsupportedError);
  await expect(rsa.sign({ kind: 'rsa-pkcs1', hash: 'sha224' }, Buffer.alloc(28))).rejects.toBeInstanceOf(UnsupportedError);
  await expect(ec.sign({ kind: 'rsa-pss', hash: 'sha256' }, Buffer.alloc(32))).rejects.toBeInstanceOf(UnsupportedError);
  await expect(ec.decrypt('rsa-raw', Buffer.alloc(256))).rejects.toBeInstanceOf(UnsupportedError);
  // The digest length is the shim's to check: BAD_INPUT becomes BadRequestError.
  await expect(rsa.sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, Buffer.alloc(31))).rejects.toBeInstanceOf(BadRequestError);
  expect(backend!.healthy()).toBe(true);
});

test('matches answers that come back in reverse order to their requests', async () => {
  process.env.FAKE_CNG_HOLD = '8';
  const ec = (await openKeys()).get('ec')!;
  const order: number[] = [];
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      signs(ec, 'ECDSA_SHA256', keys.ec, i).then((ok) => {
        order.push(i);
        return ok;
      }),
    ),
  );
  expect(results).toEqual(Array(8).fill(true));
  expect(order).toEqual([7, 6, 5, 4, 3, 2, 1, 0]);
});

test('a request the shim never answers times out; the backend stays up', async () => {
  const handles = await openKeys({ timeout_ms: 300, keys: [{ key_name: 'slow' }, { key_name: 'ec' }] });
  await expect(handles.get('slow')!.sign({ kind: 'ecdsa', hash: 'sha256' }, Buffer.alloc(32))).rejects.toBeInstanceOf(TimeoutError);
  expect(backend!.healthy()).toBe(true);
  expect(await signs(handles.get('ec')!, 'ECDSA_SHA256', keys.ec)).toBe(true);
});

test.each([
  ['a frame whose length breaks the framing', 'garbage'],
  ['half a frame, then death', 'truncate'],
])('after %s, requests in flight fail BACKEND_UNAVAILABLE and a new shim takes over', async (_what, keyName) => {
  process.env.FAKE_CNG_LIVES = join(dir, `lives-${keyName}`);
  const handles = await openKeys({ keys: [{ key_name: keyName }, { key_name: 'ec' }] });
  await expect(handles.get(keyName)!.sign({ kind: 'ecdsa', hash: 'sha256' }, Buffer.alloc(32))).rejects.toBeInstanceOf(BackendUnavailableError);
  await until(() => backend!.healthy(), 30_000, 'the new shim');
  expect(lives()).toBe(2);
  expect(await signs(handles.get('ec')!, 'ECDSA_SHA256', keys.ec)).toBe(true);
});

test('the shim dying under load fails what was in flight, then service resumes with a new shim', async () => {
  process.env.FAKE_CNG_DIE_ONCE = join(dir, 'died-once');
  process.env.FAKE_CNG_LIVES = join(dir, 'lives-load');
  const ec = (await openKeys()).get('ec')!;
  const results = await Promise.allSettled(Array.from({ length: 60 }, (_, i) => signs(ec, 'ECDSA_SHA256', keys.ec, i)));
  const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  expect(failures.length).toBeGreaterThan(0);
  for (const failure of failures) expect(failure.reason).toBeInstanceOf(BackendUnavailableError);
  for (const result of results) if (result.status === 'fulfilled') expect(result.value).toBe(true);
  expect(backend!.healthy()).toBe(false);
  await expect(ec.sign({ kind: 'ecdsa', hash: 'sha256' }, Buffer.alloc(32))).rejects.toBeInstanceOf(BackendUnavailableError);

  await until(() => backend!.healthy(), 30_000, 'the new shim');
  expect(lives()).toBe(2);
  const after = await Promise.all(Array.from({ length: 20 }, (_, i) => signs(ec, 'ECDSA_SHA256', keys.ec, i)));
  expect(after).toEqual(Array(20).fill(true));
});

test('a shim that keeps dying is restarted with doubling backoff, and service resumes when it stops', async () => {
  process.env.FAKE_CNG_LIVES = join(dir, 'lives-backoff');
  const ec = (await openKeys()).get('ec')!;
  process.env.FAKE_CNG_EXIT_AT_START = '1';
  for (const pid of childPids('fake-shim')) process.kill(pid, 'SIGKILL');
  const retries = () => logLines.filter((l) => typeof l.retry_ms === 'number').map((l) => l.retry_ms);
  await until(() => retries().length >= 4, 30_000, 'four restart attempts');
  expect(retries().slice(0, 4)).toEqual([100, 200, 400, 800]);
  expect(backend!.healthy()).toBe(false);

  delete process.env.FAKE_CNG_EXIT_AT_START;
  await until(() => backend!.healthy(), 30_000, 'the shim to stay up');
  expect(await signs(ec, 'ECDSA_SHA256', keys.ec)).toBe(true);
});

test('a shim that cannot start is a ConfigError naming shim_path, with its exit code and last log line', async () => {
  process.env.FAKE_CNG_EXIT_AT_START = '2';
  const failure = makeBackend().open();
  await expect(failure).rejects.toBeInstanceOf(ConfigError);
  await expect(failure).rejects.toThrow(/^backends\.win\.shim_path: the CNG shim did not start: .*exited with code 2; its last log line: fake shim: cannot open key storage provider/);
  await expect(makeBackend({ shim_path: join(dir, 'no-such-shim.exe') }).open()).rejects.toThrow(/^backends\.win\.shim_path: .*could not be started/);
});

test('close() ends the shim and no new one is started', async () => {
  await openKeys();
  const [pid] = childPids('fake-shim');
  expect(pid).toBeDefined();
  await backend!.close();
  expect(childPids('fake-shim')).toEqual([]);
  expect(backend!.healthy()).toBe(false);
  expect(() => process.kill(pid!, 0)).toThrow();
});
