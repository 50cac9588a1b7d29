/**
 * The edge agent: a long-running process next to a TLS terminator. It holds the client pool
 * to one or more keylessd servers (failover, backoff, its own client certificate) and serves
 * the PKCS#11 module (src/edge/pkcs11-module/) over a Unix socket.
 *
 * The socket speaks keyless.v1 itself, so there is no second format: each frame is a 4-byte
 * big-endian length followed by one protobuf `Request`; the answer is one `Response` framed
 * the same way, with the request's id. Requests on one connection may be pipelined; answers
 * come back as they finish. A frame that does not decode closes that connection (and only it).
 */
import { chmodSync, chownSync, readFileSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { Reader } from 'protobufjs/minimal';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ConnectionError, PoolBusyError } from '../client/errors';
import type { KeylessPool } from '../client/pool';
import { InvalidArgumentError, KeylessError, type ErrorCode } from '../errors';
import { describeKeyRef, type KeyRef } from '../core/keys/registry';
import type { Logger } from '../log';
import { interpretRequest, type V1Operation } from '../protocols/v1/operation';
import { decodeRequest, encodeResponse, errorCodeName, errorResponse, requestIdText, type KeyInfoMessage, type RequestId } from '../protocols/v1/codec';

/** Where each top-level field of a protobuf message lies (throws when the bytes do not parse). */
export function topLevelFields(bytes: Uint8Array): Array<{ field: number; start: number; end: number }> {
  const reader = Reader.create(bytes);
  const fields: Array<{ field: number; start: number; end: number }> = [];
  while (reader.pos < reader.len) {
    const start = reader.pos;
    const tag = reader.uint32();
    reader.skipType(tag & 7);
    fields.push({ field: tag >>> 3, start, end: reader.pos });
  }
  return fields;
}

/**
 * A Request frame in the shape the module sends — at most one id (field 1, varint), exactly
 * one sign or decrypt (field 3 or 4, length-delimited), nothing else but a context (15, dropped
 * as `handle` drops it) — cut into the id field and the operation field, copied. Anything
 * else (undefined) takes the decode-and-re-encode path, so only bytes whose parse is not in
 * doubt are relayed: keylessd closes a session on a Request it cannot decode, which would
 * fail every request in flight on it.
 */
export function relayParts(frame: Buffer): { idField: Buffer; operation: Buffer } | undefined {
  let idField: Buffer | undefined;
  let operation: Buffer | undefined;
  let fields;
  try {
    fields = topLevelFields(frame);
  } catch {
    return undefined;
  }
  for (const f of fields) {
    const wire = frame[f.start]! & 7; // field numbers 1..15 have a one-byte tag
    if (f.field === 1 && wire === 0 && !idField) idField = Buffer.from(frame.subarray(f.start, f.end));
    else if ((f.field === 3 || f.field === 4) && wire === 2 && !operation) operation = Buffer.from(frame.subarray(f.start, f.end));
    else if (f.field !== 15 || wire !== 2) return undefined;
  }
  return operation ? { idField: idField ?? Buffer.alloc(0), operation } : undefined;
}

/** The message's bytes without one field (as slices, in order). */
export function withoutField(bytes: Buffer, field: number): Buffer[] {
  const parts: Buffer[] = [];
  let from = 0;
  for (const f of topLevelFields(bytes)) {
    if (f.field !== field) continue;
    if (f.start > from) parts.push(bytes.subarray(from, f.start));
    from = f.end;
  }
  if (from < bytes.length) parts.push(bytes.subarray(from));
  return parts;
}

/** Frames larger than this are a protocol error (the largest real request is an RSA-16384 ciphertext). */
export const MAX_FRAME_BYTES = 64 * 1024;

/**
 * Whether the module may offer CKM_RSA_PKCS / CKM_RSA_X_509 decryption (CKA_DECRYPT) for a key.
 * TLS 1.2 RSA key exchange needs raw RSA decryption (RSA_RAW), so this follows the key's raw
 * decryption permission. THE one place that decides it: the module reads only the
 * `decrypt_allowed` field of the key list the agent sends it.
 */
export function rawDecryptAllowed(info: KeyInfoMessage): boolean {
  return !!info.rawDecryptAllowed;
}

/** The KeyInfo the module sees: as keylessd sent it, with `decrypt_allowed` meaning raw decryption. */
export function moduleKeyInfo(info: KeyInfoMessage): KeyInfoMessage {
  return { ...info, decryptAllowed: rawDecryptAllowed(info) };
}

export interface EdgeAgentOptions {
  readonly pool: KeylessPool;
  readonly socketPath: string;
  /** Mode of the socket file; default 0o660 (the terminator's workers share the group). */
  readonly socketMode?: number;
  /** Group (name or gid) that owns the socket file. */
  readonly socketGroup?: string | number;
  /** The key list is fetched from keylessd at most this often; a reload shows within it. */
  readonly keysRefreshMs?: number;
  readonly logger: Logger;
}

export interface EdgeAgentMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'op' | 'result'>;
  readonly latency: Histogram<'op'>;
  readonly connections: Gauge;
  readonly protocolErrors: Counter;
}

function makeMetrics(): EdgeAgentMetrics {
  const registry = new Registry();
  return {
    registry,
    requests: new Counter({ name: 'keylessd_agent_requests_total', help: 'Module requests by operation and result (ok or the keyless.v1 error code)', labelNames: ['op', 'result'], registers: [registry] }),
    latency: new Histogram({
      name: 'keylessd_agent_request_seconds',
      help: 'Time from a module request to its answer, keylessd round trip included',
      labelNames: ['op'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers: [registry],
    }),
    connections: new Gauge({ name: 'keylessd_agent_module_connections', help: 'Open module connections on the Unix socket', registers: [registry] }),
    protocolErrors: new Counter({ name: 'keylessd_agent_protocol_errors_total', help: 'Module connections closed for an undecodable or oversized frame', registers: [registry] }),
  };
}

function groupId(group: string | number): number {
  if (typeof group === 'number' || /^\d+$/.test(group)) return Number(group);
  const line = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l) => l.split(':')[0] === group);
  if (!line) throw new InvalidArgumentError(`socket group ${group} does not exist`);
  return Number(line.split(':')[2]);
}

function errorCodeOf(err: unknown): ErrorCode {
  if (err instanceof KeylessError) return err.code;
  if (err instanceof PoolBusyError) return 'OVERLOADED';
  if (err instanceof ConnectionError) return 'BACKEND_UNAVAILABLE';
  return 'INTERNAL';
}

export class EdgeAgent {
  readonly metrics = makeMetrics();
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private keys?: { at: number; list: KeyInfoMessage[] };
  private keysInFlight?: Promise<KeyInfoMessage[]>;
  private lastKeyNames?: string;

  private constructor(private readonly options: EdgeAgentOptions) {
    this.server = createServer((socket) => this.accept(socket));
  }

  /** Listens on the socket (replacing a stale socket file) with the configured mode and group. */
  static async start(options: EdgeAgentOptions): Promise<EdgeAgent> {
    const agent = new EdgeAgent(options);
    try {
      unlinkSync(options.socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await new Promise<void>((resolve, reject) => {
      agent.server.once('error', reject);
      agent.server.listen(options.socketPath, () => {
        agent.server.off('error', reject);
        resolve();
      });
    });
    chmodSync(options.socketPath, options.socketMode ?? 0o660);
    if (options.socketGroup !== undefined) chownSync(options.socketPath, -1, groupId(options.socketGroup));
    options.logger.info({ socket: options.socketPath, mode: (options.socketMode ?? 0o660).toString(8) }, 'edge agent listening for the PKCS#11 module');
    return agent;
  }

  /** For /healthz: the pool's view of each server. */
  health(): { ok: boolean; servers: ReturnType<KeylessPool['status']>; keys: number | undefined } {
    const servers = this.options.pool.status();
    return { ok: servers.some((s) => s.open > 0 && !s.setAside), servers, keys: this.keys?.list.length };
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    this.metrics.connections.inc();
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.metrics.connections.dec();
    });
    socket.on('error', () => socket.destroy());
    let pending: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      while (pending.length >= 4) {
        const length = pending.readUInt32BE(0);
        if (length > MAX_FRAME_BYTES) return this.protocolError(socket, `a frame of ${length} bytes (limit ${MAX_FRAME_BYTES})`);
        if (pending.length < 4 + length) break;
        const frame = pending.subarray(4, 4 + length);
        pending = pending.subarray(4 + length);
        let request;
        try {
          request = decodeRequest(frame);
        } catch (err) {
          return this.protocolError(socket, `a frame that is not a keyless.v1 Request (${(err as Error).message})`);
        }
        const relayed = request.sign || request.decrypt ? relayParts(frame) : undefined;
        if (relayed) void this.relay(relayed, request, socket);
        else void this.handle(request.id, request, socket);
      }
    });
  }

  private protocolError(socket: Socket, what: string): void {
    this.metrics.protocolErrors.inc();
    this.options.logger.warn({ cause: what }, 'closing a module connection that sent garbage');
    socket.destroy();
  }

  /** One frame, one write: the length and the parts of the message together. */
  private send(socket: Socket, ...parts: Uint8Array[]): void {
    if (socket.destroyed) return;
    const header = Buffer.alloc(4);
    header.writeUInt32BE(parts.reduce((n, p) => n + p.length, 0), 0);
    socket.write(Buffer.concat([header, ...parts]));
  }

  /**
   * Sign and decrypt, the hot path: the module's operation field goes to keylessd as the bytes
   * the module sent (the frame was decoded once, to refuse garbage and for the logs), and
   * keylessd's Response comes back as the bytes keylessd sent, with the module's id in place
   * of the session's. The same answers, metrics and logs as `handle`, without re-encoding.
   */
  private async relay({ idField, operation }: { idField: Buffer; operation: Buffer }, request: ReturnType<typeof decodeRequest>, socket: Socket): Promise<void> {
    const started = process.hrtime.bigint();
    const op = request.sign ? 'sign' : 'decrypt';
    try {
      const { response, bytes } = await this.options.pool.forward(operation);
      this.send(socket, ...withoutField(bytes, 1), idField);
      if (response.result !== 'error') {
        this.metrics.requests.inc({ op, result: 'ok' });
        return;
      }
      const code = errorCodeName(response.error?.code);
      this.failed(op, request, code === 'ERROR_CODE_UNSPECIFIED' ? 'INTERNAL' : code, response.error?.message ?? '');
    } catch (err) {
      const code = errorCodeOf(err);
      this.send(socket, errorResponse(request.id, code, code === 'INTERNAL' ? 'internal error in the edge agent' : (err as Error).message));
      this.failed(op, request, code, (err as Error).message);
    } finally {
      this.metrics.latency.observe({ op }, Number(process.hrtime.bigint() - started) / 1e9);
    }
  }

  /** Counts and logs a failed relayed request (with the key's name when known). */
  private failed(op: string, request: ReturnType<typeof decodeRequest>, code: ErrorCode, cause: string): void {
    this.metrics.requests.inc({ op, result: code });
    let key: string | undefined;
    try {
      const operation = interpretRequest(request);
      if ('key' in operation) key = this.describeKey(operation.key);
    } catch {
      /* a request keylessd refused as malformed: no key to name */
    }
    this.options.logger[code === 'INTERNAL' ? 'error' : 'warn']({ op, key, code, cause, id: requestIdText(request.id) }, 'module request failed');
    if (code === 'KEY_NOT_FOUND') this.keys = undefined; // a reload removed it: refetch the list next time
  }

  private async handle(id: RequestId, request: ReturnType<typeof decodeRequest>, socket: Socket): Promise<void> {
    const started = process.hrtime.bigint();
    let operation: V1Operation | undefined;
    let op = 'unknown';
    try {
      operation = interpretRequest(request);
      op = operation.kind;
      const response = await this.perform(id, operation);
      this.send(socket, response);
      this.metrics.requests.inc({ op, result: 'ok' });
    } catch (err) {
      const code = errorCodeOf(err);
      const message = code === 'INTERNAL' ? 'internal error in the edge agent' : (err as Error).message;
      this.send(socket, errorResponse(id, code, message));
      this.metrics.requests.inc({ op, result: code });
      const key = operation && 'key' in operation ? this.describeKey(operation.key) : undefined;
      const level = code === 'INTERNAL' ? 'error' : 'warn';
      this.options.logger[level]({ op, key, code, cause: (err as Error).message, id: requestIdText(id) }, 'module request failed');
      if (code === 'KEY_NOT_FOUND') this.keys = undefined; // a reload removed it: refetch the list next time
    } finally {
      this.metrics.latency.observe({ op }, Number(process.hrtime.bigint() - started) / 1e9);
    }
  }

  private async perform(id: RequestId, operation: V1Operation): Promise<Uint8Array> {
    const pool = this.options.pool;
    switch (operation.kind) {
      case 'ping':
        // Answered by the agent itself: the module's health check of the agent, not of keylessd.
        return encodeResponse({ id, pong: { payload: operation.payload } });
      case 'listKeys':
        return encodeResponse({ id, keys: { keys: (await this.keyList()).map(moduleKeyInfo) } });
      case 'getKey':
        return encodeResponse({ id, key: moduleKeyInfo(await pool.getKey(operation.key)) });
      case 'sign':
        return encodeResponse({ id, signature: await pool.sign(operation.key, operation.algorithm, operation.input) });
      case 'decrypt':
        return encodeResponse({ id, plaintext: await pool.decrypt(operation.key, operation.padding, operation.ciphertext) });
    }
  }

  /** The key's name when the cached list knows its SKI (the module refers to keys by SKI). */
  private describeKey(ref: KeyRef): string {
    if ('ski' in ref) {
      const known = this.keys?.list.find((k) => k.ski && Buffer.from(k.ski).equals(ref.ski));
      if (known?.name) return `"${known.name}" (SKI ${ref.ski.toString('hex')})`;
    }
    return describeKeyRef(ref);
  }

  /** keylessd's key list for this agent, fetched at most every keysRefreshMs (concurrent asks share one fetch). */
  private async keyList(): Promise<KeyInfoMessage[]> {
    const maxAge = this.options.keysRefreshMs ?? 2000;
    if (this.keys && Date.now() - this.keys.at < maxAge) return this.keys.list;
    if (!this.keysInFlight) {
      // Right after the agent starts (nginx started just after it), give the pool a moment to connect.
      const pool = this.options.pool;
      const ready = pool.status().some((s) => s.open > 0) ? Promise.resolve() : pool.ready(1000).catch(() => undefined);
      this.keysInFlight = ready.then(() => pool.listKeys()).then(
        (list) => {
          this.keys = { at: Date.now(), list };
          this.keysInFlight = undefined;
          const names = list.map((k) => k.name).sort().join(',');
          if (names !== this.lastKeyNames) this.options.logger.info({ keys: list.map((k) => k.name) }, 'key list from keylessd changed');
          this.lastKeyNames = names;
          return list;
        },
        (err: unknown) => {
          this.keysInFlight = undefined;
          throw err;
        },
      );
    }
    return this.keysInFlight;
  }
}
