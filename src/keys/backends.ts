import { FileBackend } from '../../backends/file';
import { Pkcs11Backend } from '../../backends/pkcs11';
import { createCngBackend } from '../../backends/cng';
import type { BackendConfig } from '../config/schema';
import type { Logger } from '../log';
import type { Backend } from './types';

/** The one place a backend config entry becomes a Backend. */
export function createBackend(config: BackendConfig, logger: Logger): Backend {
  switch (config.type) {
    case 'file':
      return new FileBackend(config, logger.child({ backend: config.name }));
    case 'pkcs11':
      return new Pkcs11Backend(config, logger.child({ backend: config.name }));
    case 'cng':
      return createCngBackend(config, logger.child({ backend: config.name }));
  }
}
