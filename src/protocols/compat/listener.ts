import type { AddressInfo } from 'node:net';
import { listen, stopListening } from '../../transport/listen';
import { createServer, type Server, type TLSSocket, type TlsOptions } from 'node:tls';
import { toKeylessError } from '../../errors';
import type { Logger } from '../../log';
import type { Metrics } from '../../metrics/metrics';
import type { Dispatcher } from '../../core/dispatcher';
import { sessionFor, type SessionInfo } from '../../core/request';
import { TurnCoalescer } from '../../transport/coalesce';
import { SendBackpressure } from '../../transport/backpressure';
import { connectionLimits, guardTlsServer } from '../../transport/tls';
import type { LogLimiter } from '../../util/log-limiter';
import { CompatFormatError, ErrorByte, FrameReader, Tag, decodeFrame, encodeFrame } from './codec';
import { compatKeyRef } from './key-index';
import { ERROR_BYTE, Opcode, interpretFrame, type CompatRequest } from './request';

const LISTENER = 'cloudflare' as const;

export interface CompatListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly tls: TlsOptions;
  readonly maxSessions: number;
  /** Connections in the TLS handshake, in total and per source address (limits.max_pending_handshakes*). */
  readonly maxPendingHandshakes?: number;
  readonly maxPendingHandshakesPerAddress?: number;
  readonly maxSendBufferBytes: number;
}

function response(id: number, opcode: number, payload: Buffer): Buffer {
  return encodeFrame(id, [
    [Tag.opcode, Buffer.from([opcode])],
    [Tag.payload, payload],
  ]);
}

/**
 * Cloudflare's Keyless SSL protocol on its own port, for edges that already speak it.
 * The same dispatcher as keyless.v1 serves it, so policy, audit and metrics are the same;
 * only framing and error bytes differ.
 */
export class CompatListener {
  private readonly server: Server;
  private readonly sockets = new Set<TLSSocket>();
  private draining = false;
  private readonly logs: LogLimiter;

  constructor(
    private readonly options: CompatListenerOptions,
    private readonly dispatcher: Dispatcher,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {
    this.server = createServer(options.tls, (socket) => this.serve(socket));
    this.logs = guardTlsServer(this.server, LISTENER, connectionLimits(options), metrics, logger);
  }

  async start(): Promise<AddressInfo> {
    const address = await listen(this.server, this.options.port, this.options.host);
    return address;
  }

  updateTls(tls: TlsOptions): void {
    this.server.setSecureContext(tls);
  }

  stopAccepting(): Promise<void> {
    this.draining = true;
    for (const socket of this.sockets) socket.pause();
    return stopListening(this.server, this.logs);
  }

  /** Ends every connection; one whose client does not close its side in time is cut off. */
  closeSessions(graceMs = 2000): void {
    for (const socket of this.sockets) {
      socket.end();
      setTimeout(() => socket.destroy(), graceMs).unref();
    }
  }

  private serve(socket: TLSSocket): void {
    const session = this.draining ? undefined : sessionFor(socket, LISTENER);
    if (!session) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    this.metrics.sessionsOpened.inc({ listener: LISTENER });
    this.metrics.sessionsActive.inc({ listener: LISTENER });
    const reader = new FrameReader();
    const backpressure = new SendBackpressure(socket, socket, () => socket.writableLength, this.options.maxSendBufferBytes, () => !this.draining, this.metrics, LISTENER);
    const writes = new TurnCoalescer(socket);
    const send = (frame: Buffer) => {
      if (socket.destroyed) return;
      writes.beforeWrite();
      socket.write(frame);
      backpressure.written();
    };
    let first = true;
    socket.on('data', (chunk: Buffer) => {
      // A keyless.v1 client (HTTP upgrade) at this port would otherwise wait for a 20 KiB frame
      // until it times out: answer 421 Misdirected Request at once, which keylessctl explains.
      const opening = first;
      first = false;
      if (opening && /^[A-Z]{3,7} \//.test(chunk.subarray(0, 9).toString('latin1'))) {
        this.metrics.protocolErrors.inc({ listener: LISTENER, kind: 'format' });
        socket.end('HTTP/1.1 421 Misdirected Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nthis port speaks the Cloudflare Keyless protocol, not keyless.v1\n');
        return;
      }
      for (const bytes of reader.push(chunk)) this.handle(session, bytes).then(send);
    });
    socket.on('error', (err) => this.logger.debug({ session: session.id, error: err.message }, 'compat connection error'));
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.metrics.sessionsActive.dec({ listener: LISTENER });
    });
  }

  /** One frame in, its answer out; never rejects. */
  private async handle(session: SessionInfo, bytes: Buffer): Promise<Buffer> {
    let request: CompatRequest;
    try {
      request = interpretFrame(decodeFrame(bytes));
    } catch (err) {
      const failure = err instanceof CompatFormatError ? err : new CompatFormatError(bytes.readUInt32BE(4), ErrorByte.format, (err as Error).message);
      this.metrics.protocolErrors.inc({ listener: LISTENER, kind: 'format' });
      this.logs.log('debug', `protocol_error/${LISTENER}/format`, { session: session.id, error: failure.message }, 'refusing a malformed compat request');
      return response(failure.id, Opcode.error, Buffer.from([failure.errorByte]));
    }
    const { operation, id } = request;
    if (operation.kind === 'ping') return response(id, Opcode.pong, operation.payload);
    const ref = compatKeyRef(request);
    if (!ref) return response(id, Opcode.error, Buffer.from([ErrorByte.keyNotFound]));
    try {
      const result =
        operation.kind === 'sign'
          ? await this.dispatcher.sign(session, ref, operation.algorithm, operation.scheme, operation.scheme.kind === 'ed25519' ? { message: operation.payload } : { digest: operation.payload }, request.facts)
          : await this.dispatcher.decrypt(session, ref, 'rsa-raw', operation.payload, request.facts);
      return response(id, Opcode.response, result);
    } catch (err) {
      return response(id, Opcode.error, Buffer.from([ERROR_BYTE[toKeylessError(err).code]]));
    }
  }
}
