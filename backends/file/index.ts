export { FileBackend, createFileBackend } from './backend';
export { fileBackendSchema, type FileBackendConfig } from './schema';
