import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { WebSocket, type ClientOptions } from 'ws';
import type { DecryptPadding, SignatureAlgorithm } from '../core/crypto/algorithms';
import type { keyless } from '../gen/keyless';
import type { KeyRef } from '../core/keys/registry';
import {
  decodeResponse,
  encodeRequest,
  errorCodeName,
  keyRefToMessage,
  pb,
  signatureAlgorithmNumber,
  SUBPROTOCOL,
  type ResponseMessage,
} from '../protocols/v1/codec';
import { ConnectionError, RemoteError, ResponseTimeoutError, describeConnectError } from './errors';

export interface SessionOptions {
  /** `wss://host:port/v1` */
  readonly url: string;
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  /** Name the server certificate must carry when it differs from the URL's host. */
  readonly servername?: string;
  readonly connectTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  /** For error messages only: where ca/cert came from. */
  readonly files?: { readonly ca?: string; readonly cert?: string };
  /** A TLS session ticket from an earlier session to the same server, to skip the full handshake. */
  readonly tlsSession?: Buffer;
  /** Called with each TLS session ticket the server issues, for the next reconnect. */
  readonly onTlsSession?: (ticket: Buffer) => void;
}

type RequestBody = Omit<keyless.v1.Request.$Properties, 'id'>;

interface Pending {
  resolve(response: ResponseMessage, bytes: Buffer): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * One keyless.v1 session: many requests in flight, each matched to its response by id.
 * Emits 'close' (code, reason) when the session ends; pending requests then fail with
 * ConnectionError.
 */
export class KeylessSession extends EventEmitter {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  private constructor(
    private readonly ws: WebSocket,
    private readonly tls: TLSSocket,
    private readonly requestTimeoutMs: number,
  ) {
    super();
    ws.on('message', (data: Buffer) => this.onMessage(data));
    ws.on('close', (code, reason) => {
      this.failAll(new ConnectionError(`session closed by the server (${code}${reason.length ? `: ${reason.toString()}` : ''})`));
      this.emit('close', code, reason.toString());
    });
    ws.on('error', (err) => this.failAll(new ConnectionError(`session failed: ${err.message}`)));
  }

  static connect(options: SessionOptions): Promise<KeylessSession> {
    return new Promise((resolve, reject) => {
      let socket: TLSSocket | undefined;
      // Our own connect function (a public ws option) hands us the TLS socket, so tickets can be
      // caught from the first byte and resumption checked, without reaching into ws's fields.
      const connectTls = (connectOptions: ConnectionOptions): TLSSocket => {
        const host = connectOptions.host ?? 'localhost';
        socket = tlsConnect({ ...connectOptions, path: undefined, servername: connectOptions.servername ?? (isIP(host) ? '' : host) });
        if (options.onTlsSession) socket.on('session', options.onTlsSession);
        return socket;
      };
      const ws = new WebSocket(options.url, SUBPROTOCOL, {
        createConnection: connectTls as unknown as ClientOptions['createConnection'],
        ca: options.ca,
        cert: options.cert,
        key: options.key,
        ...(options.servername ? { servername: options.servername } : {}),
        ...(options.tlsSession ? { session: options.tlsSession } : {}),
        perMessageDeflate: false,
        handshakeTimeout: options.connectTimeoutMs ?? 10_000,
        maxPayload: 16 * 1024 * 1024,
      });
      const fail = (err: NodeJS.ErrnoException) => {
        ws.removeAllListeners();
        ws.on('error', () => {});
        ws.terminate();
        reject(new ConnectionError(describeConnectError(err, options.url, options.files ?? {})));
      };
      ws.once('error', fail);
      // A server that rejects our certificate in TLS 1.3 does so after the handshake: it shows up as a close.
      ws.once('close', (code, reason) => fail({ name: 'Error', code: 'ECONNRESET', message: `connection closed before the session opened (${code} ${reason.toString()})` }));
      ws.once('open', () => {
        ws.removeAllListeners();
        resolve(new KeylessSession(ws, socket!, options.requestTimeoutMs ?? 30_000));
      });
    });
  }

  /** Sends one request and resolves with its response (an Error response resolves too). */
  request(body: RequestBody, timeoutMs = this.requestTimeoutMs): Promise<ResponseMessage> {
    return this.exchange((id) => encodeRequest({ id, ...body }), timeoutMs).then(({ response }) => response);
  }

  /**
   * Sends an operation that is already encoded — the bytes of one Request field such as
   * `sign` (3) or `decrypt` (4), tag included, as a relay received them — with this session's
   * own id, and resolves with the Response both decoded and as the bytes the server sent (an
   * Error response resolves too). For the edge agent, which relays without re-encoding.
   */
  forward(operation: Uint8Array, timeoutMs = this.requestTimeoutMs): Promise<{ response: ResponseMessage; bytes: Buffer }> {
    // Fields may come in any order: the operation as received, then the id (field 1) alone.
    return this.exchange((id) => Buffer.concat([operation, encodeRequest({ id })]), timeoutMs);
  }

  /** Sends the request `encode(id)` under the next id; settles with its answer or ResponseTimeoutError. */
  private exchange(encode: (id: number) => Uint8Array, timeoutMs: number): Promise<{ response: ResponseMessage; bytes: Buffer }> {
    if (this.ws.readyState !== WebSocket.OPEN) return Promise.reject(new ConnectionError('session is not open'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ResponseTimeoutError(`no answer to request ${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: (response, bytes) => resolve({ response, bytes }), reject, timer });
      this.ws.send(encode(id));
    });
  }

  async ping(payload: Buffer = Buffer.alloc(0)): Promise<Buffer> {
    return Buffer.from(expect(await this.request({ ping: { payload } }), 'pong').payload ?? []);
  }

  async sign(key: KeyRef, algorithm: SignatureAlgorithm, input: { digest: Buffer } | { message: Buffer }): Promise<Buffer> {
    const response = await this.request({ sign: { key: keyRefToMessage(key), algorithm: signatureAlgorithmNumber(algorithm), ...input } });
    return Buffer.from(expect(response, 'signature'));
  }

  async decrypt(key: KeyRef, padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    const wirePadding = padding === 'rsa-raw' ? pb.DecryptPadding.RSA_RAW : pb.DecryptPadding.RSA_OAEP_SHA256;
    const response = await this.request({ decrypt: { key: keyRefToMessage(key), padding: wirePadding, ciphertext } });
    return Buffer.from(expect(response, 'plaintext'));
  }

  async listKeys(): Promise<keyless.v1.KeyInfo.$Properties[]> {
    return expect(await this.request({ listKeys: {} }), 'keys').keys ?? [];
  }

  async getKey(key: KeyRef): Promise<keyless.v1.KeyInfo.$Properties> {
    return expect(await this.request({ getKey: { key: keyRefToMessage(key) } }), 'key');
  }

  get inflight(): number {
    return this.pending.size;
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Whether this session's TLS connection resumed an earlier one. */
  get resumed(): boolean {
    return this.tls.isSessionReused();
  }

  /** Drops the connection without a closing handshake (it is presumed dead). */
  abort(): void {
    this.ws.terminate();
  }

  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close(1000);
    });
  }

  private onMessage(data: Buffer): void {
    let response: ResponseMessage;
    try {
      response = decodeResponse(data);
    } catch {
      this.ws.close(1002, 'undecodable response');
      return;
    }
    const id = Number(response.id);
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(response, data);
  }

  private failAll(err: Error): void {
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this.pending.clear();
  }
}

/** The response's result of the expected kind, or the server's error as a RemoteError. */
function expect<K extends 'pong' | 'signature' | 'plaintext' | 'keys' | 'key'>(response: ResponseMessage, kind: K): NonNullable<ResponseMessage[K]> {
  if (response.result === 'error') {
    const code = errorCodeName(response.error?.code);
    throw new RemoteError(code === 'ERROR_CODE_UNSPECIFIED' ? 'INTERNAL' : code, response.error?.message ?? '');
  }
  if (response.result !== kind) throw new RemoteError('INTERNAL', `expected a ${kind} response, got ${response.result ?? 'nothing'}`);
  return response[kind] as NonNullable<ResponseMessage[K]>;
}
