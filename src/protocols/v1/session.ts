import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { BadRequestError, KeylessError, toKeylessError } from '../../errors';
import type { keyless } from '../../gen/keyless';
import type { Logger } from '../../log';
import type { Metrics } from '../../metrics/metrics';
import { decodeRequest, encodeBytesResponse, encodeResponse, errorResponse, ResponseBytesField, type RequestMessage } from './codec';
import { interpretRequest, requestContext, type V1Operation } from './operation';
import type { Dispatcher } from '../../core/dispatcher';
import { keyInfoMessage } from './key-info';
import type { RequestFacts, SessionInfo } from '../../core/request';
import type { LogLimiter } from '../../util/log-limiter';
import { SendBackpressure } from '../../transport/backpressure';
import { TurnCoalescer } from '../../transport/coalesce';

/** WebSocket close codes (RFC 6455 §7.4.1). */
export const CloseCode = { goingAway: 1001, protocolError: 1002, unsupportedData: 1003, tooBig: 1009 } as const;

type Answer = Omit<keyless.v1.Response.$Properties, 'id'>;

/**
 * One keyless.v1 session: decodes each binary message as a Request, runs it, and sends
 * the Response as soon as it is ready, whatever order requests finish in. A frame that
 * cannot be decoded cannot be answered by id, so it closes this session (1002) only.
 */
export class V1Session {
  private stopped = false;
  private readonly backpressure: SendBackpressure;
  private readonly writes: TurnCoalescer;

  constructor(
    private readonly ws: WebSocket,
    /** The connection under `ws`, as the HTTP server's upgrade handed it over: corked and watched for drain. */
    socket: Pick<Socket, 'cork' | 'uncork' | 'once'>,
    readonly info: SessionInfo,
    private readonly dispatcher: Dispatcher,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    maxSendBuffer: number,
    /** Rate limit for the protocol-error lines a client can cause at will. */
    private readonly logs?: LogLimiter,
  ) {
    this.writes = new TurnCoalescer(socket);
    this.backpressure = new SendBackpressure(socket, ws, () => ws.bufferedAmount, maxSendBuffer, () => !this.stopped, metrics, info.listener);
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.stopped) return; // shutting down: not acknowledged, so the client retries elsewhere
    if (!isBinary) return this.closeForProtocolError('text_frame', CloseCode.protocolError, 'text frames are not part of keyless.v1');
    let request: RequestMessage;
    try {
      request = decodeRequest(data);
    } catch {
      return this.closeForProtocolError('undecodable', CloseCode.protocolError, 'frame is not a keyless.v1 Request');
    }
    const id = request.id;
    // Signatures and decryptions, nearly every request, go straight to the dispatcher and
    // their answer is written by the fast encoder; the rest take the general path.
    if (request.op === 'sign' || request.op === 'decrypt') {
      const field = request.op === 'sign' ? ResponseBytesField.signature : ResponseBytesField.plaintext;
      this.bytesAnswer(request).then(
        (bytes) => this.send(encodeBytesResponse(id, field, bytes)),
        (err: unknown) => this.fail(id, err),
      );
      return;
    }
    this.answer(request).then(
      (answer) => this.send(encodeResponse({ id, ...answer })),
      (err: unknown) => this.fail(id, err),
    );
  }

  private fail(id: RequestMessage['id'], err: unknown): void {
    const failure = toKeylessError(err);
    // A KeylessError was already judged (and an INTERNAL one logged) where it was made, in
    // the dispatcher; only a failure of this session's own code is logged here.
    if (!(err instanceof KeylessError)) this.logger.error({ err, session: this.info.id }, 'request failed with an internal error');
    this.send(errorResponse(id, failure.code, failure.code === 'INTERNAL' ? 'internal error' : failure.message));
  }

  /** A sign or decrypt request as a dispatcher call, or a rejected promise for a bad request. */
  private bytesAnswer(request: RequestMessage): Promise<Buffer> {
    let operation: V1Operation;
    let facts: RequestFacts | undefined;
    try {
      operation = interpretRequest(request);
      facts = requestContext(request);
    } catch (err) {
      return Promise.reject(err);
    }
    if (operation.kind === 'sign') {
      return this.dispatcher.sign(this.info, operation.key, operation.algorithm, operation.scheme, operation.input, facts);
    }
    if (operation.kind === 'decrypt') {
      return this.dispatcher.decrypt(this.info, operation.key, operation.padding, operation.ciphertext, facts);
    }
    return Promise.reject(new BadRequestError('the request carries no operation'));
  }

  private async answer(request: RequestMessage): Promise<Answer> {
    const operation = interpretRequest(request);
    const facts = requestContext(request);
    switch (operation.kind) {
      case 'ping':
        return { pong: { payload: operation.payload } };
      case 'sign':
        return { signature: await this.dispatcher.sign(this.info, operation.key, operation.algorithm, operation.scheme, operation.input, facts) };
      case 'decrypt':
        return { plaintext: await this.dispatcher.decrypt(this.info, operation.key, operation.padding, operation.ciphertext, facts) };
      case 'listKeys':
        return { keys: { keys: this.dispatcher.listKeys(this.info).map(keyInfoMessage) } };
      case 'getKey':
        return { key: keyInfoMessage(this.dispatcher.getKey(this.info, operation.key)) };
    }
  }

  private send(bytes: Uint8Array): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.writes.beforeWrite();
    this.ws.send(bytes);
    this.backpressure.written();
  }

  /** Shutdown: no more requests are read; those in flight are still answered. */
  stopReading(): void {
    this.stopped = true;
    this.ws.pause();
  }

  /**
   * Ends the session with 1001. Reading resumes so the client's close frame arrives
   * (requests that come with it are ignored); a client that never answers is cut off.
   */
  goAway(graceMs: number): void {
    this.ws.resume();
    this.ws.close(CloseCode.goingAway, 'server shutting down');
    setTimeout(() => this.ws.terminate(), graceMs).unref();
  }

  private closeForProtocolError(kind: string, code: number, reason: string): void {
    this.metrics.protocolErrors.inc({ listener: this.info.listener, kind });
    const fields = { session: this.info.id, peer: this.info.peer, kind };
    if (this.logs) this.logs.log('warn', `protocol_error/${this.info.listener}/${kind}`, fields, `closing session: ${reason}`);
    else this.logger.warn(fields, `closing session: ${reason}`);
    this.ws.close(code, reason);
  }
}
