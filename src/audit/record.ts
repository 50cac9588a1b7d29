import { boundedText, FIELD_LIMITS } from '../util/bounded-text';

/** Who asked: the facts of a session, fixed for its life. */
export interface AuditSession {
  readonly id: string;
  readonly identity: { readonly subject: string; readonly fingerprint: string };
  /** `address:port` of the edge. */
  readonly peer: string;
  readonly listener: string;
}

/** The key a request used: found (a key handle: name and SKI), or what the client asked for. */
export type AuditKey = { readonly name: string; readonly publicKey: { readonly ski: Buffer } } | { readonly requested: string };

/** One private-key operation, allowed, refused or failed: what the dispatcher hands the audit log. */
export interface OperationEvent {
  readonly session: AuditSession;
  /** `sign`, `decrypt` or `decrypt_raw`. */
  readonly operation: string;
  /** A keyless.v1 algorithm name or decrypt padding: protocol tokens, never client text. */
  readonly algorithm: string;
  readonly key: AuditKey;
  /** `ok` or the error code. */
  readonly result: string;
  /** When the request was received (ms since the epoch). */
  readonly started: number;
  readonly durationMs: number;
  /** What the request said about the end user's connection (already bounded by the protocol). */
  readonly context?: AuditContext;
}

export interface AuditContext {
  readonly sni?: string;
  readonly clientIp?: string;
  readonly serverIp?: string;
  readonly requestId?: string;
  readonly complianceRegion?: number;
}

/**
 * The one place that decides the bytes of an operation record. On the request path: a
 * session's fixed fields and a key's fields are serialised once and cached (by object,
 * so they go with the session or the key set); the rest are protocol tokens and numbers
 * that need no escaping. Client-supplied text is bounded here too.
 */
export class AuditRecords {
  private readonly sessions = new WeakMap<AuditSession, string>();
  private readonly keys = new WeakMap<AuditKey, string>();

  /** `"session":…,"client":{…},"peer":…,"listener":…` */
  sessionFields(session: AuditSession): string {
    let fields = this.sessions.get(session);
    if (fields === undefined) {
      fields = JSON.stringify({
        session: session.id,
        client: { subject: boundedText(session.identity.subject, FIELD_LIMITS.subject), fingerprint: session.identity.fingerprint },
        peer: session.peer,
        listener: session.listener,
      }).slice(1, -1);
      this.sessions.set(session, fields);
    }
    return fields;
  }

  operation(event: OperationEvent): string {
    const context = event.context && Object.values(event.context).some((value) => value !== undefined) ? `,"context":${JSON.stringify(event.context)}` : '';
    return `{"time":"${new Date(event.started).toISOString()}",${this.sessionFields(event.session)},"operation":"${event.operation}","algorithm":"${event.algorithm}","key":${this.keyJson(event.key)},"result":"${event.result}","duration_ms":${event.durationMs}${context}}`;
  }

  private keyJson(key: AuditKey): string {
    if ('requested' in key) return JSON.stringify({ name: boundedText(key.requested, FIELD_LIMITS.keyName) });
    let json = this.keys.get(key);
    if (json === undefined) {
      json = JSON.stringify({ name: key.name, ski: key.publicKey.ski.toString('hex') });
      this.keys.set(key, json);
    }
    return json;
  }
}
