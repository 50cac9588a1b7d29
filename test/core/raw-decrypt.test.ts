import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes } from 'node:crypto';
import type { KeylessSession } from '../../src/client/session';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { auditRecords } from '../helpers/audit';

/**
 * Raw RSA decryption returns m^d for any m: a client allowed it can sign anything with the
 * key. So it is its own policy operation, off unless granted per key.
 */
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
let server: RunningDaemon;
let session: KeylessSession;

beforeAll(async () => {
  const another = () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  server = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'oaep-only', key: rsa }, { name: 'raw-no-policy-grant', key: another() }, { name: 'raw-granted', key: another() }]) }],
    groups: { edges: { subject_cn: ['test edge'] } },
    keys: {
      'oaep-only': { decrypt: true },
      'raw-no-policy-grant': { decrypt: true, decrypt_raw: true, policy: { groups: ['edges'], operations: ['sign', 'decrypt'] } },
      'raw-granted': { decrypt_raw: true, policy: { groups: ['edges'], operations: ['decrypt_raw'] } },
    },
  });
  session = await server.connect();
});
afterAll(async () => {
  await session.close();
  await server.stop();
});

function auditTail(count: number): Array<Record<string, unknown>> {
  return auditRecords(server.pki.dir).slice(-count);
}

test('decrypt: true allows OAEP but not RSA_RAW, which would sign anything', async () => {
  const secret = randomBytes(32);
  const oaep = publicEncrypt({ key: createPublicKey(rsa), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
  expect((await session.decrypt({ name: 'oaep-only' }, 'rsa-oaep-sha256', oaep)).equals(secret)).toBe(true);
  // A PKCS#1 v1.5 signature block, "decrypted" raw, would be a valid signature: refused.
  await expect(session.decrypt({ name: 'oaep-only' }, 'rsa-raw', Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(254, 0xff)]))).rejects.toMatchObject({
    code: 'FORBIDDEN',
    message: expect.stringContaining('decrypt_raw'),
  });
  expect(auditTail(1)[0]).toMatchObject({ operation: 'decrypt_raw', algorithm: 'rsa-raw', result: 'FORBIDDEN', key: { name: 'oaep-only' } });
});

test('under a policy, decrypt_raw must be granted as an operation; the key flag alone is not enough', async () => {
  await expect(session.decrypt({ name: 'raw-no-policy-grant' }, 'rsa-raw', randomBytes(255))).rejects.toMatchObject({ code: 'FORBIDDEN' });
  const block = Buffer.concat([Buffer.from([0]), randomBytes(255)]);
  const plain = await session.decrypt({ name: 'raw-granted' }, 'rsa-raw', block);
  expect(plain.length).toBe(256);
  expect(auditTail(2)).toEqual([
    expect.objectContaining({ operation: 'decrypt_raw', result: 'FORBIDDEN', key: expect.objectContaining({ name: 'raw-no-policy-grant' }) }),
    expect.objectContaining({ operation: 'decrypt_raw', result: 'ok', key: expect.objectContaining({ name: 'raw-granted' }) }),
  ]);
});

test('list_keys says which keys allow raw decryption', async () => {
  const keys = await session.listKeys();
  const byName = new Map(keys.map((k) => [k.name, k]));
  expect(byName.get('oaep-only')).toMatchObject({ decryptAllowed: true });
  expect(byName.get('oaep-only')!.rawDecryptAllowed).toBeFalsy();
  expect(byName.get('raw-granted')).toMatchObject({ rawDecryptAllowed: true });
});

test('a client_ip of the wrong length in a keyless.v1 context is BAD_REQUEST, as on the compat port', async () => {
  const response = await session.request({ ping: { payload: Buffer.from('x') }, context: { clientIp: Buffer.from([1, 2, 3]) } });
  expect(response.result).toBe('error');
  expect(response.error).toMatchObject({ message: expect.stringContaining('context.client_ip must be 4 (IPv4) or 16 (IPv6) bytes, got 3') });
});
