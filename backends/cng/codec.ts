/**
 * The frame protocol between keylessd and keyless-cng-shim.exe over the shim's
 * stdin/stdout (docs/cng.md is the reference; shim/keyless-cng-shim.c the other side).
 * Pure: bytes in, frames out; no I/O, so it can be fuzzed and reused by a fake shim.
 *
 * Every frame is `u32 length` (little-endian, bytes that follow) then the body.
 *   request body:  u32 id | u8 operation | u16 name length | key name (UTF-8) | u8 flags | u8 padding | u8 hash | payload
 *   response body: u32 id | u8 status | result  (OK: the data; otherwise u32 CNG code | UTF-8 message)
 */
import { KeylessdError } from '../../src/errors';

export const CngOperation = { ping: 0, publicKey: 1, sign: 2, decrypt: 3, import: 4 } as const;
export type CngOperation = (typeof CngOperation)[keyof typeof CngOperation];

export const CngStatus = { ok: 0, badFrame: 1, badOperation: 2, keyNotFound: 3, badInput: 4, unsupported: 5, cryptoFailure: 6 } as const;
export type CngStatus = (typeof CngStatus)[keyof typeof CngStatus];

export const CngPadding = { none: 0, pkcs1: 1, pss: 2, oaepSha256: 3, raw: 4 } as const;
export type CngPadding = (typeof CngPadding)[keyof typeof CngPadding];

export const CngHash = { none: 0, md5Sha1: 1, sha1: 2, sha256: 3, sha384: 4, sha512: 5 } as const;
export type CngHash = (typeof CngHash)[keyof typeof CngHash];

/** Request flag bits. */
export const CNG_FLAG_MACHINE_KEY = 0x01;

/** Largest body either side accepts; a length beyond it means the stream is corrupt. */
export const MAX_FRAME_BODY = 1 << 20;
/** The shortest response body: id and status. */
const MIN_RESPONSE_BODY = 5;
/** The shortest request body: id, operation, name length, flags, padding, hash. */
const MIN_REQUEST_BODY = 10;

export interface CngRequest {
  readonly id: number;
  readonly operation: number;
  readonly keyName: string;
  readonly machine: boolean;
  readonly padding: number;
  readonly hash: number;
  readonly payload: Buffer;
}

export type CngResponse =
  | { readonly id: number; readonly status: typeof CngStatus.ok; readonly data: Buffer }
  | { readonly id: number; readonly status: number; readonly code: number; readonly message: string };

/** The byte stream broke the framing rules; nothing after it can be trusted. */
export class FrameError extends KeylessdError {
  readonly code = 'CNG_FRAME';
}

export function encodeRequest(request: CngRequest): Buffer {
  const name = Buffer.from(request.keyName, 'utf8');
  if (name.length > 0xffff) throw new FrameError(`CNG key name is ${name.length} bytes; at most 65535 fit a frame`);
  const length = MIN_REQUEST_BODY + name.length + request.payload.length;
  if (length > MAX_FRAME_BODY) throw new FrameError(`CNG request of ${length} bytes exceeds the ${MAX_FRAME_BODY}-byte frame limit`);
  const frame = Buffer.alloc(4 + length);
  frame.writeUInt32LE(length, 0);
  frame.writeUInt32LE(request.id, 4);
  frame.writeUInt8(request.operation, 8);
  frame.writeUInt16LE(name.length, 9);
  name.copy(frame, 11);
  let at = 11 + name.length;
  frame[at++] = request.machine ? CNG_FLAG_MACHINE_KEY : 0;
  frame[at++] = request.padding;
  frame[at++] = request.hash;
  request.payload.copy(frame, at);
  return frame;
}

/**
 * Parses a request body. A body too short for its declared fields yields `malformed`
 * with whatever id could be read, so the answer can still name the request.
 */
export function decodeRequest(body: Buffer): CngRequest | { readonly id: number; readonly malformed: true } {
  const id = body.length >= 4 ? body.readUInt32LE(0) : 0;
  if (body.length < MIN_REQUEST_BODY) return { id, malformed: true };
  const nameLength = body.readUInt16LE(5);
  const rest = 7 + nameLength;
  if (rest + 3 > body.length) return { id, malformed: true };
  return {
    id,
    operation: body[4]!,
    keyName: body.toString('utf8', 7, rest),
    machine: (body[rest]! & CNG_FLAG_MACHINE_KEY) !== 0,
    padding: body[rest + 1]!,
    hash: body[rest + 2]!,
    payload: body.subarray(rest + 3),
  };
}

export function encodeResponse(response: CngResponse): Buffer {
  const result = 'data' in response ? response.data : Buffer.concat([u32(response.code), Buffer.from(response.message, 'utf8')]);
  const frame = Buffer.alloc(4 + MIN_RESPONSE_BODY + result.length);
  frame.writeUInt32LE(MIN_RESPONSE_BODY + result.length, 0);
  frame.writeUInt32LE(response.id, 4);
  frame.writeUInt8(response.status, 8);
  result.copy(frame, 9);
  return frame;
}

export function decodeResponse(body: Buffer): CngResponse {
  if (body.length < MIN_RESPONSE_BODY) throw new FrameError(`response body of ${body.length} bytes is shorter than id and status`);
  const id = body.readUInt32LE(0);
  const status = body[4]!;
  if (status === CngStatus.ok) return { id, status, data: body.subarray(MIN_RESPONSE_BODY) };
  if (body.length < MIN_RESPONSE_BODY + 4) throw new FrameError(`error response ${id} has no error code`);
  return { id, status, code: body.readUInt32LE(MIN_RESPONSE_BODY), message: body.toString('utf8', MIN_RESPONSE_BODY + 4) };
}

function u32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(value >>> 0, 0);
  return bytes;
}

/**
 * Cuts a byte stream into frame bodies, whatever the chunking. Throws FrameError for a
 * length outside [minBody, MAX_FRAME_BODY]: the stream cannot be resynchronised after it.
 */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);

  constructor(private readonly minBody = MIN_RESPONSE_BODY) {}

  /** Bytes held that do not yet make a whole frame. */
  get pending(): number {
    return this.buffered.length;
  }

  push(chunk: Buffer): Buffer[] {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    const bodies: Buffer[] = [];
    let at = 0;
    while (this.buffered.length - at >= 4) {
      const length = this.buffered.readUInt32LE(at);
      if (length < this.minBody || length > MAX_FRAME_BODY) throw new FrameError(`frame length ${length} is outside ${this.minBody}..${MAX_FRAME_BODY}`);
      if (this.buffered.length - at - 4 < length) break;
      bodies.push(this.buffered.subarray(at + 4, at + 4 + length));
      at += 4 + length;
    }
    this.buffered = this.buffered.subarray(at);
    return bodies;
  }
}
