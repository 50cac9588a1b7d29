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
import type { Logger } from '../log';
import type { Metrics } from '../metrics/metrics';
import type { Membership, Operation, Policy } from './policy/policy';
import { DEFAULT_MAX_QUEUED, FairScheduler, backendParallelism, callCost, type Job } from './fair-scheduler';
import type { RequestFacts, SessionInfo } from './request';

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
    return this.track(session, new SignCall(this.metrics, algorithm, scheme, input), ref, facts);
  }

  /**
   * Raw RSA (`rsa-raw`) is its own operation, `decrypt_raw`: it returns m^d for any m, so it
   * signs anything. It needs the key's `decrypt_raw: true` and, under a policy, that operation.
   */
  decrypt(session: SessionInfo, ref: KeyRef, padding: DecryptPadding, ciphertext: Buffer, facts?: RequestFacts): Promise<Buffer> {
    return this.track(session, new DecryptCall(this.metrics, padding, ciphertext), ref, facts);
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

  /**
   * Runs one request through limits, key lookup, policy and the backend, then records it.
   * Not an async function, and no `throw` for a refusal: V8 builds a message with the throw
   * site for every exception thrown, and two per refused request were a fifth of the event
   * loop under a flood of refusals (docs/benchmarks.md, Overload). Never throws: every
   * outcome is the returned promise.
   */
  private track(session: SessionInfo, call: BackendCall, ref: KeyRef, facts: RequestFacts | undefined): Promise<Buffer> {
    const { operation, label } = call;
    const state = this.state();
    if (session.inflight >= state.maxInflightPerSession || this.inflightTotal >= state.maxInflightTotal) {
      this.metrics.recordRequest(session.listener, operation, label, 'none', 'OVERLOADED', 0);
      return Promise.reject(
        new OverloadedError(
          session.inflight >= state.maxInflightPerSession
            ? `this session already has ${session.inflight} requests in flight (limit ${state.maxInflightPerSession})`
            : `the server has ${this.inflightTotal} requests in flight (limit ${state.maxInflightTotal})`,
        ),
      );
    }
    const request = new Tracked(session, call, ref, facts, state.registry, this.metrics.inflightFor(session.listener));
    session.inflight += 1;
    this.inflightTotal += 1;
    request.registry.inflight += 1;
    request.gauge.inc();
    let failure: KeylessError | undefined;
    let pending: Promise<Buffer> | undefined;
    try {
      const key = state.registry.find(ref);
      request.key = key;
      if (!key) failure = new KeyNotFoundError(`no key with ${describeKeyRef(ref)}`);
      else failure = this.refusal(session, state.policy, key, call, facts);
      if (!failure && this.audit?.refuseUnlogged && !this.audit.log.writable()) failure = new BackendUnavailableError('the audit log cannot be written; refusing key operations until it can');
      if (!failure) pending = this.schedule(key!, call, session);
    } catch (err) {
      failure = this.judged(err, session);
    }
    if (!pending) {
      try {
        return Promise.resolve(this.settle(request, undefined, failure));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return pending.then(
      (result) => this.settle(request, result, undefined),
      (err: unknown) => this.settle(request, undefined, this.judged(err, session)),
    );
  }

  /** What a failure answers; one that is not a KeylessError is logged here, once, as INTERNAL. */
  private judged(err: unknown, session: SessionInfo): KeylessError {
    const failure = toKeylessError(err);
    if (failure.code === 'INTERNAL') this.logger.error({ err, session: session.id }, 'request failed with an internal error');
    return failure;
  }

  /** A request's end: it stops counting as in flight, is counted, summarised or logged if refused, and audited. */
  private settle(request: Tracked, result: Buffer | undefined, failure: KeylessError | undefined): Buffer | Promise<Buffer> {
    const { session, call, ref, key } = request;
    const { operation, label } = call;
    session.inflight -= 1;
    this.inflightTotal -= 1;
    request.registry.inflight -= 1;
    request.gauge.dec();
    const backend = key?.handle.backend.name ?? 'none';
    const outcome = failure ? failure.code : 'ok';
    this.metrics.recordRequest(session.listener, operation, label, backend, outcome, (performance.now() - request.startedMs) / 1000);
    if (failure && SUMMARISED_RESULTS.has(outcome)) {
      // No refusal is silent, but a flood of them costs one full record and one log line per
      // client, key and result per second, plus a summary with the count.
      if (!this.refusals.admit(`${session.identity.fingerprint}|${session.listener}|${key?.handle.name ?? ''}`, outcome, () => this.records.sessionFields(session))) return Promise.reject(failure);
      const reason = boundedText(failure instanceof ForbiddenError ? (failure.reason ?? failure.message) : failure.message, 512);
      this.logger.warn(
        { session: session.id, peer: session.peer, subject: boundedText(session.identity.subject, FIELD_LIMITS.subject), key: key?.handle.name ?? boundedText(describeKeyRef(ref), FIELD_LIMITS.keyName), operation, result: outcome, reason },
        `refused ${operation} with ${key ? `key ${key.handle.name}` : 'an unknown key'}: ${outcome}: ${reason}`,
      );
    }
    if (this.audit) {
      const written = this.audit.log.append(
        this.records.operation({
          session,
          operation,
          algorithm: label,
          key: key ? key.handle : { requested: describeKeyRef(ref) },
          result: outcome,
          started: request.started,
          durationMs: Date.now() - request.started,
          context: request.facts,
        }),
      );
      if (this.audit.refuseUnlogged) return written.then(() => (failure ? Promise.reject(failure) : result!));
      written.catch(() => {});
    }
    return failure ? Promise.reject(failure) : result!;
  }

  /** Why the policy refuses this call, or undefined when it allows it. */
  private refusal(session: SessionInfo, policy: Policy, key: RegisteredKey, call: BackendCall, facts: RequestFacts | undefined): ForbiddenError | undefined {
    const { operation } = call;
    const decision = policy.check(this.membership(session, policy), key.handle.name, operation, call instanceof SignCall ? call.label : undefined, facts?.complianceRegion);
    if (decision.allowed) return undefined;
    this.metrics.policyDenials.inc({ key: key.handle.name });
    return new ForbiddenError(`${operation} with key ${key.handle.name} is not allowed for this client`, decision.reason);
  }

  /**
   * Not async on purpose: a down or saturated backend refuses in the same tick, before the request counts as in flight.
   * The call then waits for its turn on the backend (FairScheduler: round-robin across sessions); its deadline
   * counts from here, so time spent waiting counts, and a call still waiting at its deadline never runs.
   */
  private schedule(key: RegisteredKey, call: BackendCall, session: SessionInfo): Promise<Buffer> {
    const store = key.handle.backend;
    if (!store.healthy()) throw new BackendUnavailableError(`backend ${store.name} is down; retry on another server`);
    // A request past its deadline is answered TIMEOUT but its call keeps running: counting calls
    // until they return keeps a hung backend from accumulating unbounded work behind answered requests.
    const running = this.scheduler.running(store);
    if (running >= this.state().maxInflightTotal) throw new BackendUnavailableError(`backend ${store.name} has ${running} calls that have not returned; retry on another server`);
    const cost = callCost(store, key.handle.publicKey.type);
    const hung = this.scheduler.stalled(store, cost);
    if (hung !== undefined) throw new BackendUnavailableError(`backend ${store.name} has ${hung} calls past their deadline that have not returned; retry on another server`);
    call.key = key;
    // The scheduler's one deadline covers the wait for a slot and the call itself (TimeoutError).
    return this.scheduler.run(store, session, store.timeoutMs, call, cost);
  }
}

/** One request from admission to its record: what settle() needs, in one object. */
class Tracked {
  readonly started = Date.now();
  readonly startedMs = performance.now();
  key: RegisteredKey | undefined;

  constructor(
    readonly session: SessionInfo,
    readonly call: BackendCall,
    readonly ref: KeyRef,
    readonly facts: RequestFacts | undefined,
    /** The registry the request was admitted under: a reload may swap the state before it ends. */
    readonly registry: KeyRegistry,
    readonly gauge: { inc(): void; dec(): void },
  ) {}
}

/** One operation on a key, as the scheduler runs it: a plain object, no closures per request. */
abstract class BackendCall implements Job<Buffer> {
  abstract readonly operation: Operation;
  /** The algorithm or padding: what names the request in metrics and audit. */
  abstract readonly label: AlgorithmName | DecryptPadding;
  /** Set once the key is found. */
  key!: RegisteredKey;
  private startedMs = 0;

  constructor(private readonly metrics: Metrics) {}

  start(): Promise<Buffer> {
    this.startedMs = performance.now();
    return this.run(this.key);
  }

  returned(): void {
    this.metrics.recordBackendCall(this.key.handle.backend.name, this.operation, (performance.now() - this.startedMs) / 1000);
  }

  describe(): string {
    return `${this.operation} with key ${this.key.handle.name} on backend ${this.key.handle.backend.name}`;
  }

  /** Checks what only the key can tell (its type, its decrypt flags) and calls the backend. */
  protected abstract run(key: RegisteredKey): Promise<Buffer>;
}

class SignCall extends BackendCall {
  readonly operation = 'sign';

  constructor(
    metrics: Metrics,
    readonly label: AlgorithmName,
    private readonly scheme: SignScheme,
    private readonly input: SignInput,
  ) {
    super(metrics);
  }

  protected run(key: RegisteredKey): Promise<Buffer> {
    const type = key.handle.publicKey.type;
    if (keyTypeOf(this.scheme) !== type) throw new UnsupportedError(`key ${key.handle.name} is ${type}; it cannot sign ${describeScheme(this.scheme)}`);
    return key.handle.sign(this.scheme, signingInput(this.scheme, this.input));
  }
}

class DecryptCall extends BackendCall {
  readonly operation: Operation;

  constructor(
    metrics: Metrics,
    readonly label: DecryptPadding,
    private readonly ciphertext: Buffer,
  ) {
    super(metrics);
    this.operation = label === 'rsa-raw' ? 'decrypt_raw' : 'decrypt';
  }

  protected run(key: RegisteredKey): Promise<Buffer> {
    const { handle } = key;
    if (handle.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${handle.name} is ${handle.publicKey.type}; only RSA keys decrypt`);
    if (this.operation === 'decrypt_raw' && !key.rawDecryptAllowed) throw new ForbiddenError(`raw RSA decryption (RSA_RAW) is not enabled for key ${handle.name} (decrypt_raw)`);
    if (this.operation === 'decrypt' && !key.decryptAllowed) throw new ForbiddenError(`decryption is not enabled for key ${handle.name}`);
    const modulusBytes = Math.ceil(handle.publicKey.bits / 8);
    if (this.ciphertext.length !== modulusBytes) throw new BadRequestError(`ciphertext for key ${handle.name} must be ${modulusBytes} bytes, got ${this.ciphertext.length}`);
    return handle.decrypt(this.label, this.ciphertext);
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
