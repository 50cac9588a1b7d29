import type { AddressInfo } from 'node:net';
import type { Config } from '../config/schema';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { AuditLog, type AuditEvent } from '../audit/log';
import { loadAuditSigner, type AuditSigner } from '../audit/signing';
import { ConfigError } from '../errors';
import { closeKeySet, openKeySet, type BackendFactory, type KeySet } from './key-set';
import type { KeyRegistry } from '../core/keys/registry';
import type { Logger } from '../log';
import { MetricsServer } from '../metrics/http';
import { Metrics } from '../metrics/metrics';
import { Dispatcher } from '../core/dispatcher';
import { createSecureContext, type TlsOptions } from 'node:tls';
import { loadTlsMaterial, serverTlsOptions, type TlsMaterial } from '../transport/tls';
import { V1Listener } from '../protocols/v1/listener';
import { CompatListener } from '../protocols/compat/listener';

export interface DaemonAddresses {
  readonly v1: AddressInfo;
  readonly compat?: AddressInfo;
  readonly metrics?: AddressInfo;
}

async function openAudit(config: Config, logger: Logger, metrics: Metrics): Promise<AuditLog> {
  const path = config.audit.path!;
  const signingKey = config.audit.signing_key;
  let signer: AuditSigner | undefined;
  if (signingKey !== undefined) {
    try {
      signer = loadAuditSigner(readFileSync(signingKey));
    } catch (err) {
      throw new ConfigError('audit.signing_key', `cannot use ${signingKey}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
  } else {
    logger.warn('audit.signing_key is not set: the audit log has no signed checkpoints, so cutting records off its end cannot be proven');
  }
  try {
    return await AuditLog.open({
      path,
      maxBytes: config.audit.max_bytes,
      flushIntervalMs: config.audit.flush_interval_ms,
      signer,
      checkpointEveryRecords: config.audit.checkpoint_every_records,
      checkpointIntervalMs: config.audit.checkpoint_interval_s * 1000,
      keepFiles: config.audit.keep_files,
      maxTotalBytes: config.audit.max_total_bytes,
      onWritten: (records) => metrics.auditRecords.inc(records),
      onWriteError: (err) => {
        metrics.auditWriteFailures.inc();
        logger.error({ path, error: err.message }, `cannot write the audit log ${path}: ${err.message}`);
      },
      onStateChange: (writable) => {
        if (writable) logger.warn({ path }, `the audit log ${path} is writable again`);
      },
      onEvent: (event) => reportAuditEvent(event, path, logger, metrics),
    });
  } catch (err) {
    throw new ConfigError('audit.path', `cannot open the audit log ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** Every repair of the audit log is logged (at error where records may have been lost) and counted. */
function reportAuditEvent(event: AuditEvent, path: string, logger: Logger, metrics: Metrics): void {
  metrics.auditEvents.inc({ event: event.type });
  switch (event.type) {
    case 'checkpoint':
      // Shipped off the host with the logs: an anchor for `keylessctl audit verify --anchor`.
      logger.info({ audit_checkpoint: JSON.parse(event.line) as unknown }, 'audit checkpoint');
      return;
    case 'retention':
      logger.info({ path, removed: event.removed }, `audit retention removed ${event.removed.join(', ')}`);
      return;
    case 'genesis':
      logger.info({ path }, `started a new audit log at ${path}`);
      return;
    case 'reopened':
      logger.error({ path, reason: event.reason }, `audit log tampering: ${event.reason}; a new file continues the chain`);
      return;
    case 'resumed':
    case 'removed_duplicate':
      logger.warn({ path, file: event.file }, `audit log: ${'detail' in event ? event.detail : event.reason}`);
      return;
    case 'set_aside':
      logger.error({ path, file: event.file, bytes: event.bytes, sha256: event.sha256 }, `audit log: ${event.reason}; ${event.bytes} bytes set aside in ${event.file}`);
      return;
  }
}

/** Makes the secure context a listener would, so a bad CRL or key fails here, not halfway through a swap. */
function checkSecureContext(field: string, options: TlsOptions): void {
  try {
    createSecureContext(options);
  } catch (err) {
    throw new ConfigError(field, `the TLS settings cannot be used: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * keylessd: wires configuration, backends, the key registry, listeners and metrics
 * together, and owns their lifecycle (start, reload, drain).
 */
export class Daemon {
  readonly metrics = new Metrics();
  private keys!: KeySet;
  private dispatcher!: Dispatcher;
  private v1!: V1Listener;
  private compat?: CompatListener;
  private metricsServer?: MetricsServer;

  private reloading?: Promise<boolean>;
  private audit?: AuditLog;

  private constructor(
    private config: Config,
    private readonly logger: Logger,
    private readonly makeBackend?: BackendFactory,
  ) {}

  /** `makeBackend` is for tests that inject faults into a real backend. */
  static async start(config: Config, logger: Logger, makeBackend?: BackendFactory): Promise<{ daemon: Daemon; addresses: DaemonAddresses }> {
    const daemon = new Daemon(config, logger, makeBackend);
    const addresses = await daemon.startServing();
    return { daemon, addresses };
  }

  get registry(): KeyRegistry {
    return this.keys.registry;
  }

  private async startServing(): Promise<DaemonAddresses> {
    const { config, logger, metrics } = this;
    const tls = loadTlsMaterial(config.tls);
    checkSecureContext('tls', serverTlsOptions(tls, config.tls.min_version, config.tls.handshake_timeout_ms));
    this.keys = await openKeySet(config, logger, this.makeBackend);
    this.recordKeys(this.keys);
    metrics.watchBackends(() => this.keys.backends);
    if (this.keys.registry.size === 0) logger.warn('no keys loaded: every sign request will answer KEY_NOT_FOUND');
    if (config.audit.enabled) {
      this.audit = await openAudit(config, logger, metrics);
    }
    this.dispatcher = new Dispatcher(() => this.keys, metrics, logger, this.audit && { log: this.audit, refuseUnlogged: config.audit.on_failure === 'refuse' });
    this.v1 = new V1Listener(
      {
        host: config.listen.host,
        port: config.listen.port,
        path: config.listen.path,
        tls: serverTlsOptions(tls, config.tls.min_version, config.tls.handshake_timeout_ms),
        maxFrameBytes: config.limits.max_frame_bytes,
        maxSessions: config.limits.max_sessions,
        maxPendingHandshakes: config.limits.max_pending_handshakes,
        maxPendingHandshakesPerAddress: config.limits.max_pending_handshakes_per_address,
        maxSendBufferBytes: config.limits.max_send_buffer_bytes,
        pingIntervalMs: config.limits.ping_interval_ms,
      },
      this.dispatcher,
      metrics,
      logger,
    );
    const v1 = await this.v1.start();
    let compat: AddressInfo | undefined;
    if (config.compat.enabled) {
      this.compat = new CompatListener(
        {
          host: config.compat.host,
          port: config.compat.port,
          tls: serverTlsOptions(tls, config.compat.min_version, config.tls.handshake_timeout_ms),
          maxSessions: config.limits.max_sessions,
          maxPendingHandshakes: config.limits.max_pending_handshakes,
          maxPendingHandshakesPerAddress: config.limits.max_pending_handshakes_per_address,
          maxSendBufferBytes: config.limits.max_send_buffer_bytes,
        },
        this.dispatcher,
        metrics,
        logger,
      );
      compat = await this.compat.start();
    }
    this.recordCertificates(tls.serverNotAfter, tls.clientCaNotAfter);
    let metricsAddress: AddressInfo | undefined;
    if (config.metrics.enabled) {
      this.metricsServer = new MetricsServer(metrics, () => this.readinessChecks());
      metricsAddress = await this.metricsServer.start(config.metrics.host, config.metrics.port);
    }
    if (config.pid_file) writeFileSync(config.pid_file, `${process.pid}\n`);
    metrics.reloadSuccess.set(1);
    metrics.reloadTime.set(Date.now() / 1000);
    logger.info(
      { listen: `${v1.address}:${v1.port}`, metrics: metricsAddress && `${metricsAddress.address}:${metricsAddress.port}`, keys: this.keys.registry.size },
      `keylessd serving ${this.keys.registry.size} keys on wss://${v1.address}:${v1.port}${config.listen.path}`,
    );
    return { v1, compat, metrics: metricsAddress };
  }

  /**
   * Applies a new configuration without dropping a session: keys, the server certificate,
   * the client CA and limits. Everything is loaded and checked before anything is swapped,
   * so a broken file leaves the running configuration serving. Resolves to whether the
   * new configuration was applied. Listener addresses need a restart.
   */
  reload(load: () => Config): Promise<boolean> {
    // Reloads run one at a time: a second SIGHUP during a reload waits for it. The chain
    // never rejects, so one failed reload cannot block (or crash) the next.
    const run = (this.reloading ?? Promise.resolve(true)).then(() => this.reloadNow(load));
    this.reloading = run;
    return run;
  }

  /**
   * Builds the whole next state — configuration, TLS material and the secure contexts made
   * from it, the key set with its backends — and only then swaps it in, in one synchronous
   * step. Any failure leaves the running state serving untouched, says why, counts it, and
   * keeps the last successful reload's timestamp.
   */
  private async reloadNow(load: () => Config): Promise<boolean> {
    const { logger, metrics } = this;
    let keys: KeySet | undefined;
    try {
      const next = load();
      const tls = loadTlsMaterial(next.tls);
      const v1Tls = serverTlsOptions(tls, next.tls.min_version, next.tls.handshake_timeout_ms);
      const compatTls = serverTlsOptions(tls, this.config.compat.min_version, next.tls.handshake_timeout_ms);
      checkSecureContext('tls', v1Tls);
      if (this.compat) checkSecureContext('tls', compatTls);
      keys = await openKeySet(next, logger, this.makeBackend);
      this.swap(next, keys, v1Tls, compatTls, tls);
    } catch (err) {
      if (keys) void closeKeySet(keys);
      metrics.reloadSuccess.set(0);
      metrics.reloadFailures.inc();
      const reason = err instanceof Error ? err.message : String(err);
      logger.error({ error: reason }, `reload failed, still serving the previous configuration: ${reason}`);
      return false;
    }
    metrics.reloadSuccess.set(1);
    metrics.reloadTime.set(Date.now() / 1000);
    logger.info({ keys: keys.registry.size }, `reloaded: serving ${keys.registry.size} keys`);
    return true;
  }

  /** The one step that changes what is served; nothing in it reads a file or can fail on bad input. */
  private swap(next: Config, keys: KeySet, v1Tls: TlsOptions, compatTls: TlsOptions, tls: TlsMaterial): void {
    const { logger } = this;
    if (next.audit.path !== this.config.audit.path || next.audit.enabled !== this.config.audit.enabled) {
      logger.warn('audit.* changed: the audit log keeps its file until a restart');
    }
    if (next.listen.host !== this.config.listen.host || next.listen.port !== this.config.listen.port || next.listen.path !== this.config.listen.path) {
      logger.warn('listen.* changed: the listener keeps its address until a restart');
    }
    const previous = this.keys;
    this.v1.updateTls(v1Tls);
    this.compat?.updateTls(compatTls);
    this.config = { ...next, listen: this.config.listen, metrics: this.config.metrics, audit: this.config.audit, compat: this.config.compat };
    this.keys = keys;
    this.recordKeys(keys);
    this.recordCertificates(tls.serverNotAfter, tls.clientCaNotAfter);
    void this.retire(previous);
  }

  /** Closes a replaced key set's backends once no request still uses them. */
  private async retire(old: KeySet): Promise<void> {
    const giveUp = Date.now() + 60_000;
    while (old.registry.inflight > 0 && Date.now() < giveUp) await new Promise((r) => setTimeout(r, 50));
    await closeKeySet(old);
  }

  private recordKeys(keys: KeySet): void {
    this.metrics.keysLoaded.reset();
    for (const backend of keys.backends) {
      this.metrics.keysLoaded.set({ backend: backend.name }, keys.registry.list().filter((k) => k.handle.backend === backend).length);
    }
  }

  private recordCertificates(serverNotAfter: Date, clientCaNotAfter: Date): void {
    for (const listener of this.compat ? ['keyless.v1', 'cloudflare'] : ['keyless.v1']) {
      this.metrics.certificateExpiry.set({ listener, role: 'server' }, serverNotAfter.getTime() / 1000);
      this.metrics.certificateExpiry.set({ listener, role: 'client_ca' }, clientCaNotAfter.getTime() / 1000);
    }
  }

  private readinessChecks() {
    return [
      { name: 'keys', problem: () => (this.keys.registry.size > 0 ? undefined : 'no keys loaded') },
      { name: 'audit', problem: () => (this.dispatcher.auditWritable() ? undefined : `the audit log ${this.config.audit.path} cannot be written`) },
      ...this.keys.backends.map((backend) => ({
        name: `backend:${backend.name}`,
        problem: () => (backend.healthy() ? undefined : `backend ${backend.name} is down`),
      })),
    ];
  }

  /** Stops accepting, lets in-flight requests finish (up to `deadlineMs`), closes sessions, releases backends. */
  async shutdown(deadlineMs: number): Promise<void> {
    const stopped = Promise.all([this.v1.stopAccepting(), this.compat?.stopAccepting()]);
    const deadline = Date.now() + deadlineMs;
    while (this.dispatcher.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    if (this.dispatcher.inflight > 0) this.logger.warn({ inflight: this.dispatcher.inflight }, 'shutdown deadline reached with requests still in flight');
    this.v1.closeSessions();
    this.compat?.closeSessions();
    await stopped;
    this.dispatcher.flushRefusals();
    await this.audit?.close();
    await this.metricsServer?.stop();
    await closeKeySet(this.keys);
    if (this.config.pid_file) rmSync(this.config.pid_file, { force: true });
    this.logger.info('keylessd stopped');
  }
}
