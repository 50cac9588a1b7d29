import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { ERROR_BYTE_NAMES, ErrorByte } from '../../src/protocols/compat/codec';
import { COMPAT_KEY_INDEXES, certificateDigest, certificateDigestIndex, compatKeyRef, rsaModulus } from '../../src/protocols/compat/key-index';
import { SIGN_OPCODE } from '../../src/protocols/compat/request';
import { SIGNATURE_ALGORITHMS } from '../../src/core/crypto/algorithms';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { KeyRegistry, describeKeyRef } from '../../src/core/keys/registry';
import type { Backend, KeyHandle } from '../../src/core/keys/types';

const backend = { kind: 'file', name: 'files' } as Backend;
const spkiOf = (key: KeyObject) => createPublicKey(key).export({ format: 'der', type: 'spki' });
function handle(name: string, key: KeyObject): KeyHandle {
  const refuse = () => Promise.reject(new Error('not used here'));
  return { name, backend, publicKey: describePublicKey(spkiOf(key)), sign: refuse, decrypt: refuse };
}

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const handles = [handle('rsa', rsa), handle('ec', ec)];
const options = () => ({ decryptAllowed: false, rawDecryptAllowed: false });
// Computed apart from the index: the JWK modulus, as COMPAT.md describes the digest.
const digest = certificateDigest(Buffer.from(createPublicKey(rsa).export({ format: 'jwk' }).n!, 'base64url'));

test('the compat protocol registers its certificate-digest index and the registry finds RSA keys by it', () => {
  const registry = new KeyRegistry(handles, options, COMPAT_KEY_INDEXES);
  expect(registry.find({ index: certificateDigestIndex, value: digest })?.handle.name).toBe('rsa');
  expect(registry.find({ index: certificateDigestIndex, value: Buffer.alloc(32) })).toBeUndefined();
  expect(certificateDigestIndex.valueOf(handles[1]!.publicKey)).toBeUndefined();
  expect(describeKeyRef({ index: certificateDigestIndex, value: Buffer.from('ab', 'hex') })).toBe('certificate digest ab');
});

test('a registry built without the index does not know it: the core holds no protocol index of its own', () => {
  const registry = new KeyRegistry(handles, options);
  expect(registry.find({ index: certificateDigestIndex, value: digest })).toBeUndefined();
  expect(registry.find({ name: 'rsa' })?.handle.name).toBe('rsa');
});

test('the modulus comes from the SPKI, big-endian without a leading zero', () => {
  const modulus = rsaModulus(spkiOf(rsa));
  expect(modulus.length).toBe(256);
  expect(modulus[0]! & 0x80).toBe(0x80);
});

test('a compat request names its key by SKI first, else by certificate digest', () => {
  const ski = Buffer.alloc(20, 1);
  expect(compatKeyRef({ ski, certDigest: digest })).toEqual({ ski });
  expect(compatKeyRef({ certDigest: digest })).toEqual({ index: certificateDigestIndex, value: digest });
  expect(compatKeyRef({})).toBeUndefined();
});

test('the sign opcodes keylessctl sends are those COMPAT.md gives for each algorithm', () => {
  expect(SIGN_OPCODE).toEqual({
    RSA_PKCS1_MD5_SHA1: 0x02,
    RSA_PKCS1_SHA1: 0x03,
    RSA_PKCS1_SHA256: 0x05,
    RSA_PKCS1_SHA384: 0x06,
    RSA_PKCS1_SHA512: 0x07,
    RSA_PSS_SHA256: 0x35,
    RSA_PSS_SHA384: 0x36,
    RSA_PSS_SHA512: 0x37,
    ECDSA_SHA1: 0x13,
    ECDSA_SHA256: 0x15,
    ECDSA_SHA384: 0x16,
    ECDSA_SHA512: 0x17,
    ED25519: 0x18,
  });
  expect(Object.keys(SIGN_OPCODE).sort()).toEqual([...SIGNATURE_ALGORITHMS].sort());
});

test('every error byte has a name for people', () => {
  for (const byte of Object.values(ErrorByte)) expect(ERROR_BYTE_NAMES[byte]).toEqual(expect.any(String));
  expect(ERROR_BYTE_NAMES[ErrorByte.keyNotFound]).toBe('key not found');
});
