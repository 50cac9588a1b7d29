export { FileBackend } from './backend';
export { fileBackendSchema, type FileBackendConfig } from './schema';
