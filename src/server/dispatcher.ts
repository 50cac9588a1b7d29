import { digestLength, describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../crypto/algorithms';
import { hashMessage } from '../crypto/hashes';
import {
  BackendUnavailableError,
  BadRequestError,
  ForbiddenError,
  KeyNotFoundError,
  OverloadedError,
  UnsupportedError,
  toKeylessError,
} from '../errors';
import { describeKeyRef, type KeyRef, type KeyRegistry, type RegisteredKey } from '../keys/registry';
import type { Backend } from '../keys/types';
import type { Metrics } from '../metrics/metrics';
import { withTimeout } from '../util/timeout';
import type { RequestFacts, SessionInfo } from './session-info';

export type SignInput = { readonly digest: Buffer } | { readonly message: Buffer };

export interface DispatcherLimits {
  readonly maxInflightPerSession: number;
  readonly maxInflightTotal: number;
}

/**
 * The one place every private-key operation goes through, whichever listener decoded it:
 * in-flight limits, key lookup, input checks, then the backend. Listeners only translate
 * wire formats to these calls and KeylessErrors back to wire errors.
 */
export class Dispatcher {
  private inflightTotal = 0;
  /**
   * Backend calls not yet settled, per backend. A request past its deadline is answered
   * TIMEOUT but its call keeps running; counting calls until they settle keeps a hung
   * backend from accumulating unbounded work behind answered requests.
   */
  private readonly outstanding = new Map<Backend, number>();

  constructor(
    private readonly registry: () => KeyRegistry,
    private readonly limits: () => DispatcherLimits,
    private readonly metrics: Metrics,
  ) {}

  get inflight(): number {
    return this.inflightTotal;
  }

  async sign(session: SessionInfo, ref: KeyRef, algorithm: string, scheme: SignScheme, input: SignInput, _facts?: RequestFacts): Promise<Buffer> {
    return this.track(session, 'sign', algorithm, ref, async (key) => {
      const type = key.handle.publicKey.type;
      if (keyTypeOf(scheme) !== type) throw new UnsupportedError(`key ${key.handle.name} is ${type}; it cannot sign ${describeScheme(scheme)}`);
      return key.handle.sign(scheme, signingInput(scheme, input));
    });
  }

  async decrypt(session: SessionInfo, ref: KeyRef, padding: DecryptPadding, ciphertext: Buffer, _facts?: RequestFacts): Promise<Buffer> {
    return this.track(session, 'decrypt', padding, ref, async (key) => {
      if (key.handle.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${key.handle.name} is ${key.handle.publicKey.type}; only RSA keys decrypt`);
      if (!key.decryptAllowed) throw new ForbiddenError(`decryption is not enabled for key ${key.handle.name}`);
      const modulusBytes = Math.ceil(key.handle.publicKey.bits / 8);
      if (ciphertext.length !== modulusBytes) {
        throw new BadRequestError(`ciphertext for key ${key.handle.name} must be ${modulusBytes} bytes, got ${ciphertext.length}`);
      }
      return key.handle.decrypt(padding, ciphertext);
    });
  }

  listKeys(_session: SessionInfo): RegisteredKey[] {
    return this.registry().list();
  }

  getKey(_session: SessionInfo, ref: KeyRef): RegisteredKey {
    return this.lookup(ref);
  }

  private lookup(ref: KeyRef, registry = this.registry()): RegisteredKey {
    const key = registry.find(ref);
    if (!key) throw new KeyNotFoundError(`no key with ${describeKeyRef(ref)}`);
    return key;
  }

  private async track(
    session: SessionInfo,
    operation: 'sign' | 'decrypt',
    algorithm: string,
    ref: KeyRef,
    work: (key: RegisteredKey) => Promise<Buffer>,
  ): Promise<Buffer> {
    const limits = this.limits();
    let backend = 'none';
    if (session.inflight >= limits.maxInflightPerSession || this.inflightTotal >= limits.maxInflightTotal) {
      this.metrics.requests.inc({ listener: session.listener, operation, algorithm, backend, result: 'OVERLOADED' });
      throw new OverloadedError(
        session.inflight >= limits.maxInflightPerSession
          ? `this session already has ${session.inflight} requests in flight (limit ${limits.maxInflightPerSession})`
          : `the server has ${this.inflightTotal} requests in flight (limit ${limits.maxInflightTotal})`,
      );
    }
    const registry = this.registry();
    session.inflight += 1;
    this.inflightTotal += 1;
    registry.inflight += 1;
    this.metrics.inflight.inc({ listener: session.listener });
    const started = process.hrtime.bigint();
    try {
      const key = this.lookup(ref, registry);
      const store = key.handle.backend;
      backend = store.name;
      if (!store.healthy()) throw new BackendUnavailableError(`backend ${backend} is down; retry on another server`);
      const running = this.outstanding.get(store) ?? 0;
      if (running >= limits.maxInflightTotal) throw new BackendUnavailableError(`backend ${backend} has ${running} calls that have not returned; retry on another server`);
      this.outstanding.set(store, running + 1);
      const call = work(key).finally(() => this.outstanding.set(store, this.outstanding.get(store)! - 1));
      const result = await withTimeout(call, store.timeoutMs, `${operation} with key ${key.handle.name} on backend ${backend}`);
      this.metrics.requests.inc({ listener: session.listener, operation, algorithm, backend, result: 'ok' });
      this.metrics.backendDuration.observe({ backend, operation }, Number(process.hrtime.bigint() - started) / 1e9);
      return result;
    } catch (err) {
      const failure = toKeylessError(err);
      this.metrics.requests.inc({ listener: session.listener, operation, algorithm, backend, result: failure.code });
      throw failure;
    } finally {
      session.inflight -= 1;
      this.inflightTotal -= 1;
      registry.inflight -= 1;
      this.metrics.inflight.dec({ listener: session.listener });
    }
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
