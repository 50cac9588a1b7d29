import { existsSync, readdirSync } from 'node:fs';
import * as pkcs11js from 'pkcs11js';
import { BackendUnavailableError, ConfigError, CryptoFailureError, KeyNotFoundError, KeylessError, TimeoutError, UnsupportedError } from '../../src/errors';
import type { Backend, SkippedKey } from '../../src/core/keys/types';
import type { Logger } from '../../src/log';
import { BackendLifecycle } from '../lifecycle';
import { Pkcs11Key } from './key';
import { ckrCode, ckrName, sharedModule, type ModuleUser, type SharedModule } from './module';
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
/**
 * Failures that mean the token (not only our sessions) is gone: after one, recovery also
 * tries C_Finalize + C_Initialize, which is how SoftHSM (and other modules that read their
 * tokens at C_Initialize) sees a token that was put back.
 */
const TOKEN_GONE = new Set([
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_SLOT_ID_INVALID,
  pkcs11js.CKR_GENERAL_ERROR,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
]);
/** Where module-name=NAME is looked for. */
const MODULE_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu/pkcs11', '/usr/lib', '/usr/lib/pkcs11', '/usr/local/lib', '/usr/lib/softhsm'];

/**
 * RFC 7512 §2.3: module-name is the library's name without "lib" prefix and suffix
 * (mypkcs11 for libmypkcs11.so.1). A name given with them (libsofthsm2, libsofthsm2.so)
 * is taken as it is too.
 */
export function findModule(name: string, dirs: readonly string[] = MODULE_DIRS): string | undefined {
  const bare = name.replace(/^lib/, '').replace(/\.so(\.[\d.]+)?$/, '');
  const exact = [`lib${bare}.so`, `${bare}.so`, name];
  const versioned = new RegExp(`^(lib)?${bare.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.so\\.[\\d.]+$`);
  for (const dir of dirs) {
    const hit = exact.map((file) => `${dir}/${file}`).find(existsSync);
    if (hit) return hit;
    let files: string[] = [];
    try {
      files = readdirSync(dir);
    } catch {
      continue;
    }
    const match = files.filter((file) => versioned.test(file)).sort()[0];
    if (match) return `${dir}/${match}`;
  }
  return undefined;
}
const trimmed = (text: string) => text.replace(/[\s\0]+$/, '');
const ulong = (handle: pkcs11js.Handle) => handle.readBigUInt64LE(0);
const hexId = (id: Buffer) => id.toString('hex');

/**
 * Keys on a PKCS#11 token. One session per operation from a pool; the hot path makes
 * only C_SignInit/C_DecryptInit synchronously (they do no cryptography) and the
 * operation itself asynchronously, so the event loop never waits on the token's
 * cryptography. A fault (sessions invalidated, token removed, logged out, module
 * finalized) takes the backend down: requests get BACKEND_UNAVAILABLE at once while it
 * reconnects by itself with exponential backoff.
 */
export class Pkcs11Backend implements Backend, ModuleUser {
  readonly kind = 'pkcs11' as const;
  readonly name: string;
  readonly timeoutMs: number;
  private readonly uri: Pkcs11Uri;
  /** The config field errors name. */
  private readonly field: string;
  private module?: pkcs11js.PKCS11;
  private shared?: SharedModule;
  private pin?: string;
  private mechanisms = new Set<number>();
  private readonly pool: SessionPool;
  private keys: Pkcs11Key[] = [];
  /**
   * Up, down, reconnecting with backoff, closed; and the calls this backend has running
   * inside the module (operations and connects), which a C_Finalize waits for.
   */
  private readonly life: BackendLifecycle;

  constructor(
    private readonly config: Pkcs11BackendConfig,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
    this.field = `backends.${config.name}.uri`;
    this.uri = parsePkcs11Uri(config.uri);
    this.pool = new SessionPool(config.max_queue, (session) => this.closeSession(session));
    this.life = new BackendLifecycle({
      recover: () => this.recover(),
      down: (reason) => this.logger.warn({ backend: this.name, reason }, `backend ${this.name} is down (${reason}); reconnecting`),
      stillDown: (err, retryMs) => {
        const reason = describe(err);
        this.logger.warn({ backend: this.name, reason, retry_ms: retryMs }, `backend ${this.name} still cannot reach its token: ${reason}`);
      },
      recovered: () => this.logger.info({ backend: this.name }, `backend ${this.name} reconnected to its token`),
    });
  }

  /** Connects (or, on reload, reconnects) and lists the keys; sessions busy with a request finish first. */
  async open(): Promise<{ keys: Pkcs11Key[]; skipped: SkippedKey[] }> {
    this.life.opening();
    this.shared ??= this.loadModule();
    this.module = this.shared.module;
    this.shared.register(this);
    this.pin = resolvePin(this.uri, this.field);
    // A C_Finalize + C_Initialize of the module (another backend recovering) while this one
    // connected ends the sessions it just opened: connect again.
    let result: { found: FoundKey[]; skipped: SkippedKey[] };
    for (let attempt = 1; ; attempt++) {
      const generation = this.shared.generation;
      result = await this.connect();
      await this.shared.settled();
      if (this.shared.generation === generation || attempt === 3) break;
    }
    const { found, skipped } = result;
    this.keys = found.map((k) => new Pkcs11Key(k.name, this, k.publicKey, k.id, k.object));
    for (const s of skipped) this.logger.warn({ backend: this.name, object: s.source, reason: s.reason }, `skipping PKCS#11 object ${s.source}: ${s.reason}`);
    this.life.opened();
    return { keys: this.keys, skipped };
  }

  healthy(): boolean {
    return this.life.healthy;
  }

  async close(): Promise<void> {
    this.life.close();
    this.pool.retire(new BackendUnavailableError(`backend ${this.name} is closed`));
    // Stays known to the module until its last call has returned: a C_Finalize must not run under it.
    const shared = this.shared;
    if (shared) void this.life.idle().then(() => this.life.closed && shared.unregister(this));
  }

  /** ModuleUser: the module is about to be finalized. */
  suspend(reason: string): void {
    this.down(reason);
  }

  /** ModuleUser: resolves once no call of ours runs inside the module. */
  idle(): Promise<void> {
    return this.life.idle();
  }

  /** One operation on one pooled session. */
  async run(key: Pkcs11Key, operation: 'sign' | 'decrypt', mechanism: pkcs11js.Mechanism, data: Buffer, outputLength: number): Promise<Buffer> {
    if (!this.life.healthy) throw new BackendUnavailableError(`backend ${this.name} is reconnecting to its token; retry on another server`);
    if (!this.mechanisms.has(mechanism.mechanism)) throw new UnsupportedError(`the token behind backend ${this.name} does not offer mechanism 0x${mechanism.mechanism.toString(16)} for key ${key.name}`);
    // Tracked from before a session is ours: a queued request is handed its session some
    // turns before it runs again, and a C_Finalize must wait for it all the same.
    return this.life.track(async () => {
      const session = this.pool.take() ?? (await this.waitForSession(`${operation} with key ${key.name}`));
      try {
        const object = key.object;
        if (!object) throw new KeyNotFoundError(`key ${key.name} is no longer on the token of backend ${this.name}`);
        return await this.shared!.operate(operation, session, object, mechanism, data, outputLength);
      } catch (err) {
        throw this.failure(err, session, `${operation} with key ${key.name}`);
      } finally {
        this.pool.release(session);
      }
    });
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

  private loadModule(): SharedModule {
    let path = this.uri.modulePath;
    if (!path && this.uri.moduleName) {
      path = findModule(this.uri.moduleName);
      const bare = this.uri.moduleName.replace(/^lib/, '').replace(/\.so(\.[\d.]+)?$/, '');
      if (!path) throw new ConfigError(this.field, `module-name ${this.uri.moduleName}: no lib${bare}.so (or ${bare}.so, lib${bare}.so.N) in ${MODULE_DIRS.join(', ')}; give module-path instead`);
    }
    if (!path) throw new ConfigError(this.field, 'names no PKCS#11 module: add ?module-path=/absolute/path/to/module.so');
    if (!existsSync(path)) throw new ConfigError(this.field, `module-path ${path} does not exist`);
    let shared: SharedModule;
    try {
      shared = sharedModule(path);
    } catch (err) {
      throw new ConfigError(this.field, `cannot load the PKCS#11 module ${path}: ${ckrName(err)}`, { cause: err });
    }
    this.checkLibrary(shared.module, path);
    return shared;
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

  /**
   * The first slot whose token matches the URI. A slot whose token cannot be read is
   * skipped with a warning naming this backend and the slot: one broken slot must not keep
   * every other token (and every reload) from working.
   */
  private async findSlot(): Promise<pkcs11js.Handle> {
    const u = this.uri;
    const present: string[] = [];
    const broken: string[] = [];
    const readable: Array<{ slot: pkcs11js.Handle; token: pkcs11js.TokenInfo; info: pkcs11js.SlotInfo }> = [];
    for (const { slot, token, info, error } of await this.shared!.slots()) {
      if (token && info && !error) {
        readable.push({ slot, token, info });
        continue;
      }
      const reason = ckrName(error);
      broken.push(`slot ${ulong(slot)} (${reason})`);
      this.logger.warn({ backend: this.name, slot: ulong(slot).toString(), reason }, `backend ${this.name}: skipping slot ${ulong(slot)}: reading its token failed with ${reason}`);
    }
    for (const { slot, token, info } of readable) {
      if (!(token.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) continue;
      present.push(trimmed(token.label));
      if (u.token !== undefined && trimmed(token.label) !== u.token) continue;
      if (u.serial !== undefined && trimmed(token.serialNumber) !== u.serial) continue;
      if (u.manufacturer !== undefined && trimmed(token.manufacturerID) !== u.manufacturer) continue;
      if (u.model !== undefined && trimmed(token.model) !== u.model) continue;
      if (u.slotId !== undefined && ulong(slot) !== u.slotId) continue;
      if (u.slotDescription !== undefined && trimmed(info.slotDescription) !== u.slotDescription) continue;
      if (u.slotManufacturer !== undefined && trimmed(info.manufacturerID) !== u.slotManufacturer) continue;
      if (this.pin === undefined && token.flags & pkcs11js.CKF_LOGIN_REQUIRED) {
        throw new ConfigError(this.field, `token ${this.describeToken()} needs a login: add pin-source=file:/path or pin-value to the URI`);
      }
      return slot;
    }
    const listed = present.length ? present.sort().map((l) => `"${l}"`).join(', ') : 'none';
    throw new TokenAbsentError(this.field, `no token matches ${this.describeToken()} (tokens present: ${listed}${broken.length ? `; unreadable: ${broken.join(', ')}` : ''})`);
  }

  /**
   * Opens a fresh set of sessions, logs in, finds the keys, and only then retires the old
   * sessions: the token never has none of ours open, which would log it out. The login is
   * per token and process, shared with any other backend on the same token. The blocking
   * calls (slot list, token info, object search) run on the module's worker thread.
   */
  private async connect(): Promise<{ found: FoundKey[]; skipped: SkippedKey[] }> {
    const shared = this.shared!;
    await shared.settled();
    return this.life.track(() => this.openSessions(shared));
  }

  private async openSessions(shared: SharedModule): Promise<{ found: FoundKey[]; skipped: SkippedKey[] }> {
    const module = shared.module;
    const sessions: pkcs11js.Handle[] = [];
    try {
      await shared.call('initialize'); // in case something finalized the module underneath us
      const slot = await this.findSlot();
      const mechanisms = new Set(module.C_GetMechanismList(slot));
      for (let i = 0; i < this.config.pool_size; i++) sessions.push(module.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
      this.login(module, sessions[0]!);
      const keys = this.named(await new TokenObjects(shared, sessions[0]!).privateKeys(this.uri, this.describeToken()));
      if (this.life.closed) throw new BackendUnavailableError(`backend ${this.name} was closed while connecting`);
      this.mechanisms = mechanisms;
      this.pool.retire();
      this.pool.fill(sessions);
      return keys;
    } catch (err) {
      for (const session of sessions) this.closeSession(session);
      throw err;
    }
  }

  /**
   * Applies key_names (by CKA_ID, then by label) and refuses a second object under a name
   * already taken on this token, naming both objects. Objects are taken in the order of
   * their CKA_ID, so the same one wins at every reload whatever order the token lists them in.
   */
  private named({ found, skipped }: { found: FoundKey[]; skipped: SkippedKey[] }): { found: FoundKey[]; skipped: SkippedKey[] } {
    const names = this.config.key_names;
    const byName = new Map<string, FoundKey>();
    const kept: FoundKey[] = [];
    const clashes: SkippedKey[] = [];
    for (const key of [...found].sort((a, b) => Buffer.compare(a.id, b.id))) {
      const name = names[`id:${hexId(key.id)}`] ?? names[key.name] ?? key.name;
      const renamed = name === key.name ? key : { ...key, name };
      const first = byName.get(name);
      if (first) {
        clashes.push({
          source: `${this.describeToken()};object=${name};id=${hexId(key.id)}`,
          reason: `objects id ${hexId(first.id)} and id ${hexId(key.id)} on token ${this.describeToken()} of backend ${this.name} are both named ${name}; only the first is served: name them apart with key_names (e.g. "id:${hexId(key.id)}": ${name}-2)`,
        });
        continue;
      }
      byName.set(name, renamed);
      kept.push(renamed);
    }
    return { found: kept, skipped: [...skipped, ...clashes] };
  }

  private login(module: pkcs11js.PKCS11, session: pkcs11js.Handle): void {
    if (this.pin === undefined) return;
    try {
      module.C_Login(session, pkcs11js.CKU_USER, this.pin);
    } catch (err) {
      const code = ckrCode(err);
      if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN) return;
      if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LEN_RANGE) throw new ConfigError(this.field, `wrong PIN for token ${this.describeToken()}`, { cause: err });
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
    if (this.life.fail(reason)) this.pool.retire(new BackendUnavailableError(`backend ${this.name} lost its token; retry on another server`));
  }

  /**
   * One recovery attempt (the lifecycle repeats them with backoff): reconnects and finds
   * each key again by name, id and public key. When the token itself is gone (not only our
   * sessions), the module is finalized and initialized again (see
   * SharedModule.reinitialize) and the reconnect tried once more.
   */
  private async recover(): Promise<void> {
    const shared = this.shared!;
    const generation = shared.generation;
    try {
      await this.reconnect();
    } catch (err) {
      if (this.life.closed || !tokenGone(err)) throw err;
      const reason = describe(err);
      this.logger.warn({ backend: this.name, reason }, `backend ${this.name}: ${reason}; finalizing and initializing the PKCS#11 module ${shared.path} again`);
      await shared.reinitialize(`backend ${this.name} lost its token (${reason})`, generation);
      await this.reconnect();
    }
  }

  private async reconnect(): Promise<void> {
    const generation = this.shared!.generation;
    const { found } = await this.connect();
    await this.shared!.settled();
    if (this.shared!.generation !== generation) throw new BackendUnavailableError('the module was initialized again while reconnecting');
    const byName = new Map(found.map((k) => [k.name, k]));
    for (const key of this.keys) {
      const candidate = byName.get(key.name);
      const again = candidate && candidate.id.equals(key.id) && candidate.publicKey.ski.equals(key.publicKey.ski) ? candidate : undefined;
      if (!again) this.logger.warn({ backend: this.name, key: key.name }, `key ${key.name} is no longer on the token; it answers KEY_NOT_FOUND until a reload`);
      key.object = again?.object;
    }
  }
}

/** The token could not be found or read: a C_Finalize + C_Initialize may bring it back. */
class TokenAbsentError extends ConfigError {}

function tokenGone(err: unknown): boolean {
  const code = ckrCode(err);
  return err instanceof TokenAbsentError || (code !== undefined && TOKEN_GONE.has(code));
}

function describe(err: unknown): string {
  return err instanceof ConfigError ? err.problem : ckrName(err);
}

/** The factory the daemon's backend registry calls. */
export function createPkcs11Backend(config: Pkcs11BackendConfig, logger: Logger): Backend {
  return new Pkcs11Backend(config, logger);
}
