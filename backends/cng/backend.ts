import { join } from 'node:path';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { BackendUnavailableError, ConfigError } from '../../src/errors';
import type { Backend, SkippedKey } from '../../src/core/keys/types';
import type { Logger } from '../../src/log';
import { packageRoot } from '../../src/util/package-root';
import { BackendLifecycle } from '../lifecycle';
import { CngHash, CngOperation, CngPadding, CngStatus, type CngResponse } from './codec';
import { CngKey } from './key';
import { spkiFromPublicBlob } from './public-blob';
import type { CngBackendConfig, CngKeyConfig } from './schema';
import { ShimProcess, type ShimCommand, type ShimRequest } from './shim-process';
import { describeFailure, operationError } from './status';

/** Test seams. Production passes none. */
export interface CngBackendHooks {
  /** Extra shim arguments, e.g. `--allow-test-import`. */
  readonly shimArgs?: readonly string[];
  /**
   * Runs against every new shim before it serves, after it answered a ping. Tests import
   * their keys here, since under Wine no key persists across shim lives.
   */
  readonly prepare?: (call: (request: ShimRequest) => Promise<CngResponse>) => Promise<void>;
}

/** A fresh shim may be Wine booting a prefix; give its first answer longer than one operation. */
const START_TIMEOUT_MS = 60_000;
/** stdin closed, the shim answers what it holds and exits; past this it is killed. */
const CLOSE_GRACE_MS = 5_000;
/** A shim that served this long before dying restarts without accumulated backoff. */
const STABLE_MS = 30_000;

const PING: ShimRequest = { operation: CngOperation.ping, keyName: '', machine: false, padding: CngPadding.none, hash: CngHash.none, payload: Buffer.alloc(0) };

export function defaultShimPath(): string {
  return join(packageRoot(), 'backends', 'cng', 'shim', 'keyless-cng-shim.exe');
}

/**
 * Keys in a Windows CNG key storage provider, used through keyless-cng-shim.exe, a child
 * process speaking the frame protocol of codec.ts. If the shim dies, requests in flight
 * and new ones get BACKEND_UNAVAILABLE while a new shim starts, with backoff when it
 * keeps dying; service resumes once the new one answers.
 */
export class CngBackend implements Backend {
  readonly kind = 'cng' as const;
  readonly name: string;
  readonly timeoutMs: number;
  private readonly command: ShimCommand;
  private shim?: ShimProcess;
  private readonly life: BackendLifecycle;

  constructor(
    private readonly config: CngBackendConfig,
    private readonly logger: Logger,
    private readonly hooks: CngBackendHooks = {},
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
    const shimPath = config.shim_path ?? defaultShimPath();
    const args = ['--provider', config.provider, '--workers', String(config.workers), ...(hooks.shimArgs ?? [])];
    this.command = config.wine ? { file: 'wine', args: [shimPath, ...args] } : { file: shimPath, args };
    this.life = new BackendLifecycle(
      {
        recover: () => this.restart(),
        down: (reason, retryMs) => this.logger.error({ reason, retry_ms: retryMs }, `the CNG shim ${reason}; restarting it`),
        stillDown: (err, retryMs) => this.logger.error({ err: (err as Error).message, retry_ms: retryMs }, 'the CNG shim did not restart'),
        recovered: () => this.logger.info({ pid: this.shim?.pid }, 'the CNG shim is back; serving again'),
      },
      { stableMs: STABLE_MS },
    );
  }

  async open(): Promise<{ keys: CngKey[]; skipped: SkippedKey[] }> {
    if (!this.shim) await this.startFirst();
    const loaded = await Promise.all(this.config.keys.map((key) => this.loadKey(key)));
    const keys = loaded.filter((k): k is CngKey => k instanceof CngKey);
    const skipped = loaded.filter((k): k is SkippedKey => !(k instanceof CngKey));
    for (const s of skipped) this.logger.warn({ key: s.source, reason: s.reason }, `skipping CNG key ${s.source}: ${s.reason}`);
    return { keys, skipped };
  }

  healthy(): boolean {
    return this.life.healthy;
  }

  async close(): Promise<void> {
    this.life.close();
    await this.shim?.close(CLOSE_GRACE_MS);
  }

  /** One operation with a key; resolves with the shim's result bytes. */
  async run(key: CngKey, request: Omit<ShimRequest, 'keyName' | 'machine'>, what: string): Promise<Buffer> {
    const response = await this.call({ ...request, keyName: key.keyName, machine: key.machine }, what);
    if ('data' in response) return response.data;
    throw operationError(response.status, response.code, response.message, what);
  }

  private call(request: ShimRequest, what: string): Promise<CngResponse> {
    if (!this.life.healthy || !this.shim) return Promise.reject(new BackendUnavailableError(`${what}: backend ${this.name} is restarting its CNG shim`));
    return this.shim.call(request, this.timeoutMs, what);
  }

  private async startFirst(): Promise<void> {
    try {
      this.shim = await this.launch();
      this.life.opened();
    } catch (err) {
      throw new ConfigError(`backends.${this.name}.shim_path`, `the CNG shim did not start: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A new shim that has answered a ping and been prepared; not yet serving. */
  private async launch(): Promise<ShimProcess> {
    const shim = new ShimProcess(this.command, this.logger);
    void shim.exited.then((reason) => this.onExit(shim, reason));
    try {
      const pong = await shim.call(PING, START_TIMEOUT_MS, 'starting the CNG shim');
      if (pong.status !== CngStatus.ok) throw new BackendUnavailableError(`the shim answered its first ping with status ${pong.status}`);
      await this.hooks.prepare?.((request) => shim.call(request, START_TIMEOUT_MS, 'preparing the CNG shim'));
    } catch (err) {
      shim.kill('failed to start');
      throw err;
    }
    if (!shim.alive) throw new BackendUnavailableError('the CNG shim died while starting');
    return shim;
  }

  private onExit(shim: ShimProcess, reason: string): void {
    if (shim !== this.shim || this.life.closed) return;
    this.shim = undefined;
    this.life.fail(reason);
  }

  /** One restart attempt (the lifecycle repeats them with backoff): serving once the new shim answers. */
  private async restart(): Promise<void> {
    const shim = await this.launch();
    if (this.life.closed) return void (await shim.close(CLOSE_GRACE_MS));
    this.shim = shim;
  }

  private async loadKey(key: CngKeyConfig): Promise<CngKey | SkippedKey> {
    const source = `${key.machine ? 'machine' : 'user'} key "${key.key_name}"`;
    try {
      const response = await this.call({ ...PING, operation: CngOperation.publicKey, keyName: key.key_name, machine: key.machine }, `opening CNG ${source}`);
      if (!('data' in response)) {
        const provider = `provider "${this.config.provider}"`;
        const reason = response.status === CngStatus.keyNotFound ? describeFailure(response.code, `no such key in ${provider}`) : `${provider} cannot open it: ${describeFailure(response.code, response.message)}`;
        return { source, reason };
      }
      const publicKey = describePublicKey(spkiFromPublicBlob(response.data));
      return new CngKey(key.name ?? key.key_name, this, publicKey, key.key_name, key.machine);
    } catch (err) {
      return { source, reason: (err as Error).message };
    }
  }
}

export function createCngBackend(config: CngBackendConfig, logger: Logger, hooks?: CngBackendHooks): CngBackend {
  return new CngBackend(config, logger, hooks);
}
