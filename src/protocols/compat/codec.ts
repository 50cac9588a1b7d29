/**
 * Cloudflare's Keyless SSL binary protocol (COMPAT.md): bytes in, frames out, and back.
 * Pure, so the listener, the client and the fuzz tests share it.
 *
 *   header (8 bytes): major u8 = 1 | minor u8 = 0 | body length u16 | id u32   (big-endian)
 *   body: items, each tag u8 | length u16 | value
 */
import { InvalidArgumentError, KeylessdError } from '../../errors';

export const HEADER_LENGTH = 8;
export const MAJOR = 0x01;
export const MINOR = 0x00;
/** Clients pad requests to at least this many body bytes with tag 0x20. */
export const PADDED_LENGTH = 1024;

export const Tag = {
  certDigest: 0x01,
  sni: 0x02,
  clientIp: 0x03,
  ski: 0x04,
  serverIp: 0x05,
  certId: 0x06,
  opcode: 0x11,
  payload: 0x12,
  customFunction: 0x13,
  supplementalPayload: 0x14,
  spanContext: 0x15,
  requestContext: 0x16,
  complianceRegion: 0x17,
  padding: 0x20,
} as const;

/** Error bytes, as the payload of an 0xFF response. */
export const ErrorByte = {
  cryptoFailed: 0x01,
  keyNotFound: 0x02,
  readError: 0x03,
  versionMismatch: 0x04,
  badOpcode: 0x05,
  unexpectedOpcode: 0x06,
  format: 0x07,
  internal: 0x08,
  certNotFound: 0x09,
  expired: 0x0a,
  remoteConfiguration: 0x0b,
} as const;

/** What each error byte means, for people reading an answer (keylessctl prints these). */
export const ERROR_BYTE_NAMES: Readonly<Record<number, string>> = {
  [ErrorByte.cryptoFailed]: 'cryptography failure',
  [ErrorByte.keyNotFound]: 'key not found',
  [ErrorByte.readError]: 'read error',
  [ErrorByte.versionMismatch]: 'version mismatch',
  [ErrorByte.badOpcode]: 'bad opcode',
  [ErrorByte.unexpectedOpcode]: 'unexpected opcode',
  [ErrorByte.format]: 'format error',
  [ErrorByte.internal]: 'internal error',
  [ErrorByte.certNotFound]: 'certificate not found',
  [ErrorByte.expired]: 'expired',
  [ErrorByte.remoteConfiguration]: 'remote configuration error',
};

const KNOWN_TAGS = new Set<number>(Object.values(Tag));

export interface Frame {
  readonly major: number;
  readonly minor: number;
  readonly id: number;
  /** Known tags only (unknown tags and padding are skipped), each at most once. */
  readonly items: ReadonlyMap<number, Buffer>;
}

/** A frame that decodes but breaks the format: answer with `errorByte` under `id`. */
export class CompatFormatError extends KeylessdError {
  readonly code = 'COMPAT_FORMAT';

  constructor(
    readonly id: number,
    readonly errorByte: number,
    message: string,
  ) {
    super(message);
  }
}

export function encodeFrame(id: number, items: ReadonlyArray<readonly [number, Buffer]>, padTo = 0): Buffer {
  let bodyLength = items.reduce((n, [, value]) => n + 3 + value.length, 0);
  const padding: Buffer[] = [];
  if (bodyLength < padTo) {
    // One padding item (3 header bytes + value) reaches at least padTo.
    const value = Buffer.alloc(Math.max(0, padTo - bodyLength - 3));
    padding.push(item(Tag.padding, value));
    bodyLength += 3 + value.length;
  }
  if (bodyLength > 0xffff) throw new InvalidArgumentError(`a frame body holds at most 65535 bytes, this one would be ${bodyLength}`);
  const header = Buffer.alloc(HEADER_LENGTH);
  header[0] = MAJOR;
  header[1] = MINOR;
  header.writeUInt16BE(bodyLength, 2);
  header.writeUInt32BE(id >>> 0, 4);
  return Buffer.concat([header, ...items.map(([tag, value]) => item(tag, value)), ...padding]);
}

function item(tag: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new InvalidArgumentError(`an item holds at most 65535 bytes, tag 0x${tag.toString(16)} has ${value.length}`);
  const head = Buffer.alloc(3);
  head[0] = tag;
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

/**
 * Decodes one complete frame (header + exactly `length` body bytes). Throws
 * CompatFormatError for a major version other than 1 (0x04), an item running past the
 * body or a known tag twice (0x07).
 */
export function decodeFrame(frame: Buffer): Frame {
  const id = frame.readUInt32BE(4);
  const major = frame[0]!;
  if (major !== MAJOR) throw new CompatFormatError(id, ErrorByte.versionMismatch, `protocol major version ${major}, expected ${MAJOR}`);
  const items = new Map<number, Buffer>();
  let offset = HEADER_LENGTH;
  while (offset < frame.length) {
    if (offset + 3 > frame.length) throw new CompatFormatError(id, ErrorByte.format, `item header at body offset ${offset - HEADER_LENGTH} runs past the body`);
    const tag = frame[offset]!;
    const length = frame.readUInt16BE(offset + 1);
    const end = offset + 3 + length;
    if (end > frame.length) throw new CompatFormatError(id, ErrorByte.format, `item 0x${tag.toString(16)} of ${length} bytes runs past the body`);
    if (KNOWN_TAGS.has(tag) && tag !== Tag.padding) {
      if (items.has(tag)) throw new CompatFormatError(id, ErrorByte.format, `item 0x${tag.toString(16)} appears twice`);
      items.set(tag, frame.subarray(offset + 3, end));
    }
    offset = end;
  }
  return { major, minor: frame[1]!, id, items };
}

/**
 * Splits a TCP stream into frames. The header's length is all it trusts, so a frame whose
 * body is malformed is still skipped whole and the stream stays in step.
 */
export class FrameReader {
  private buffered: Buffer[] = [];
  private size = 0;

  /** Feeds bytes; returns every frame now complete (header and body, as one Buffer). */
  push(chunk: Buffer): Buffer[] {
    this.buffered.push(chunk);
    this.size += chunk.length;
    const frames: Buffer[] = [];
    while (this.size >= HEADER_LENGTH) {
      const head = this.peek(HEADER_LENGTH);
      const total = HEADER_LENGTH + head.readUInt16BE(2);
      if (this.size < total) break;
      frames.push(this.take(total));
    }
    return frames;
  }

  /** Bytes received that do not yet form a frame. */
  get pending(): number {
    return this.size;
  }

  private peek(n: number): Buffer {
    if (this.buffered[0]!.length < n) this.buffered = [Buffer.concat(this.buffered)];
    return this.buffered[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.buffered.length === 1 ? this.buffered[0]! : Buffer.concat(this.buffered);
    const frame = all.subarray(0, n);
    const rest = all.subarray(n);
    this.buffered = rest.length > 0 ? [rest] : [];
    this.size -= n;
    return frame;
  }
}
