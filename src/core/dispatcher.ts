import { digestLength, describeScheme, keyTypeOf, type AlgorithmName, type DecryptPadding, type SignScheme } from './crypto/algorithms';
import { hashMessage } from './crypto/hashes';
import type { AuditLog } from '../audit/log';
import { AuditRecords } from '../audit/record';
import { RefusalSummaries, SUMMARISED_RESULTS } from '../audit/refusals';
import { boundedText, FIELD_LIMITS } from '../util/bounded-text';
import {
  BackendUnavailableError,
  BadRequestError,
  ForbiddenError,
  KeyNotFoundError,
  OverloadedError,
  UnsupportedError,
  toKeylessError,
  type KeylessError,
} from '../errors';
import { describeKeyRef, type KeyRef, type KeyRegistry, type RegisteredKey } from './keys/registry';
import type { Backend } from './keys/types';
import type { Logger } from '../log';
import type { Metrics } from '../metrics/metrics';
import type { Membership, Operation, Policy } from './policy/policy';
import { DEFAULT_MAX_QUEUED, FairScheduler, backendParallelism, callCost } from './fair-scheduler';
import type { RequestFacts, SessionInfo } from './request';

/** What is asked of a key: a signature with a named algorithm, or a decryption with a padding. */
type OperationRequest = { readonly operation: 'sign'; readonly algorithm: AlgorithmName } | { readonly operation: 'decrypt' | 'decrypt_raw'; readonly padding: DecryptPadding };

export type SignInput = { readonly digest: Buffer } | { readonly message: Buffer };

/** What the dispatcher serves with; a reload swaps the whole of it at once. */
export interface ServingState {
  readonly registry: KeyRegistry;
  readonly policy: Policy;
  readonly maxInflightPerSession: number;
  readonly maxInflightTotal: number;
  /** Calls that may wait for a turn on one backend (FairScheduler); more are refused with OVERLOADED at once. */
  readonly maxQueuedPerBackend?: number;
}

export interface AuditSink {
  readonly log: AuditLog;
  /** true: an operation is answered only once its record is written, and refused while the log is unwritable. */
  readonly refuseUnlogged: boolean;
}

/**
 * The one place every private-key operation goes through, whichever listener decoded it:
 * in-flight limits, key lookup, access policy, input checks, the backend with its
 * deadline, and the audit record. Listeners only translate wire formats to these calls
 * and KeylessErrors back to wire errors.
 */
export class Dispatcher {
  private inflightTotal = 0;
  /**
   * Backend calls not yet settled, per backend. A request past its deadline is answered
   * TIMEOUT but its call keeps running; counting calls until they settle keeps a hung
   * backend from accumulating unbounded work behind answered requests.
   */
  private readonly outstanding = new Map<Backend, number>();
  /** Turns on each backend, round-robin across sessions, so one session's backlog cannot starve another. */
  private readonly scheduler = new FairScheduler(backendParallelism, () => this.state().maxQueuedPerBackend ?? DEFAULT_MAX_QUEUED);

  private readonly refusals: RefusalSummaries;
  private readonly records = new AuditRecords();

  constructor(
    private readonly state: () => ServingState,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly audit?: AuditSink,
  ) {
    this.refusals = new RefusalSummaries(
      (json) => void this.audit?.log.append(json).catch(() => {}),
      (who, result, count) => this.logger.warn({ client: JSON.parse(`{${who}}`) as unknown, result, count }, `${count} more ${result} refusals to the same client in the last second (summarised in the audit log)`),
    );
  }

  /** Writes the summaries of refusals still being counted; call before the audit log closes. */
  flushRefusals(): void {
    this.refusals.flush();
  }

  get inflight(): number {
    return this.inflightTotal;
  }

  /** `algorithm` names the request in metrics, policy and audit: a keyless.v1 algorithm, or the compat port's equivalent. */
  sign(session: SessionInfo, ref: KeyRef, algorithm: AlgorithmName, scheme: SignScheme, input: SignInput, facts?: RequestFacts): Promise<Buffer> {
    return this.track(session, { operation: 'sign', algorithm }, ref, facts, async (key) => {
      const type = key.handle.publicKey.type;
      if (keyTypeOf(scheme) !== type) throw new UnsupportedError(`key ${key.handle.name} is ${type}; it cannot sign ${describeScheme(scheme)}`);
      return key.handle.sign(scheme, signingInput(scheme, input));
    });
  }

  /**
   * Raw RSA (`rsa-raw`) is its own operation, `decrypt_raw`: it returns m^d for any m, so it
   * signs anything. It needs the key's `decrypt_raw: true` and, under a policy, that operation.
   */
  decrypt(session: SessionInfo, ref: KeyRef, padding: DecryptPadding, ciphertext: Buffer, facts?: RequestFacts): Promise<Buffer> {
    const operation: Operation = padding === 'rsa-raw' ? 'decrypt_raw' : 'decrypt';
    return this.track(session, { operation, padding }, ref, facts, async (key) => {
      if (key.handle.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${key.handle.name} is ${key.handle.publicKey.type}; only RSA keys decrypt`);
      if (operation === 'decrypt_raw' && !key.rawDecryptAllowed) throw new ForbiddenError(`raw RSA decryption (RSA_RAW) is not enabled for key ${key.handle.name} (decrypt_raw)`);
      if (operation === 'decrypt' && !key.decryptAllowed) throw new ForbiddenError(`decryption is not enabled for key ${key.handle.name}`);
      const modulusBytes = Math.ceil(key.handle.publicKey.bits / 8);
      if (ciphertext.length !== modulusBytes) {
        throw new BadRequestError(`ciphertext for key ${key.handle.name} must be ${modulusBytes} bytes, got ${ciphertext.length}`);
      }
      return key.handle.decrypt(padding, ciphertext);
    });
  }

  /** The keys this session may use. */
  listKeys(session: SessionInfo): RegisteredKey[] {
    const { registry, policy } = this.state();
    const member = this.membership(session, policy);
    return registry.list().filter((key) => policy.visible(member, key.handle.name));
  }

  /** A key the session may not use is reported as not found, so it learns nothing. */
  getKey(session: SessionInfo, ref: KeyRef): RegisteredKey {
    const { registry, policy } = this.state();
    const key = registry.find(ref);
    if (!key || !policy.visible(this.membership(session, policy), key.handle.name)) throw new KeyNotFoundError(`no key with ${describeKeyRef(ref)}`);
    return key;
  }

  /** Whether the audit log is writable (a readiness check). */
  auditWritable(): boolean {
    return this.audit === undefined || this.audit.log.writable();
  }

  private membership(session: SessionInfo, policy: Policy): Membership {
    if (session.membership?.policy !== policy) session.membership = { policy, groups: policy.membership(session.identity) };
    return session.membership.groups;
  }

  private async track(
    session: SessionInfo,
    request: OperationRequest,
    ref: KeyRef,
    facts: RequestFacts | undefined,
    work: (key: RegisteredKey) => Promise<Buffer>,
  ): Promise<Buffer> {
    const { operation } = request;
    const algorithm = request.operation === 'sign' ? request.algorithm : request.padding;
    const state = this.state();
    if (session.inflight >= state.maxInflightPerSession || this.inflightTotal >= state.maxInflightTotal) {
      this.metrics.recordRequest(session.listener, operation, algorithm, 'none', 'OVERLOADED', 0);
      throw new OverloadedError(
        session.inflight >= state.maxInflightPerSession
          ? `this session already has ${session.inflight} requests in flight (limit ${state.maxInflightPerSession})`
          : `the server has ${this.inflightTotal} requests in flight (limit ${state.maxInflightTotal})`,
      );
    }
    const { registry } = state;
    session.inflight += 1;
    this.inflightTotal += 1;
    registry.inflight += 1;
    this.metrics.inflightFor(session.listener).inc();
    const started = Date.now();
    const startedNs = process.hrtime.bigint();
    let key: RegisteredKey | undefined;
    let outcome: { result: Buffer } | { failure: KeylessError };
    try {
      key = registry.find(ref);
      if (!key) throw new KeyNotFoundError(`no key with ${describeKeyRef(ref)}`);
      this.authorize(session, state.policy, key, request, facts);
      if (this.audit?.refuseUnlogged && !this.audit.log.writable()) throw new BackendUnavailableError('the audit log cannot be written; refusing key operations until it can');
      outcome = { result: await this.call(key, operation, work, session) };
    } catch (err) {
      outcome = { failure: toKeylessError(err) };
      if (outcome.failure.code === 'INTERNAL') this.logger.error({ err, session: session.id }, 'request failed with an internal error');
    } finally {
      session.inflight -= 1;
      this.inflightTotal -= 1;
      registry.inflight -= 1;
      this.metrics.inflightFor(session.listener).dec();
    }
    const backend = key?.handle.backend.name ?? 'none';
    const result = 'result' in outcome ? 'ok' : outcome.failure.code;
    this.metrics.recordRequest(session.listener, operation, algorithm, backend, result, Number(process.hrtime.bigint() - startedNs) / 1e9);
    if ('failure' in outcome && SUMMARISED_RESULTS.has(result)) {
      // No refusal is silent, but a flood of them costs one full record and one log line per
      // client, key and result per second, plus a summary with the count.
      if (!this.refusals.admit(`${session.identity.fingerprint}|${session.listener}|${key?.handle.name ?? ''}`, result, () => this.records.sessionFields(session))) throw outcome.failure;
      const reason = boundedText(outcome.failure instanceof ForbiddenError ? (outcome.failure.reason ?? outcome.failure.message) : outcome.failure.message, 512);
      this.logger.warn(
        { session: session.id, peer: session.peer, subject: boundedText(session.identity.subject, FIELD_LIMITS.subject), key: key?.handle.name ?? boundedText(describeKeyRef(ref), FIELD_LIMITS.keyName), operation, result, reason },
        `refused ${operation} with ${key ? `key ${key.handle.name}` : 'an unknown key'}: ${result}: ${reason}`,
      );
    }
    if (this.audit) {
      const written = this.audit.log.append(
        this.records.operation({
          session,
          operation,
          algorithm,
          key: key ? key.handle : { requested: describeKeyRef(ref) },
          result,
          started,
          durationMs: Date.now() - started,
          context: facts,
        }),
      );
      if (this.audit.refuseUnlogged) await written;
      else written.catch(() => {});
    }
    if ('failure' in outcome) throw outcome.failure;
    return outcome.result;
  }

  private authorize(session: SessionInfo, policy: Policy, key: RegisteredKey, request: OperationRequest, facts: RequestFacts | undefined): void {
    const { operation } = request;
    const decision = policy.check(this.membership(session, policy), key.handle.name, operation, request.operation === 'sign' ? request.algorithm : undefined, facts?.complianceRegion);
    if (decision.allowed) return;
    this.metrics.policyDenials.inc({ key: key.handle.name });
    throw new ForbiddenError(`${operation} with key ${key.handle.name} is not allowed for this client`, decision.reason);
  }

  /**
   * Not async on purpose: a down or saturated backend refuses in the same tick, before the request counts as in flight.
   * The call then waits for its turn on the backend (FairScheduler: round-robin across sessions); its deadline
   * counts from here, so time spent waiting counts, and a call still waiting at its deadline never runs.
   */
  private call(key: RegisteredKey, operation: Operation, work: (key: RegisteredKey) => Promise<Buffer>, session: SessionInfo): Promise<Buffer> {
    const store = key.handle.backend;
    if (!store.healthy()) throw new BackendUnavailableError(`backend ${store.name} is down; retry on another server`);
    const running = this.outstanding.get(store) ?? 0;
    if (running >= this.state().maxInflightTotal) throw new BackendUnavailableError(`backend ${store.name} has ${running} calls that have not returned; retry on another server`);
    const cost = callCost(store, key.handle.publicKey.type);
    const hung = this.scheduler.stalled(store, cost);
    if (hung !== undefined) throw new BackendUnavailableError(`backend ${store.name} has ${hung} calls past their deadline that have not returned; retry on another server`);
    const what = `${operation} with key ${key.handle.name} on backend ${store.name}`;
    return this.scheduler.run(store, session, store.timeoutMs, what, () => {
      this.outstanding.set(store, (this.outstanding.get(store) ?? 0) + 1);
      const started = process.hrtime.bigint();
      return work(key).finally(() => {
        this.outstanding.set(store, this.outstanding.get(store)! - 1);
        this.metrics.recordBackendCall(store.name, operation, Number(process.hrtime.bigint() - started) / 1e9);
      });
    }, cost); // the scheduler's one deadline covers the wait for a slot and the call itself (TimeoutError)
  }
}

/** The bytes the backend signs: the given digest (length-checked), or the message hashed here. */
function signingInput(scheme: SignScheme, input: SignInput): Buffer {
  const expected = digestLength(scheme);
  if ('digest' in input) {
    if (expected === undefined) throw new BadRequestError('Ed25519 signs the message itself: send `message`, not `digest`');
    if (input.digest.length !== expected) {
      throw new BadRequestError(`${describeScheme(scheme)} needs a ${expected}-byte digest, got ${input.digest.length} bytes`);
    }
    return input.digest;
  }
  return scheme.kind === 'ed25519' ? input.message : hashMessage(scheme.hash, input.message);
}
