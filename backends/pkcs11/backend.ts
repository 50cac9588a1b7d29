import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as pkcs11js from 'pkcs11js';
import { describePublicKey } from '../../src/crypto/keyid';
import { BackendUnavailableError, ConfigError, CryptoFailureError, UnsupportedError } from '../../src/errors';
import type { Backend, SkippedKey } from '../../src/keys/types';
import type { Logger } from '../../src/log';
import { Pkcs11Key } from './key';
import { ckrCode, ckrName, loadModule } from './module';
import { resolvePin } from './pin';
import { ecSpki, rsaSpki } from './public-key';
import type { Pkcs11BackendConfig } from './schema';
import { SessionPool, type Lease } from './session-pool';
import { parsePkcs11Uri, type Pkcs11Uri } from './uri';

/** Errors after which the sessions (or the token) are gone: the backend goes down and recovers. */
const FAULTS = new Set([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_MEMORY,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_KEY_HANDLE_INVALID,
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_GENERAL_ERROR,
]);
/**
 * The token will not do this mechanism (or these parameters) with this key. Inputs are
 * checked before they reach the token, so CKR_ARGUMENTS_BAD means the parameters: SoftHSM
 * 2.6 answers it for OAEP with SHA-256, which it does not implement.
 */
const UNSUPPORTED = new Set([
  pkcs11js.CKR_MECHANISM_INVALID,
  pkcs11js.CKR_MECHANISM_PARAM_INVALID,
  pkcs11js.CKR_ARGUMENTS_BAD,
  pkcs11js.CKR_KEY_TYPE_INCONSISTENT,
  pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
]);
/** Where module-name=NAME is looked for. */
const MODULE_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu/pkcs11', '/usr/lib', '/usr/lib/pkcs11', '/usr/local/lib', '/usr/lib/softhsm'];
const MAX_BACKOFF_MS = 30_000;

const trimmed = (text: string) => text.replace(/[\s\0]+$/, '');
const ulong = (handle: pkcs11js.Handle) => Number(handle.readBigUInt64LE(0));

/**
 * Keys on a PKCS#11 token. One session per operation from a pool; the hot path makes
 * only C_SignInit/C_DecryptInit synchronously (they do no cryptography) and the
 * operation itself asynchronously, so the event loop never waits on the token. A fault
 * (sessions invalidated, token removed, logged out) takes the backend down: requests get
 * BACKEND_UNAVAILABLE at once while it reconnects by itself with backoff.
 */
export class Pkcs11Backend implements Backend {
  readonly kind = 'pkcs11' as const;
  readonly name: string;
  readonly timeoutMs: number;
  private readonly uri: Pkcs11Uri;
  private readonly field: string;
  private module!: pkcs11js.PKCS11;
  private slot!: pkcs11js.Handle;
  private pin?: string;
  private mechanisms = new Set<number>();
  private sessions: pkcs11js.Handle[] = [];
  private readonly pool: SessionPool;
  private keys: Pkcs11Key[] = [];
  private up = false;
  private closed = false;
  private backoffMs = 100;
  private retry?: NodeJS.Timeout;

  constructor(
    private readonly config: Pkcs11BackendConfig,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
    this.field = `backends.${config.name}.uri`;
    this.uri = parsePkcs11Uri(config.uri);
    this.pool = new SessionPool(config.max_queue);
  }

  async open(): Promise<{ keys: Pkcs11Key[]; skipped: SkippedKey[] }> {
    this.module = this.loadModule();
    this.pin = resolvePin(this.uri, this.field);
    this.slot = this.findSlot();
    this.connect();
    const { keys, skipped } = this.discover();
    this.keys = keys;
    for (const s of skipped) this.logger.warn({ backend: this.name, object: s.source, reason: s.reason }, `skipping PKCS#11 object ${s.source}: ${s.reason}`);
    this.up = true;
    return { keys, skipped };
  }

  healthy(): boolean {
    return this.up;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.up = false;
    clearTimeout(this.retry);
    this.pool.clear(new BackendUnavailableError(`backend ${this.name} is closed`));
    this.closeSessions();
  }

  /** One operation on one pooled session. */
  async run(key: Pkcs11Key, operation: 'sign' | 'decrypt', mechanism: pkcs11js.Mechanism, data: Buffer, outputLength: number): Promise<Buffer> {
    if (!this.up) throw new BackendUnavailableError(`backend ${this.name} is reconnecting to its token`);
    if (!this.mechanisms.has(mechanism.mechanism)) throw new UnsupportedError(`the token behind backend ${this.name} does not offer mechanism 0x${mechanism.mechanism.toString(16)} for key ${key.name}`);
    const lease = await this.pool.acquire();
    try {
      if (operation === 'sign') {
        this.module.C_SignInit(lease.session, mechanism, key.object);
        return await this.module.C_SignAsync(lease.session, data, Buffer.alloc(outputLength));
      }
      this.module.C_DecryptInit(lease.session, mechanism, key.object);
      return await this.module.C_DecryptAsync(lease.session, data, Buffer.alloc(outputLength));
    } catch (err) {
      throw this.failure(err, lease, `${operation} with key ${key.name}`);
    } finally {
      if (this.up) this.pool.release(lease);
    }
  }

  private failure(err: unknown, _lease: Lease, what: string): Error {
    const code = ckrCode(err);
    if (code !== undefined && FAULTS.has(code)) {
      this.down(`${what} failed with ${ckrName(err)}`);
      return new BackendUnavailableError(`backend ${this.name} lost its token (${ckrName(err)}); retry on another server`);
    }
    if (code !== undefined && UNSUPPORTED.has(code)) return new UnsupportedError(`${what}: the token does not support this mechanism or its parameters (${ckrName(err)})`);
    return new CryptoFailureError(`${what} failed: ${ckrName(err)}`);
  }

  private loadModule(): pkcs11js.PKCS11 {
    let path = this.uri.modulePath;
    if (!path && this.uri.moduleName) {
      const name = this.uri.moduleName.endsWith('.so') ? this.uri.moduleName : `${this.uri.moduleName}.so`;
      path = MODULE_DIRS.map((dir) => `${dir}/${name}`).find(existsSync);
      if (!path) throw new ConfigError(this.field, `module-name ${this.uri.moduleName}: no ${name} in ${MODULE_DIRS.join(', ')}; give module-path instead`);
    }
    if (!path) throw new ConfigError(this.field, 'names no PKCS#11 module: add ?module-path=/absolute/path/to/module.so');
    if (!existsSync(path)) throw new ConfigError(this.field, `module-path ${path} does not exist`);
    try {
      return loadModule(path);
    } catch (err) {
      throw new ConfigError(this.field, `cannot load the PKCS#11 module ${path}: ${ckrName(err)}`);
    }
  }

  private describeToken(): string {
    const u = this.uri;
    const parts = [u.token && `token=${u.token}`, u.serial && `serial=${u.serial}`, u.manufacturer && `manufacturer=${u.manufacturer}`, u.model && `model=${u.model}`, u.slotId !== undefined && `slot-id=${u.slotId}`];
    return parts.filter(Boolean).join(';') || '(any token)';
  }

  private findSlot(): pkcs11js.Handle {
    const u = this.uri;
    const found: string[] = [];
    for (const slot of this.module.C_GetSlotList(true)) {
      const token = this.module.C_GetTokenInfo(slot);
      if (!(token.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) continue;
      const slotInfo = this.module.C_GetSlotInfo(slot);
      found.push(trimmed(token.label));
      if (u.token !== undefined && trimmed(token.label) !== u.token) continue;
      if (u.serial !== undefined && trimmed(token.serialNumber) !== u.serial) continue;
      if (u.manufacturer !== undefined && trimmed(token.manufacturerID) !== u.manufacturer) continue;
      if (u.model !== undefined && trimmed(token.model) !== u.model) continue;
      if (u.slotId !== undefined && ulong(slot) !== u.slotId) continue;
      if (u.slotDescription !== undefined && trimmed(slotInfo.slotDescription) !== u.slotDescription) continue;
      if (u.slotManufacturer !== undefined && trimmed(slotInfo.manufacturerID) !== u.slotManufacturer) continue;
      return slot;
    }
    throw new ConfigError(this.field, `no token matches ${this.describeToken()} (tokens present: ${found.length ? found.sort().map((l) => `"${l}"`).join(', ') : 'none'})`);
  }

  /** Opens the pool's sessions and logs in once (the login is shared by all sessions of the process). */
  private connect(): void {
    this.closeSessions();
    this.mechanisms = new Set(this.module.C_GetMechanismList(this.slot));
    for (let i = 0; i < this.config.pool_size; i++) this.sessions.push(this.module.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
    if (this.pin !== undefined) {
      try {
        this.module.C_Login(this.sessions[0]!, pkcs11js.CKU_USER, this.pin);
      } catch (err) {
        const code = ckrCode(err);
        if (code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
          this.closeSessions();
          if (code === pkcs11js.CKR_PIN_INCORRECT) throw new ConfigError(this.field, `wrong PIN for token ${this.describeToken()}`);
          if (code === pkcs11js.CKR_PIN_LOCKED) throw new ConfigError(this.field, `the PIN of token ${this.describeToken()} is locked`);
          throw new ConfigError(this.field, `cannot log in to token ${this.describeToken()}: ${ckrName(err)}`);
        }
      }
    }
    this.pool.reset(this.sessions);
  }

  private closeSessions(): void {
    // Our own sessions only: C_CloseAllSessions would also end other backends' sessions on this token.
    for (const session of this.sessions.splice(0)) {
      try {
        this.module.C_CloseSession(session);
      } catch {
        // already gone with the token
      }
    }
  }

  private findObjects(template: pkcs11js.Template): pkcs11js.Handle[] {
    const session = this.sessions[0]!;
    this.module.C_FindObjectsInit(session, template);
    try {
      return this.module.C_FindObjects(session, 10_000);
    } finally {
      this.module.C_FindObjectsFinal(session);
    }
  }

  private attributes(object: pkcs11js.Handle, types: number[]): Map<number, Buffer> {
    const result = new Map<number, Buffer>();
    for (const type of types) {
      try {
        const [attribute] = this.module.C_GetAttributeValue(this.sessions[0]!, object, [{ type }]);
        if (attribute?.value) result.set(type, attribute.value as Buffer);
      } catch {
        // absent or sensitive: the caller decides whether it needed it
      }
    }
    return result;
  }

  /** The DER SPKI of a private key: from its own attributes (RSA), else the public key or certificate with the same CKA_ID. */
  private spkiOf(object: pkcs11js.Handle, keyType: number, id: Buffer): Buffer {
    if (keyType === pkcs11js.CKK_RSA) {
      const a = this.attributes(object, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
      if (a.has(pkcs11js.CKA_MODULUS) && a.has(pkcs11js.CKA_PUBLIC_EXPONENT)) return rsaSpki(a.get(pkcs11js.CKA_MODULUS)!, a.get(pkcs11js.CKA_PUBLIC_EXPONENT)!);
    }
    const [publicKey] = this.findObjects([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_ID, value: id }]);
    if (publicKey) {
      const a = this.attributes(publicKey, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT, pkcs11js.CKA_EC_PARAMS, pkcs11js.CKA_EC_POINT]);
      if (a.has(pkcs11js.CKA_EC_POINT)) return ecSpki(a.get(pkcs11js.CKA_EC_PARAMS)!, a.get(pkcs11js.CKA_EC_POINT)!);
      if (a.has(pkcs11js.CKA_MODULUS)) return rsaSpki(a.get(pkcs11js.CKA_MODULUS)!, a.get(pkcs11js.CKA_PUBLIC_EXPONENT)!);
    }
    const [certificate] = this.findObjects([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE }, { type: pkcs11js.CKA_ID, value: id }]);
    if (certificate) {
      const der = this.attributes(certificate, [pkcs11js.CKA_VALUE]).get(pkcs11js.CKA_VALUE);
      if (der) return new X509Certificate(der).publicKey.export({ format: 'der', type: 'spki' });
    }
    throw new Error('its public half is not on the token (no public key or certificate object with the same CKA_ID)');
  }

  private discover(): { keys: Pkcs11Key[]; skipped: SkippedKey[] } {
    const u = this.uri;
    const skipped: SkippedKey[] = [];
    if (Object.keys(u.vendor).length > 0) return { keys: [], skipped: [{ source: this.config.uri.split('?')[0]!, reason: `vendor attributes ${Object.keys(u.vendor).join(', ')} match no object` }] };
    if (u.type !== undefined && u.type !== 'private') return { keys: [], skipped: [{ source: `type=${u.type}`, reason: 'keylessd serves private keys; the URI names another object type' }] };
    const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }];
    if (u.object !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: u.object });
    if (u.id !== undefined) template.push({ type: pkcs11js.CKA_ID, value: u.id });
    const keys: Pkcs11Key[] = [];
    for (const object of this.findObjects(template)) {
      const a = this.attributes(object, [pkcs11js.CKA_LABEL, pkcs11js.CKA_ID, pkcs11js.CKA_KEY_TYPE]);
      const id = a.get(pkcs11js.CKA_ID) ?? Buffer.alloc(0);
      const label = a.get(pkcs11js.CKA_LABEL)?.toString('utf8') ?? '';
      const name = label || `id-${id.toString('hex')}`;
      try {
        const keyType = Number(a.get(pkcs11js.CKA_KEY_TYPE)?.readBigUInt64LE(0) ?? -1);
        keys.push(new Pkcs11Key(name, this, describePublicKey(this.spkiOf(object, keyType, id)), id, object));
      } catch (err) {
        skipped.push({ source: `${this.describeToken()};object=${name}`, reason: (err as Error).message });
      }
    }
    if (keys.length === 0 && skipped.length === 0) skipped.push({ source: this.config.uri.split('?')[0]!, reason: 'no private key on the token matches the URI' });
    return { keys, skipped };
  }

  private down(reason: string): void {
    if (!this.up || this.closed) return;
    this.up = false;
    this.logger.warn({ backend: this.name, reason }, `backend ${this.name} is down (${reason}); reconnecting`);
    this.pool.clear(new BackendUnavailableError(`backend ${this.name} lost its token; retry on another server`));
    this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.recover(), this.backoffMs).unref();
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
  }

  private recover(): void {
    if (this.closed) return;
    try {
      this.slot = this.findSlot();
      this.connect();
      const { keys } = this.discover();
      for (const key of this.keys) {
        const again = keys.find((k) => k.id.equals(key.id) && k.name === key.name && k.publicKey.ski.equals(key.publicKey.ski));
        if (again) key.object = again.object;
      }
      this.up = true;
      this.backoffMs = 100;
      this.logger.info({ backend: this.name }, `backend ${this.name} reconnected to its token`);
    } catch (err) {
      this.logger.warn({ backend: this.name, error: (err as Error).message, retry_ms: this.backoffMs }, `backend ${this.name} still cannot reach its token: ${(err as Error).message}`);
      this.scheduleRecovery();
    }
  }
}
