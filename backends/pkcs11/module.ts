import * as pkcs11js from 'pkcs11js';

/**
 * A PKCS#11 module is process-global: loaded and initialized once, whatever number of
 * backends use it. CKF_OS_LOCKING_OK is required: without it SoftHSM corrupted its heap
 * with several sessions in flight.
 */
const modules = new Map<string, pkcs11js.PKCS11>();

export function loadModule(path: string): pkcs11js.PKCS11 {
  let module = modules.get(path);
  if (module) return module;
  module = new pkcs11js.PKCS11();
  module.load(path);
  try {
    module.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if ((err as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
  modules.set(path, module);
  return module;
}

/** The CKR_ name of a PKCS#11 error, for messages (`CKR_PIN_INCORRECT`). */
export function ckrName(err: unknown): string {
  const code = (err as { code?: number }).code;
  if (code === undefined) return (err as Error).message ?? String(err);
  const name = Object.entries(pkcs11js).find(([key, value]) => key.startsWith('CKR_') && value === code)?.[0];
  return name ?? `CKR 0x${code.toString(16)}`;
}

export function ckrCode(err: unknown): number | undefined {
  return (err as { code?: number }).code;
}
