import { existsSync } from 'node:fs';
import * as pkcs11js from 'pkcs11js';
import { BackendUnavailableError, ConfigError, CryptoFailureError, KeyNotFoundError, KeylessError, TimeoutError, UnsupportedError } from '../../src/errors';
import type { Backend, SkippedKey } from '../../src/keys/types';
import type { Logger } from '../../src/log';
import { Pkcs11Key } from './key';
import { ckrCode, ckrName, initialize, loadModule } from './module';
import { resolvePin } from './pin';
import type { Pkcs11BackendConfig } from './schema';
import { SessionPool } from './session-pool';
import { TokenObjects, type FoundKey } from './token-objects';
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
  // A session stuck in an unfinished operation: only fresh sessions cure it.
  pkcs11js.CKR_OPERATION_ACTIVE,
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
const FIRST_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 30_000;

const trimmed = (text: string) => text.replace(/[\s\0]+$/, '');
const ulong = (handle: pkcs11js.Handle) => handle.readBigUInt64LE(0);

/**
 * Keys on a PKCS#11 token. One session per operation from a pool; the hot path makes
 * only C_SignInit/C_DecryptInit synchronously (they do no cryptography) and the
 * operation itself asynchronously, so the event loop never waits on the token's
 * cryptography. A fault (sessions invalidated, token removed, logged out, module
 * finalized) takes the backend down: requests get BACKEND_UNAVAILABLE at once while it
 * reconnects by itself with exponential backoff.
 */
export class Pkcs11Backend implements Backend {
  readonly kind = 'pkcs11' as const;
  readonly name: string;
  readonly timeoutMs: number;
  private readonly uri: Pkcs11Uri;
  /** The config field errors name. */
  private readonly field: string;
  private module?: pkcs11js.PKCS11;
  private pin?: string;
  private mechanisms = new Set<number>();
  private readonly pool: SessionPool;
  private keys: Pkcs11Key[] = [];
  private up = false;
  private closed = false;
  private backoffMs = FIRST_BACKOFF_MS;
  private retry?: NodeJS.Timeout;

  constructor(
    private readonly config: Pkcs11BackendConfig,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
    this.field = `backends.${config.name}.uri`;
    this.uri = parsePkcs11Uri(config.uri);
    this.pool = new SessionPool(config.max_queue, (session) => this.closeSession(session));
  }

  /** Connects (or, on reload, reconnects) and lists the keys; sessions busy with a request finish first. */
  async open(): Promise<{ keys: Pkcs11Key[]; skipped: SkippedKey[] }> {
    this.closed = false;
    this.module ??= this.loadModule();
    this.pin = resolvePin(this.uri, this.field);
    clearTimeout(this.retry);
    const { found, skipped } = this.connect(this.module);
    this.keys = found.map((k) => new Pkcs11Key(k.name, this, k.publicKey, k.id, k.object));
    for (const s of skipped) this.logger.warn({ backend: this.name, object: s.source, reason: s.reason }, `skipping PKCS#11 object ${s.source}: ${s.reason}`);
    this.up = true;
    this.backoffMs = FIRST_BACKOFF_MS;
    return { keys: this.keys, skipped };
  }

  healthy(): boolean {
    return this.up;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.up = false;
    clearTimeout(this.retry);
    this.pool.retire(new BackendUnavailableError(`backend ${this.name} is closed`));
  }

  /** One operation on one pooled session. */
  async run(key: Pkcs11Key, operation: 'sign' | 'decrypt', mechanism: pkcs11js.Mechanism, data: Buffer, outputLength: number): Promise<Buffer> {
    if (!this.up) throw new BackendUnavailableError(`backend ${this.name} is reconnecting to its token; retry on another server`);
    if (!this.mechanisms.has(mechanism.mechanism)) throw new UnsupportedError(`the token behind backend ${this.name} does not offer mechanism 0x${mechanism.mechanism.toString(16)} for key ${key.name}`);
    const session = this.pool.take() ?? (await this.waitForSession(`${operation} with key ${key.name}`));
    const module = this.module!;
    try {
      const object = key.object;
      if (!object) throw new KeyNotFoundError(`key ${key.name} is no longer on the token of backend ${this.name}`);
      if (operation === 'sign') {
        module.C_SignInit(session, mechanism, object);
        return await module.C_SignAsync(session, data, Buffer.alloc(outputLength));
      }
      module.C_DecryptInit(session, mechanism, object);
      return await module.C_DecryptAsync(session, data, Buffer.alloc(outputLength));
    } catch (err) {
      throw this.failure(err, session, `${operation} with key ${key.name}`);
    } finally {
      this.pool.release(session);
    }
  }

  private async waitForSession(what: string): Promise<pkcs11js.Handle> {
    const queuedAt = Date.now();
    const session = await this.pool.wait();
    if (Date.now() - queuedAt < this.timeoutMs) return session;
    // The dispatcher has answered TIMEOUT already: spare the token the work.
    this.pool.release(session);
    throw new TimeoutError(`${what} waited ${this.timeoutMs} ms for a PKCS#11 session`);
  }

  private failure(err: unknown, session: pkcs11js.Handle, what: string): KeylessError {
    if (err instanceof KeylessError) return err;
    const code = ckrCode(err);
    if (code !== undefined && FAULTS.has(code)) {
      // A session retired by an earlier fault reports that fault again: no second recovery.
      if (this.pool.isInService(session)) this.down(`${what} failed with ${ckrName(err)}`);
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
    let module: pkcs11js.PKCS11;
    try {
      module = loadModule(path);
    } catch (err) {
      throw new ConfigError(this.field, `cannot load the PKCS#11 module ${path}: ${ckrName(err)}`);
    }
    this.checkLibrary(module, path);
    return module;
  }

  /** library-manufacturer, library-description and library-version select the module itself. */
  private checkLibrary(module: pkcs11js.PKCS11, path: string): void {
    const u = this.uri;
    if (u.libraryManufacturer === undefined && u.libraryDescription === undefined && u.libraryVersion === undefined) return;
    const info = module.C_GetInfo();
    const mismatch =
      (u.libraryManufacturer !== undefined && trimmed(info.manufacturerID) !== u.libraryManufacturer) ||
      (u.libraryDescription !== undefined && trimmed(info.libraryDescription) !== u.libraryDescription) ||
      (u.libraryVersion !== undefined && (info.libraryVersion.major !== u.libraryVersion.major || info.libraryVersion.minor !== u.libraryVersion.minor));
    if (mismatch) {
      const actual = `"${trimmed(info.manufacturerID)}", "${trimmed(info.libraryDescription)}", version ${info.libraryVersion.major}.${info.libraryVersion.minor}`;
      throw new ConfigError(this.field, `the module ${path} (${actual}) does not match the URI's library attributes`);
    }
  }

  private describeToken(): string {
    const u = this.uri;
    const parts = [u.token && `token=${u.token}`, u.serial && `serial=${u.serial}`, u.manufacturer && `manufacturer=${u.manufacturer}`, u.model && `model=${u.model}`, u.slotId !== undefined && `slot-id=${u.slotId}`];
    return parts.filter(Boolean).join(';') || '(any token)';
  }

  private findSlot(module: pkcs11js.PKCS11): pkcs11js.Handle {
    const u = this.uri;
    const present: string[] = [];
    for (const slot of module.C_GetSlotList(true)) {
      const token = module.C_GetTokenInfo(slot);
      if (!(token.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) continue;
      const slotInfo = module.C_GetSlotInfo(slot);
      present.push(trimmed(token.label));
      if (u.token !== undefined && trimmed(token.label) !== u.token) continue;
      if (u.serial !== undefined && trimmed(token.serialNumber) !== u.serial) continue;
      if (u.manufacturer !== undefined && trimmed(token.manufacturerID) !== u.manufacturer) continue;
      if (u.model !== undefined && trimmed(token.model) !== u.model) continue;
      if (u.slotId !== undefined && ulong(slot) !== u.slotId) continue;
      if (u.slotDescription !== undefined && trimmed(slotInfo.slotDescription) !== u.slotDescription) continue;
      if (u.slotManufacturer !== undefined && trimmed(slotInfo.manufacturerID) !== u.slotManufacturer) continue;
      if (this.pin === undefined && token.flags & pkcs11js.CKF_LOGIN_REQUIRED) {
        throw new ConfigError(this.field, `token ${this.describeToken()} needs a login: add pin-source=file:/path or pin-value to the URI`);
      }
      return slot;
    }
    throw new ConfigError(this.field, `no token matches ${this.describeToken()} (tokens present: ${present.length ? present.sort().map((l) => `"${l}"`).join(', ') : 'none'})`);
  }

  /**
   * Opens a fresh set of sessions, logs in, finds the keys, and only then retires the old
   * sessions: the token never has none of ours open, which would log it out. The login is
   * per token and process, shared with any other backend on the same token.
   */
  private connect(module: pkcs11js.PKCS11): { found: FoundKey[]; skipped: SkippedKey[] } {
    const slot = this.findSlot(module);
    const mechanisms = new Set(module.C_GetMechanismList(slot));
    const sessions: pkcs11js.Handle[] = [];
    try {
      for (let i = 0; i < this.config.pool_size; i++) sessions.push(module.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
      this.login(module, sessions[0]!);
      const keys = new TokenObjects(module, sessions[0]!).privateKeys(this.uri, this.describeToken());
      this.mechanisms = mechanisms;
      this.pool.retire();
      this.pool.fill(sessions);
      return keys;
    } catch (err) {
      for (const session of sessions) this.closeSession(session);
      throw err;
    }
  }

  private login(module: pkcs11js.PKCS11, session: pkcs11js.Handle): void {
    if (this.pin === undefined) return;
    try {
      module.C_Login(session, pkcs11js.CKU_USER, this.pin);
    } catch (err) {
      const code = ckrCode(err);
      if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN) return;
      if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LEN_RANGE) throw new ConfigError(this.field, `wrong PIN for token ${this.describeToken()}`);
      if (code === pkcs11js.CKR_PIN_LOCKED) throw new ConfigError(this.field, `the PIN of token ${this.describeToken()} is locked`);
      throw new ConfigError(this.field, `cannot log in to token ${this.describeToken()}: ${ckrName(err)}`);
    }
  }

  private closeSession(session: pkcs11js.Handle): void {
    // Our own sessions only: C_CloseAllSessions would also end other backends' sessions on this token.
    try {
      this.module?.C_CloseSession(session);
    } catch {
      // already gone with the token
    }
  }

  private down(reason: string): void {
    if (!this.up || this.closed) return;
    this.up = false;
    this.logger.warn({ backend: this.name, reason }, `backend ${this.name} is down (${reason}); reconnecting`);
    this.pool.retire(new BackendUnavailableError(`backend ${this.name} lost its token; retry on another server`));
    this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.recover(), this.backoffMs).unref();
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
  }

  /** Reconnects and finds each key again by label, id and public key; synchronous, once per backoff step. */
  private recover(): void {
    if (this.closed || !this.module) return;
    try {
      initialize(this.module); // in case something finalized the module underneath us
      const { found } = this.connect(this.module);
      for (const key of this.keys) {
        const again = found.find((k) => k.name === key.name && k.id.equals(key.id) && k.publicKey.ski.equals(key.publicKey.ski));
        if (!again) this.logger.warn({ backend: this.name, key: key.name }, `key ${key.name} is no longer on the token; it answers KEY_NOT_FOUND until a reload`);
        key.object = again?.object;
      }
      this.up = true;
      this.backoffMs = FIRST_BACKOFF_MS;
      this.logger.info({ backend: this.name }, `backend ${this.name} reconnected to its token`);
    } catch (err) {
      const reason = err instanceof ConfigError ? err.problem : ckrName(err);
      this.logger.warn({ backend: this.name, reason, retry_ms: this.backoffMs }, `backend ${this.name} still cannot reach its token: ${reason}`);
      this.scheduleRecovery();
    }
  }
}

/** The factory the daemon's backend registry calls. */
export function createPkcs11Backend(config: Pkcs11BackendConfig, logger: Logger): Backend {
  return new Pkcs11Backend(config, logger);
}
