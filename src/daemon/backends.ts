import type { BackendConfig } from '../config/schema';
import type { Logger } from '../log';
import type { Backend } from '../core/keys/types';

/**
 * The one place a backend config entry becomes a Backend. Each kind's module is required
 * here, when a configured backend is of that kind, and not before: a daemon serving key
 * files never loads pkcs11js (a native module) nor the CNG shim's code.
 */
export function createBackend(config: BackendConfig, logger: Logger): Backend {
  const child = logger.child({ backend: config.name });
  switch (config.type) {
    case 'file':
      return (require('../../backends/file') as typeof import('../../backends/file')).createFileBackend(config, child);
    case 'pkcs11':
      return (require('../../backends/pkcs11') as typeof import('../../backends/pkcs11')).createPkcs11Backend(config, child);
    case 'cng':
      return (require('../../backends/cng') as typeof import('../../backends/cng')).createCngBackend(config, child);
  }
}
