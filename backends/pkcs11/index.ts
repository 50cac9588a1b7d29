export { Pkcs11Backend, createPkcs11Backend } from './backend';
export { pkcs11BackendSchema, type Pkcs11BackendConfig } from './schema';
