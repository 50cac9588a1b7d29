import { COMPAT_KEY_INDEXES } from '../protocols/compat/key-index';
import type { Config } from '../config/schema';
import { createBackend } from './backends';
import { KeyRegistry } from '../core/keys/registry';
import type { Backend, KeyHandle, SkippedKey } from '../core/keys/types';
import type { Logger } from '../log';
import { Policy } from '../core/policy/policy';
import type { ServingState } from '../core/dispatcher';

export type BackendFactory = typeof createBackend;

/** Backends opened, keys indexed and policy compiled: everything a config turns into before serving. */
export interface KeySet extends ServingState {
  readonly backends: Backend[];
  /** Configured keys not served, with why: those a backend could not use and those an earlier backend already serves. */
  readonly skipped: SkippedKey[];
}

/**
 * Opens every backend of `config` and indexes their keys, exactly as the daemon serves
 * them; `keylessd --check-config` uses the same path, so what it reports is what starts.
 * Any failure closes the backends already opened.
 */
export async function openKeySet(config: Config, logger: Logger, makeBackend: BackendFactory = createBackend): Promise<KeySet> {
  const backends: Backend[] = [];
  const handles: KeyHandle[] = [];
  const skipped: SkippedKey[] = [];
  try {
    for (const entry of config.backends) {
      const backend = makeBackend(entry, logger);
      backends.push(backend);
      const opened = await backend.open();
      handles.push(...opened.keys);
      skipped.push(...opened.skipped);
    }
    const policy = new Policy({ default_policy: config.default_policy, groups: config.groups, keys: config.keys });
    const optionsFor = (name: string) => ({ decryptAllowed: config.keys[name]?.decrypt ?? false, rawDecryptAllowed: config.keys[name]?.decrypt_raw ?? false });
    // The protocols' own key-lookup indexes: the compat port finds RSA keys by certificate digest.
    const registry = new KeyRegistry(handles, optionsFor, COMPAT_KEY_INDEXES);
    for (const clash of registry.skipped) logger.warn({ key: clash.source, reason: clash.reason }, `not serving ${clash.source}: ${clash.reason}`);
    return {
      backends,
      skipped: [...skipped, ...registry.skipped],
      registry,
      policy,
      maxInflightPerSession: config.limits.max_inflight_per_session,
      maxInflightTotal: config.limits.max_inflight_total,
      maxQueuedPerBackend: config.limits.max_queued_per_backend,
    };
  } catch (err) {
    await closeKeySet({ backends });
    throw err;
  }
}

export async function closeKeySet(keys: Pick<KeySet, 'backends'>): Promise<void> {
  await Promise.allSettled(keys.backends.map((b) => b.close()));
}
