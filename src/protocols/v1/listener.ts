import { createServer, type Server } from 'node:https';
import { listen, stopListening } from '../../transport/listen';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket, TlsOptions } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from '../../log';
import { SUBPROTOCOL } from './codec';
import type { Metrics } from '../../metrics/metrics';
import type { Dispatcher } from '../../core/dispatcher';
import { sessionFor } from '../../core/request';
import { connectionLimits, guardTlsServer } from '../../transport/tls';
import { CloseCode, V1Session } from './session';
import type { LogLimiter } from '../../util/log-limiter';

const LISTENER = 'keyless.v1' as const;

export interface V1ListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly path: string;
  readonly tls: TlsOptions;
  readonly maxFrameBytes: number;
  readonly maxSessions: number;
  /** Connections in the TLS handshake, in total and per source address (limits.max_pending_handshakes*). */
  readonly maxPendingHandshakes?: number;
  readonly maxPendingHandshakesPerAddress?: number;
  readonly maxSendBufferBytes: number;
  readonly pingIntervalMs: number;
}

/**
 * The keyless.v1 listener: HTTPS with mutual TLS, upgraded to a WebSocket on one path with
 * the keyless.v1 subprotocol. Anything else is refused before a session exists.
 */
export class V1Listener {
  private readonly server: Server;
  private readonly wss: WebSocketServer;
  private readonly sessions = new Map<WebSocket, V1Session>();
  private readonly alive = new WeakSet<WebSocket>();
  private heartbeat?: NodeJS.Timeout;
  private draining = false;
  private readonly logs: LogLimiter;

  constructor(
    private readonly options: V1ListenerOptions,
    private readonly dispatcher: Dispatcher,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {
    this.server = createServer(options.tls, (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' }).end(`keyless.v1 is spoken over a WebSocket on ${options.path}\n`);
    });
    this.logs = guardTlsServer(this.server, LISTENER, connectionLimits(options), metrics, logger);
    this.wss = new WebSocketServer({ noServer: true, maxPayload: options.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
    this.server.on('upgrade', (req, socket: Socket, head) => {
      const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
      const path = (req.url ?? '').split('?')[0];
      if (path !== options.path || !offered.includes(SUBPROTOCOL)) {
        this.metrics.connectionsRefused.inc({ listener: LISTENER, reason: 'bad_upgrade' });
        const why = path !== options.path ? `no WebSocket endpoint at ${path}; use ${options.path}` : `the WebSocket subprotocol ${SUBPROTOCOL} is required`;
        socket.end(`HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(why) + 1}\r\n\r\n${why}\n`);
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.openSession(ws, socket as TLSSocket));
    });
    this.wss.options.handleProtocols = () => SUBPROTOCOL;
  }

  async start(): Promise<AddressInfo> {
    const address = await listen(this.server, this.options.port, this.options.host);
    this.heartbeat = setInterval(() => this.pingSessions(), this.options.pingIntervalMs).unref();
    return address;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** New certificate, key or client CA for new handshakes; open sessions keep theirs. */
  updateTls(tls: TlsOptions): void {
    this.server.setSecureContext(tls);
  }

  /**
   * Stops accepting connections and stops reading requests on open sessions, so the
   * requests already in flight can finish and be answered; closeSessions() ends them.
   */
  stopAccepting(): Promise<void> {
    this.draining = true;
    clearInterval(this.heartbeat);
    for (const session of this.sessions.values()) session.stopReading();
    return stopListening(this.server, this.logs);
  }

  closeSessions(): void {
    for (const session of this.sessions.values()) session.goAway(2000);
    this.server.closeAllConnections();
  }

  private openSession(ws: WebSocket, socket: TLSSocket): void {
    if (this.draining) {
      this.metrics.connectionsRefused.inc({ listener: LISTENER, reason: 'shutting_down' });
      ws.close(CloseCode.goingAway, 'server shutting down');
      return;
    }
    const info = sessionFor(socket, LISTENER);
    if (!info) {
      ws.close(CloseCode.protocolError, 'no client certificate');
      return;
    }
    const session = new V1Session(ws, socket, info, this.dispatcher, this.metrics, this.logger, this.options.maxSendBufferBytes, this.logs);
    this.sessions.set(ws, session);
    this.alive.add(ws);
    this.metrics.sessionsOpened.inc({ listener: LISTENER });
    this.metrics.sessionsActive.inc({ listener: LISTENER });
    this.logger.debug({ session: info.id, peer: info.peer, subject: info.identity.subject }, 'session opened');
    ws.on('pong', () => this.alive.add(ws));
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the connection itself after an error (1009 for a frame over maxPayload).
      const kind = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'too_big' : 'undecodable';
      this.metrics.protocolErrors.inc({ listener: LISTENER, kind });
      this.logs.log('warn', `protocol_error/${LISTENER}/${kind}`, { session: info.id, peer: info.peer, kind, error: err.message }, 'closing session after a WebSocket error');
    });
    ws.on('close', () => {
      this.sessions.delete(ws);
      this.metrics.sessionsActive.dec({ listener: LISTENER });
      this.logger.debug({ session: info.id }, 'session closed');
    });
  }

  private pingSessions(): void {
    for (const ws of this.sessions.keys()) {
      if (!this.alive.has(ws)) {
        ws.terminate();
        continue;
      }
      this.alive.delete(ws);
      ws.ping();
    }
  }
}
