import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes, verify, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as pkcs11js from 'pkcs11js';
import { Pkcs11Backend, pkcs11BackendSchema } from '../../backends/pkcs11';
import { CKM_EDDSA } from '../../backends/pkcs11/key';
import { loadModule } from '../../backends/pkcs11/module';
import type { KeylessSession } from '../../src/client/session';
import { SCHEME_OF, SIGNATURE_ALGORITHMS, keyTypeOf } from '../../src/crypto/algorithms';
import { hashMessage } from '../../src/crypto/hashes';
import { describePublicKey } from '../../src/crypto/keyid';
import { ConfigError } from '../../src/errors';
import { createLogger } from '../../src/log';
import { startDaemon, type RunningDaemon } from '../helpers/daemon';
import { verifies } from '../helpers/verify';

// One token for the whole file: the PKCS#11 module is process-global and reads SOFTHSM2_CONF once.
const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const PIN = '246810';
const tokenDir = process.env.KEYLESS_TEST_TOKEN_DIR!; // see jest.config.js
const pinFile = join(tokenDir, 'user.pin');
writeFileSync(pinFile, `${PIN}\n`);

const KEYS: Record<string, KeyObject> = {
  rsa2048: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  rsa3072: generateKeyPairSync('rsa', { modulusLength: 3072 }).privateKey,
  p256: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  p384: generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey,
};
const imports = Object.entries(KEYS).map(([name, key], i) => {
  const file = join(tokenDir, `${name}.pem`);
  writeFileSync(file, key.export({ format: 'pem', type: 'pkcs8' }));
  return ['--import', `${file}:${name}:0${i + 1}`];
});
const tokenScript = join(__dirname, '..', '..', 'scripts', 'softhsm-token.sh');
execFileSync(tokenScript, ['--dir', tokenDir, '--label', 'keyless-test', '--pin', PIN, ...imports.flat()]);
// A second token nobody logs in to: a login to keyless-test would make any PIN "work" there.
execFileSync(tokenScript, ['--dir', tokenDir, '--label', 'pin-test', '--pin', PIN, '--generate', 'ec:P-256:k:01']);
const uri = (extra = '') => `pkcs11:token=keyless-test${extra}?module-path=${MODULE}&pin-source=file:${pinFile}`;

const slot = () => loadModule(MODULE).C_GetSlotList(true).find((s) => loadModule(MODULE).C_GetTokenInfo(s).label.trim() === 'keyless-test')!;
const hasEdDsa = () => loadModule(MODULE).C_GetMechanismList(slot()).includes(CKM_EDDSA);

let server: RunningDaemon;
let session: KeylessSession;

beforeAll(async () => {
  server = await startDaemon({ backends: [{ type: 'pkcs11', name: 'hsm', uri: uri(), pool_size: 4 }], keys: { rsa2048: { decrypt: true } } });
  session = await server.connect();
});
afterAll(async () => {
  await session.close();
  await server.stop();
});

const cases = Object.keys(KEYS).flatMap((name) => {
  const type = describePublicKey(createPublicKey(KEYS[name]!).export({ format: 'der', type: 'spki' })).type;
  return SIGNATURE_ALGORITHMS.filter((a) => keyTypeOf(SCHEME_OF[a]) === type).flatMap((a) => (['digest', 'message'] as const).map((form) => [name, a, form] as const));
});

test.each(cases)('token key %s signs %s over a %s and crypto.verify accepts it', async (name, algorithm, form) => {
  const message = randomBytes(80);
  const scheme = SCHEME_OF[algorithm];
  const input = form === 'message' ? { message } : { digest: hashMessage(scheme.kind === 'ed25519' ? 'sha256' : scheme.hash, message) };
  const signature = await session.sign({ name }, algorithm, input);
  expect(verifies(algorithm, KEYS[name]!, message, signature)).toBe(true);
  expect(verifies(algorithm, KEYS[name]!, randomBytes(80), signature)).toBe(false);
});

test('the same key has the same SKI and SPKI hash on the token as in a file', async () => {
  for (const [name, key] of Object.entries(KEYS)) {
    const info = await session.getKey({ name });
    const fromFile = describePublicKey(createPublicKey(key).export({ format: 'der', type: 'spki' }));
    expect(Buffer.from(info.ski!)).toEqual(fromFile.ski);
    expect(Buffer.from(info.spkiSha256!)).toEqual(fromFile.spkiSha256);
    expect(info.backend).toBe('hsm');
  }
});

test('raw decryption round-trips through the token; OAEP-SHA256, which SoftHSM 2.6 lacks, is UNSUPPORTED', async () => {
  const secret = randomBytes(48);
  const publicKey = createPublicKey(KEYS.rsa2048!);
  const oaep = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
  await expect(session.decrypt({ name: 'rsa2048' }, 'rsa-oaep-sha256', oaep)).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  const block = await session.decrypt({ name: 'rsa2048' }, 'rsa-raw', publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_PADDING }, secret));
  expect(block).toHaveLength(256);
  expect(block.subarray(256 - 48)).toEqual(secret);
});

test('Ed25519 on the token, where SoftHSM offers CKM_EDDSA', async () => {
  if (!hasEdDsa()) {
    console.log('SoftHSM here does not offer CKM_EDDSA: Ed25519 on the token is not tested');
    return;
  }
  execFileSync('pkcs11-tool', ['--module', MODULE, '--token-label', 'keyless-test', '--login', '--pin', PIN, '--keypairgen', '--key-type', 'EC:edwards25519', '--label', 'ed25519', '--id', '09'], { stdio: 'ignore' });
  const backend = new Pkcs11Backend(pkcs11BackendSchema.parse({ type: 'pkcs11', name: 'ed', uri: uri(';object=ed25519') }), createLogger('silent'));
  const { keys } = await backend.open();
  expect(keys.map((k) => k.publicKey.type)).toEqual(['ed25519']);
  const message = Buffer.from('edwards');
  const signature = await keys[0]!.sign({ kind: 'ed25519' }, message);
  expect(verify(null, message, createPublicKey({ key: keys[0]!.publicKey.spki, format: 'der', type: 'spki' }), signature)).toBe(true);
  await backend.close();
});

test('8 sessions x 500 requests in flight at once all verify', async () => {
  const sessions = await Promise.all(Array.from({ length: 8 }, () => server.connect()));
  const message = Buffer.from('concurrency');
  const publicKey = createPublicKey(KEYS.p256!);
  const signatures = await Promise.all(sessions.flatMap((s) => Array.from({ length: 500 }, () => s.sign({ name: 'p256' }, 'ECDSA_SHA256', { message }))));
  expect(signatures.every((sig) => verify('sha256', message, publicKey, sig))).toBe(true);
  await Promise.all(sessions.map((s) => s.close()));
});

test('sessions invalidated under load: some requests get BACKEND_UNAVAILABLE, then signing works again without a restart', async () => {
  const message = Buffer.from('fault');
  let stop = false;
  const outcomes: string[] = [];
  const load = Array.from({ length: 16 }, async () => {
    while (!stop) outcomes.push(await session.sign({ name: 'p256' }, 'ECDSA_SHA256', { message }).then(() => 'ok', (e) => e.code));
  });
  while (outcomes.length < 200) await new Promise((r) => setTimeout(r, 5));
  loadModule(MODULE).C_CloseAllSessions(slot()); // what a token reset or an HSM failover does to an application
  while (!outcomes.includes('BACKEND_UNAVAILABLE')) await new Promise((r) => setTimeout(r, 5));
  const failures = outcomes.length;
  while (outcomes.slice(failures).filter((o) => o === 'ok').length < 200) await new Promise((r) => setTimeout(r, 10));
  stop = true;
  await Promise.all(load);
  expect(new Set(outcomes)).toEqual(new Set(['ok', 'BACKEND_UNAVAILABLE']));
  const signature = await session.sign({ name: 'p256' }, 'ECDSA_SHA256', { message });
  expect(verify('sha256', message, createPublicKey(KEYS.p256!), signature)).toBe(true);
});

describe('clear errors at start', () => {
  const open = (config: Record<string, unknown>) => new Pkcs11Backend(pkcs11BackendSchema.parse({ type: 'pkcs11', name: 'hsm', ...config }), createLogger('silent')).open();

  test('a wrong PIN names the token and never the PIN', async () => {
    const wrong = join(tokenDir, 'wrong.pin');
    writeFileSync(wrong, '999999\n');
    const failure = await open({ uri: `pkcs11:token=pin-test?module-path=${MODULE}&pin-source=file:${wrong}` }).catch((e) => e);
    expect(failure).toEqual(new ConfigError('backends.hsm.uri', 'wrong PIN for token token=pin-test'));
    expect(failure.message).not.toContain('999999');
    // The failed login must not have logged the daemon's own sessions out.
    expect(await session.sign({ name: 'p256' }, 'ECDSA_SHA256', { message: Buffer.from('still logged in') })).toBeInstanceOf(Buffer);
  });

  test('a missing module path', async () => {
    await expect(open({ uri: 'pkcs11:token=keyless-test?module-path=/nonexistent/libpkcs11.so&pin-value=1' })).rejects.toEqual(
      new ConfigError('backends.hsm.uri', 'module-path /nonexistent/libpkcs11.so does not exist'),
    );
  });

  test('a token that does not exist, listing those present', async () => {
    await expect(open({ uri: `pkcs11:token=no-such-token?module-path=${MODULE}&pin-value=1` })).rejects.toEqual(
      new ConfigError('backends.hsm.uri', 'no token matches token=no-such-token (tokens present: "keyless-test", "pin-test")'),
    );
  });

  test('a URI naming a key that is not there', async () => {
    const { keys, skipped } = await open({ uri: uri(';object=absent') });
    expect(keys).toEqual([]);
    expect(skipped[0]!.reason).toBe('no private key on the token matches the URI');
  });

  test('a pin-value in the config never reaches an error message', async () => {
    const failure = await open({ uri: `pkcs11:token=pin-test?module-path=${MODULE}&pin-value=000000` }).catch((e) => e);
    expect(failure).toBeInstanceOf(ConfigError);
    expect(failure.message).not.toContain('000000');
  });
});

test('a mechanism the token lacks is UNSUPPORTED, not CRYPTO_FAILURE', async () => {
  const backend = (server.daemon as unknown as { keys: { backends: Array<{ mechanisms: Set<number> }> } }).keys.backends[0]!;
  backend.mechanisms.delete(pkcs11js.CKM_RSA_PKCS_PSS);
  await expect(session.sign({ name: 'rsa2048' }, 'RSA_PSS_SHA256', { message: Buffer.from('x') })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  backend.mechanisms.add(pkcs11js.CKM_RSA_PKCS_PSS);
});
