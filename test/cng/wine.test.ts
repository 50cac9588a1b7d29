/**
 * Tier 2: the real keyless-cng-shim.exe under Wine. Runs when wine and the built shim are
 * present (CI runs scripts/build-cng-shim.sh first); otherwise it says it was skipped.
 *
 * What Wine 8 can do decides the set-up (docs/cng.md): its software KSP cannot open
 * persisted keys, so keys are imported with the shim's test-only import; it cannot
 * import EC keys, so the shim falls back to BCrypt for those. After one PSS signature
 * on an RSA handle Wine fails PKCS#1 signatures on that handle, so the RSA key is
 * imported twice, as "rsa" for PKCS#1 and "rsa-pss" for PSS. Wine's NCrypt refuses
 * PKCS#1 without a hash OID (MD5-SHA1, pszAlgId NULL) with NTE_INVALID_PARAMETER, so
 * RSA_PKCS1_MD5_SHA1 is left to the fake-shim tier and to a Windows run.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { CngBackend, cngBackendSchema, defaultShimPath } from '../../backends/cng';
import { CngHash, CngOperation, CngPadding, CngStatus, decodeResponse, encodeRequest, FrameReader, type CngRequest, type CngResponse } from '../../backends/cng/codec';
import type { ShimRequest } from '../../backends/cng/shim-process';
import { SCHEME_OF, type SignatureAlgorithm } from '../../src/core/crypto/algorithms';
import { rawEcdsaToDer } from '../../src/core/crypto/ecdsa';
import { hashMessage } from '../../src/core/crypto/hashes';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { BackendUnavailableError } from '../../src/errors';
import type { KeyHandle } from '../../src/core/keys/types';
import { createLogger } from '../../src/log';
import { verifies } from '../helpers/verify';
import { privateBlob } from './blobs';
import { childPids } from './processes';
import { startWine, wineMissing } from './wine';
import { until } from '../helpers/until';

const missing = wineMissing();
if (missing) console.warn(`test/cng/wine.test.ts SKIPPED: ${missing}. The real CNG shim was not tested.`);
const describeWine = missing ? describe.skip : describe;

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const IMPORTS: ReadonlyArray<[string, KeyObject]> = [
  ['rsa', rsa],
  ['rsa-pss', rsa],
  ['ec', ec],
];
const NONE = { machine: false, padding: CngPadding.none, hash: CngHash.none, payload: Buffer.alloc(0) };
const importRequest = (keyName: string, key: KeyObject): ShimRequest => ({ ...NONE, operation: CngOperation.import, keyName, payload: privateBlob(key) });

/** The shim driven byte by byte, to send what the backend never would. */
class RawShim {
  readonly exit: Promise<number | null>;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly reader = new FrameReader();
  private readonly waiting = new Map<number, (response: CngResponse) => void>();
  private nextId = 1;

  constructor(...args: string[]) {
    this.child = spawn('wine', [defaultShimPath(), ...args], { env: process.env });
    this.child.stdin.on('error', () => undefined);
    this.child.stdout.on('data', (chunk: Buffer) => {
      for (const body of this.reader.push(chunk)) {
        const response = decodeResponse(body);
        this.waiting.get(response.id)?.(response);
      }
    });
    this.exit = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  /** Sends a frame (well-formed or not) and resolves with the answer carrying `id`. */
  send(frame: Buffer, id: number): Promise<CngResponse> {
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin.write(frame);
    });
  }

  request(request: Omit<CngRequest, 'id'>): Promise<CngResponse> {
    const id = this.nextId++;
    return this.send(encodeRequest({ ...request, id }), id);
  }

  write(bytes: Buffer): void {
    this.child.stdin.write(bytes);
  }

  end(): void {
    this.child.stdin.end();
  }
}

describeWine('keyless-cng-shim.exe under Wine', () => {
  let stopWine: () => void;
  beforeAll(() => {
    stopWine = startWine();
  }, 200_000);
  afterAll(() => stopWine?.());

  describe('frames sent straight to the shim', () => {
    let shim: RawShim;
    beforeAll(async () => {
      shim = new RawShim('--allow-test-import');
      for (const [name, key] of IMPORTS) expect(await shim.request(importRequest(name, key))).toMatchObject({ status: CngStatus.ok });
    }, 60_000);
    afterAll(async () => {
      shim.end();
      expect(await shim.exit).toBe(0);
    });

    test('a wrong digest length is BAD_INPUT', async () => {
      const response = await shim.request({ ...NONE, operation: CngOperation.sign, keyName: 'rsa', padding: CngPadding.pkcs1, hash: CngHash.sha256, payload: Buffer.alloc(31) });
      expect(response).toMatchObject({ status: CngStatus.badInput, code: 0 });
    });

    test('an unknown operation is BAD_OPERATION', async () => {
      expect(await shim.request({ ...NONE, operation: 9, keyName: 'rsa' })).toMatchObject({ status: CngStatus.badOperation });
    });

    test('a frame too short for its key name is BAD_FRAME, and the stream goes on', async () => {
      const frame = encodeRequest({ ...NONE, id: 500, operation: CngOperation.sign, keyName: 'rsa' });
      frame.writeUInt16LE(300, 9);
      expect(await shim.send(frame, 500)).toMatchObject({ id: 500, status: CngStatus.badFrame });
      expect(await shim.request({ ...NONE, operation: CngOperation.ping, keyName: '' })).toMatchObject({ status: CngStatus.ok });
    });

    test('importing a name twice is BAD_INPUT', async () => {
      expect(await shim.request(importRequest('rsa', rsa))).toMatchObject({ status: CngStatus.badInput });
    });

    test('an unknown key fails to open; Wine answers NTE_NOT_SUPPORTED for every named key', async () => {
      // On Windows this is KEY_NOT_FOUND with NTE_BAD_KEYSET (docs/cng.md: to check there).
      const response = await shim.request({ ...NONE, operation: CngOperation.publicKey, keyName: 'no-such-key' });
      expect(response).toMatchObject({ status: CngStatus.unsupported, code: 0x80090029, message: 'NCryptOpenKey failed' });
    });

    test('signatures come back in any order, each for its own request', async () => {
      const digests = Array.from({ length: 24 }, (_, i) => hashMessage('sha256', Buffer.from(`message ${i}`)));
      const responses = await Promise.all(
        digests.map((payload, i) => shim.request({ ...NONE, operation: CngOperation.sign, keyName: i % 2 ? 'ec' : 'rsa', padding: i % 2 ? CngPadding.none : CngPadding.pkcs1, hash: CngHash.sha256, payload })),
      );
      responses.forEach((response, i) => {
        expect('data' in response).toBe(true);
        const algorithm = i % 2 ? 'ECDSA_SHA256' : 'RSA_PKCS1_SHA256';
        const signature = 'data' in response ? response.data : Buffer.alloc(0);
        expect(verifies(algorithm, i % 2 ? ec : rsa, Buffer.from(`message ${i}`), i % 2 ? rawEcdsaToDer(signature) : signature)).toBe(true);
      });
    });
  });

  test('without --allow-test-import the import operation is refused', async () => {
    const shim = new RawShim();
    expect(await shim.request(importRequest('rsa', rsa))).toMatchObject({ status: CngStatus.unsupported });
    shim.end();
    expect(await shim.exit).toBe(0);
  }, 60_000);

  test('a frame length outside the protocol ends the shim with exit code 3', async () => {
    const shim = new RawShim();
    shim.write(Buffer.from([2, 0, 0, 0, 0, 0]));
    expect(await shim.exit).toBe(3);
  }, 60_000);

  describe('through the backend', () => {
    let backend: CngBackend;
    let keys: Map<string, KeyHandle>;
    beforeAll(async () => {
      backend = new CngBackend(
        cngBackendSchema.parse({ type: 'cng', name: 'wine', wine: true, timeout_ms: 20_000, keys: [...IMPORTS.map(([name]) => ({ key_name: name })), { key_name: 'absent' }] }),
        createLogger('silent'),
        { shimArgs: ['--allow-test-import'], prepare: async (call) => void (await Promise.all(IMPORTS.map(([name, key]) => call(importRequest(name, key))))) },
      );
      const { keys: handles, skipped } = await backend.open();
      keys = new Map(handles.map((k) => [k.name, k]));
      expect(skipped).toEqual([{ source: 'user key "absent"', reason: expect.stringContaining('cannot open it: NCryptOpenKey failed (0x80090029)') }]);
    }, 60_000);
    afterAll(() => backend.close());

    test('keys have the same SKI as the key itself everywhere else', () => {
      const ski = (key: KeyObject) => describePublicKey(createPublicKey(key).export({ format: 'der', type: 'spki' })).ski;
      expect(keys.get('rsa')!.publicKey.ski).toEqual(ski(rsa));
      expect(keys.get('rsa-pss')!.publicKey.ski).toEqual(ski(rsa));
      expect(keys.get('ec')!.publicKey).toMatchObject({ type: 'ec', curve: 'P-256', ski: ski(ec) });
    });

    test.each<[SignatureAlgorithm, string]>([
      ['RSA_PKCS1_SHA256', 'rsa'],
      ['RSA_PKCS1_SHA384', 'rsa'],
      ['RSA_PKCS1_SHA512', 'rsa'],
      ['RSA_PKCS1_SHA1', 'rsa'],
      ['RSA_PSS_SHA256', 'rsa-pss'],
      ['RSA_PSS_SHA384', 'rsa-pss'],
      ['RSA_PSS_SHA512', 'rsa-pss'],
      ['ECDSA_SHA256', 'ec'],
    ])('%s with key %s verifies with node', async (algorithm, keyName) => {
      const scheme = SCHEME_OF[algorithm];
      const message = Buffer.from(`server key exchange for ${algorithm}`);
      const signature = await keys.get(keyName)!.sign(scheme, hashMessage(scheme.kind === 'ed25519' ? 'sha256' : scheme.hash, message));
      expect(verifies(algorithm, keyName === 'ec' ? ec : rsa, message, signature)).toBe(true);
    });

    test('the shim killed under load is restarted; what was in flight fails BACKEND_UNAVAILABLE, then service resumes', async () => {
      const message = (i: number) => Buffer.from(`load ${i}`);
      const sign = (i: number) => keys.get('rsa')!.sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, hashMessage('sha256', message(i)));
      const pids = childPids('keyless-cng-shim');
      expect(pids).toHaveLength(1);
      // A thousand RSA signatures take the shim far longer than the kill that follows at once.
      const load = Promise.allSettled(Array.from({ length: 1000 }, (_, i) => sign(i)));
      process.kill(pids[0]!, 'SIGKILL');
      const results = await load;
      const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(failures.length).toBeGreaterThan(0);
      for (const failure of failures) expect(failure.reason).toBeInstanceOf(BackendUnavailableError);
      results.forEach((r, i) => r.status === 'fulfilled' && expect(verifies('RSA_PKCS1_SHA256', rsa, message(i), r.value)).toBe(true));

      await until(() => backend.healthy(), 60_000, 'the restarted shim');
      const after = await Promise.all(Array.from({ length: 20 }, (_, i) => sign(i)));
      after.forEach((signature, i) => expect(verifies('RSA_PKCS1_SHA256', rsa, message(i), signature)).toBe(true));
      expect(childPids('keyless-cng-shim')).toHaveLength(1);
    }, 90_000);
  });
});

