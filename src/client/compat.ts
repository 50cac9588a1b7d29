import { connect, type TLSSocket } from 'node:tls';
import { ConnectionError, ResponseTimeoutError, UnexpectedAnswerError, describeConnectError } from './errors';
import { FrameReader, PADDED_LENGTH, Tag, decodeFrame, encodeFrame } from '../protocols/compat/codec';
import { Opcode } from '../protocols/compat/request';

export interface CompatClientOptions {
  readonly host: string;
  readonly port: number;
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly servername?: string;
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  readonly requestTimeoutMs?: number;
}

export interface CompatAnswer {
  readonly opcode: number;
  readonly payload: Buffer;
}

/** A client for the Cloudflare Keyless protocol: many requests in flight on one TLS connection. */
export class CompatClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(a: CompatAnswer): void; reject(e: Error): void; timer: NodeJS.Timeout }>();

  private constructor(
    readonly socket: TLSSocket,
    private readonly timeoutMs: number,
  ) {
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => {
      for (const bytes of reader.push(chunk)) {
        const frame = decodeFrame(bytes);
        const waiter = this.pending.get(frame.id);
        if (!waiter) continue;
        this.pending.delete(frame.id);
        clearTimeout(waiter.timer);
        waiter.resolve({ opcode: frame.items.get(Tag.opcode)?.[0] ?? 0, payload: frame.items.get(Tag.payload) ?? Buffer.alloc(0) });
      }
    });
    socket.on('close', () => {
      for (const waiter of this.pending.values()) waiter.reject(new ConnectionError('connection closed by the server'));
      this.pending.clear();
    });
  }

  static connect(options: CompatClientOptions): Promise<CompatClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: options.host, port: options.port, ca: options.ca, cert: options.cert, key: options.key, servername: options.servername ?? options.host, maxVersion: options.maxVersion });
      socket.once('secureConnect', () => {
        socket.removeAllListeners('error');
        socket.on('error', () => {});
        resolve(new CompatClient(socket, options.requestTimeoutMs ?? 30_000));
      });
      socket.once('error', (err) => reject(new ConnectionError(describeConnectError(err, `${options.host}:${options.port}`, {}))));
    });
  }

  /** Sends one request (padded to 1024 body bytes, as edges do) and resolves with the answer. */
  request(opcode: number, payload: Buffer, items: ReadonlyArray<readonly [number, Buffer]> = []): Promise<CompatAnswer> {
    const id = this.nextId++;
    return this.send(id, encodeFrame(id, [[Tag.opcode, Buffer.from([opcode])], [Tag.payload, payload], ...items], PADDED_LENGTH));
  }

  /** Sends a frame built by the caller (tests send malformed ones); resolves with the answer to `id`. */
  send(id: number, frame: Buffer): Promise<CompatAnswer> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ResponseTimeoutError(`no answer to request ${id} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.write(frame);
    });
  }

  async ping(payload: Buffer): Promise<Buffer> {
    const answer = await this.request(Opcode.ping, payload);
    if (answer.opcode !== Opcode.pong) throw new UnexpectedAnswerError(`expected a pong, got opcode 0x${answer.opcode.toString(16)}`);
    return answer.payload;
  }

  close(): void {
    this.socket.end();
  }
}
