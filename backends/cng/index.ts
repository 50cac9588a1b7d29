export { CngBackend, createCngBackend, defaultShimPath, type CngBackendHooks } from './backend';
export { cngBackendSchema, type CngBackendConfig } from './schema';
