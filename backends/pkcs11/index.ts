export { Pkcs11Backend } from './backend';
export { pkcs11BackendSchema, type Pkcs11BackendConfig } from './schema';
