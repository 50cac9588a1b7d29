import type { TLSSocket } from 'node:tls';
import { identityFromCertificate, type ClientIdentity } from './policy/identity';
import type { Membership, Policy } from './policy/policy';

export type ListenerName = 'keyless.v1' | 'cloudflare';

/** Facts about one authenticated session, fixed for its life. */
export interface SessionInfo {
  readonly id: string;
  readonly listener: ListenerName;
  /** `address:port` of the edge. */
  readonly peer: string;
  readonly identity: ClientIdentity;
  /** Requests this session has in flight; owned by the dispatcher. */
  inflight: number;
  /** The session's groups under the policy in force; recomputed when a reload brings a new policy. */
  membership?: { readonly policy: Policy; readonly groups: Membership };
}

/**
 * Optional facts about the end user's TLS connection, recorded in the audit log and usable by
 * policy: the one neutral shape both protocols map their request context onto (keyless.v1:
 * requestContext in src/protocols/v1/operation.ts; compat: interpretFrame in src/protocols/compat/request.ts).
 */
export interface RequestFacts {
  readonly sni?: string;
  readonly clientIp?: string;
  readonly serverIp?: string;
  readonly requestId?: string;
  readonly complianceRegion?: number;
}

let sessionCounter = 0;
/** Unique within this process and sortable by opening order; never derived from client data. */
export function nextSessionId(): string {
  sessionCounter += 1;
  return `${process.pid.toString(36)}-${sessionCounter.toString(36)}`;
}

/** The session of an authenticated TLS connection; undefined when it carries no client certificate. */
export function sessionFor(socket: TLSSocket, listener: ListenerName): SessionInfo | undefined {
  const certificate = socket.getPeerX509Certificate();
  if (!certificate) return undefined;
  return {
    id: nextSessionId(),
    listener,
    peer: `${socket.remoteAddress}:${socket.remotePort}`,
    identity: identityFromCertificate(certificate),
    inflight: 0,
  };
}
