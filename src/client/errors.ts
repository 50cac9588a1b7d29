import { KeylessdError, KeylessError, TimeoutError, type ErrorCode, type KeylessdErrorOptions } from '../errors';

/** The server answered with an Error; `code` is the protocol's ErrorCode name. */
export class RemoteError extends KeylessError {
  constructor(code: ErrorCode, message: string) {
    super(code, message);
  }
}

/**
 * Client side: no answer to a request within the client's own deadline. A TimeoutError (code
 * TIMEOUT), so callers that handle timeouts see it; named apart from the server's TimeoutError,
 * which a server answers with on the wire (that one reaches a client as a RemoteError).
 */
export class ResponseTimeoutError extends TimeoutError {}

/** The other end answered, but with something the protocol does not allow there. */
export class UnexpectedAnswerError extends KeylessdError {
  readonly code = 'UNEXPECTED_ANSWER';
}

/** The session could not be opened or was lost; says which end refused what. */
export class ConnectionError extends KeylessdError {
  readonly code = 'CONNECTION_FAILED';

  constructor(message: string, options?: KeylessdErrorOptions) {
    super(message, options);
  }
}

/** A readable one-line reason for a failed TLS/WebSocket connection. */
export function describeConnectError(err: NodeJS.ErrnoException, target: string, files: { ca?: string; cert?: string }): string {
  const code = err.code ?? '';
  const text = err.message ?? String(err);
  if (code === 'ECONNREFUSED') return `cannot connect to ${target}: connection refused (is keylessd running there?)`;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `cannot resolve the host of ${target}`;
  if (code === 'ETIMEDOUT') return `connecting to ${target} timed out`;
  if (/CERT_HAS_EXPIRED/.test(code)) return `the server certificate of ${target} has expired`;
  if (/UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER|DEPTH_ZERO/.test(code)) {
    return `the server certificate of ${target} is not signed by the CA in ${files.ca ?? '(default CAs)'} (${code})`;
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `the server certificate of ${target} does not name that host: ${text}`;
  if (/alert (certificate required|unknown ca|bad certificate|certificate expired|certificate unknown)/i.test(text) || /ECONNRESET|socket hang up/i.test(`${code} ${text}`)) {
    return `${target} refused the client certificate ${files.cert ?? '(none given)'}: ${text}`;
  }
  if (/Unexpected server response: (\d+)/.test(text)) return `${target} refused the WebSocket upgrade (${text}); check the path and that it speaks keyless.v1`;
  return `cannot open a session to ${target}: ${text}`;
}

/** The pool has `maxPending` requests outstanding already: refused at once instead of queueing without bound. */
export class PoolBusyError extends KeylessdError {
  readonly code = 'POOL_BUSY';
}
