import { BackendUnavailableError } from '../../src/errors';
import { createBackend } from '../../src/daemon/backends';
import type { Backend, KeyHandle } from '../../src/core/keys/types';
import type { BackendFactory } from '../../src/daemon/key-set';

export type FaultMode = 'ok' | 'hang' | 'fail';

/**
 * A real backend (from the config) whose keys can be made to hang or fail on demand,
 * for fault-injection tests of the dispatcher. Counts the calls that reach the store.
 */
export class FaultSwitch {
  mode: FaultMode = 'ok';
  /** When set, only calls with these keys are subject to `mode`. */
  onlyKeys?: ReadonlySet<string>;
  calls = 0;
  private readonly hung: Array<() => void> = [];

  readonly factory: BackendFactory = (config, logger) => this.wrap(createBackend(config, logger));

  /** Lets every hung call go on to the real key. */
  release(): void {
    for (const resume of this.hung.splice(0)) resume();
  }

  get hungCalls(): number {
    return this.hung.length;
  }

  private wrap(inner: Backend): Backend {
    const faults = this;
    const backend: Backend = {
      kind: inner.kind,
      name: inner.name,
      timeoutMs: inner.timeoutMs,
      healthy: () => faults.mode !== 'fail' && inner.healthy(),
      close: () => inner.close(),
      async open() {
        const opened = await inner.open();
        return { ...opened, keys: opened.keys.map((key) => faults.wrapKey(key, backend)) };
      },
    };
    return backend;
  }

  private wrapKey(key: KeyHandle, backend: Backend): KeyHandle {
    const gate = async () => {
      if (this.onlyKeys && !this.onlyKeys.has(key.name)) return;
      this.calls++;
      if (this.mode === 'fail') throw new BackendUnavailableError(`backend ${backend.name} is failing`);
      if (this.mode === 'hang') await new Promise<void>((resume) => this.hung.push(resume));
    };
    return {
      name: key.name,
      backend,
      publicKey: key.publicKey,
      sign: async (scheme, input) => (await gate(), key.sign(scheme, input)),
      decrypt: async (padding, ciphertext) => (await gate(), key.decrypt(padding, ciphertext)),
    };
  }
}
