/**
 * A stand-in for keyless-cng-shim.exe that speaks the same frame protocol and signs with
 * Node's OpenSSL (the file backend's addon, which signs a given digest). Keys are PEM
 * files: FAKE_CNG_KEY_DIR/<key name>.pem, machine keys under FAKE_CNG_KEY_DIR/machine/.
 *
 * Misbehaviour on demand, so the backend's handling of it can be tested:
 *   key "slow"       a sign request is never answered
 *   key "garbage"    a sign request is answered with a frame whose length breaks the framing
 *   key "truncate"   a sign request gets half an answer, then the shim exits 1
 *   FAKE_CNG_HOLD=N  sign answers are held until N are waiting, then sent newest request first
 *   FAKE_CNG_DIE_ONCE=FILE  the first shim life (FILE absent) exits 1 on its 10th sign request
 *   FAKE_CNG_EXIT_AT_START=CODE  logs a line and exits with CODE before reading anything
 *   FAKE_CNG_LIVES=FILE  appends a line per start, so tests can count restarts
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nativeAddon, nativeQueue, NativeHash, NativeOp, type NativeKey } from '../../backends/file/native';
import { CryptoFailureError } from '../../src/errors';
import { CngHash, CngOperation, CngPadding, CngStatus, decodeRequest, encodeResponse, FrameReader, type CngRequest, type CngResponse } from '../../backends/cng/codec';
import { HASH_LENGTH, type HashName } from '../../src/core/crypto/hashes';
import { publicBlob } from './blobs';

const NTE_BAD_KEYSET = 0x80090016;
const signingFailed = (message: string) => new CryptoFailureError(message);
const HASHES: Readonly<Record<number, [HashName, number]>> = {
  [CngHash.md5Sha1]: ['md5-sha1', NativeHash.none],
  [CngHash.sha1]: ['sha1', NativeHash.sha1],
  [CngHash.sha256]: ['sha256', NativeHash.sha256],
  [CngHash.sha384]: ['sha384', NativeHash.sha384],
  [CngHash.sha512]: ['sha512', NativeHash.sha512],
};
const CURVE_BYTES: Readonly<Record<string, number>> = { prime256v1: 32, secp384r1: 48, secp521r1: 66 };

const env = process.env;
const hold = Number(env.FAKE_CNG_HOLD ?? 0);
const held: Array<{ id: number; frame: Buffer }> = [];
const keys = new Map<string, { key: KeyObject; native: NativeKey }>();
let signRequests = 0;
let inFlight = 0;
let inputEnded = false;

if (env.FAKE_CNG_LIVES) appendFileSync(env.FAKE_CNG_LIVES, `${process.pid}\n`);
if (env.FAKE_CNG_EXIT_AT_START) {
  process.stderr.write('fake shim: cannot open key storage provider (told to fail)\n');
  process.exit(Number(env.FAKE_CNG_EXIT_AT_START));
}
process.stderr.write('fake shim: started\n');

const fail = (id: number, status: number, code: number, message: string): CngResponse => ({ id, status, code, message });

function findKey(name: string, machine: boolean): { key: KeyObject; native: NativeKey } | undefined {
  const path = join(env.FAKE_CNG_KEY_DIR ?? '.', machine ? 'machine' : '', `${name}.pem`);
  const cacheKey = `${machine}:${name}`;
  if (!keys.has(cacheKey) && existsSync(path)) {
    const key = createPrivateKey(readFileSync(path));
    keys.set(cacheKey, { key, native: nativeAddon().loadKey(key.export({ format: 'der', type: 'pkcs8' })) });
  }
  return keys.get(cacheKey);
}

/** DER ECDSA-Sig-Value to r||s, each padded to the curve's byte length, as CNG returns it. */
function derToRaw(der: Buffer, size: number): Buffer {
  let at = der[1]! & 0x80 ? 2 + (der[1]! & 0x7f) : 2;
  const parts: Buffer[] = [];
  for (let i = 0; i < 2; i++) {
    const length = der[at + 1]!;
    let value = der.subarray(at + 2, at + 2 + length);
    while (value.length > size && value[0] === 0) value = value.subarray(1);
    parts.push(Buffer.concat([Buffer.alloc(size - value.length), value]));
    at += 2 + length;
  }
  return Buffer.concat(parts);
}

async function sign(request: CngRequest, found: { key: KeyObject; native: NativeKey }): Promise<CngResponse> {
  const hash = HASHES[request.hash];
  if (!hash) return fail(request.id, CngStatus.unsupported, 0, 'unknown hash id');
  if (request.payload.length !== HASH_LENGTH[hash[0]]) return fail(request.id, CngStatus.badInput, 0, 'digest length does not match the hash');
  const op = request.padding === CngPadding.pkcs1 ? NativeOp.rsaPkcs1 : request.padding === CngPadding.pss ? NativeOp.rsaPss : NativeOp.ecdsa;
  const signature = await nativeQueue().run(found.native, op, hash[1], request.payload, signingFailed);
  if (op !== NativeOp.ecdsa) return { id: request.id, status: CngStatus.ok, data: signature };
  return { id: request.id, status: CngStatus.ok, data: derToRaw(signature, CURVE_BYTES[found.key.asymmetricKeyDetails!.namedCurve!]!) };
}

async function answer(request: CngRequest): Promise<CngResponse> {
  switch (request.operation) {
    case CngOperation.ping:
      return { id: request.id, status: CngStatus.ok, data: Buffer.alloc(0) };
    case CngOperation.publicKey:
    case CngOperation.sign:
    case CngOperation.decrypt: {
      const found = findKey(request.keyName, request.machine);
      if (!found) return fail(request.id, CngStatus.keyNotFound, NTE_BAD_KEYSET, 'NCryptOpenKey failed');
      try {
        if (request.operation === CngOperation.publicKey) return { id: request.id, status: CngStatus.ok, data: publicBlob(found.key) };
        if (request.operation === CngOperation.sign) return await sign(request, found);
        const op = request.padding === CngPadding.raw ? NativeOp.decryptRaw : NativeOp.decryptOaepSha256;
        return { id: request.id, status: CngStatus.ok, data: await nativeQueue().run(found.native, op, NativeHash.none, request.payload, signingFailed) };
      } catch (err) {
        return fail(request.id, CngStatus.cryptoFailure, 0x80090005, (err as Error).message);
      }
    }
    case CngOperation.import:
      return fail(request.id, CngStatus.unsupported, 0, 'import is disabled');
    default:
      return fail(request.id, CngStatus.badOperation, 0, 'unknown operation');
  }
}

function send(frame: Buffer): void {
  process.stdout.write(frame);
}

/** Acts out the misbehaviour a sign request asks for; true when it was one. */
function misbehave(request: CngRequest): boolean {
  if (request.operation !== CngOperation.sign) return false;
  if (request.keyName === 'slow') return true;
  if (request.keyName === 'garbage') {
    send(Buffer.from([2, 0, 0, 0, 0, 0]));
    return true;
  }
  if (request.keyName === 'truncate') {
    const frame = encodeResponse({ id: request.id, status: CngStatus.ok, data: Buffer.alloc(64, 1) });
    process.stdout.write(frame.subarray(0, frame.length / 2), () => process.exit(1));
    return true;
  }
  if (env.FAKE_CNG_DIE_ONCE && ++signRequests === 10 && !existsSync(env.FAKE_CNG_DIE_ONCE)) {
    writeFileSync(env.FAKE_CNG_DIE_ONCE, 'died');
    process.exit(1);
  }
  return false;
}

async function handle(body: Buffer): Promise<void> {
  const request = decodeRequest(body);
  if ('malformed' in request) return send(encodeResponse(fail(request.id, CngStatus.badFrame, 0, 'request frame is truncated')));
  if (misbehave(request)) return;
  inFlight++;
  const frame = encodeResponse(await answer(request));
  inFlight--;
  if (hold && request.operation === CngOperation.sign) {
    held.push({ id: request.id, frame });
    if (held.length >= hold) for (const answer of held.splice(0).sort((a, b) => b.id - a.id)) send(answer.frame);
  } else {
    send(frame);
  }
  if (inputEnded && inFlight === 0) process.exit(0);
}

const reader = new FrameReader(5);
process.stdin.on('data', (chunk: Buffer) => {
  try {
    for (const body of reader.push(chunk)) void handle(body);
  } catch (err) {
    process.stderr.write(`fake shim: ${(err as Error).message}; exiting\n`);
    process.exit(3);
  }
});
process.stdin.on('end', () => {
  inputEnded = true;
  if (inFlight === 0) process.exit(0);
});
