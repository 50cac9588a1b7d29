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
  initialize(module);
  modules.set(path, module);
  return module;
}

/**
 * C_Initialize, where an earlier one (by this or another backend, or by anything else in
 * the process) counts as success. Recovery calls it again in case something finalized the
 * module underneath the daemon.
 */
export function initialize(module: pkcs11js.PKCS11): void {
  try {
    module.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckrCode(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
}

const CKR_NAMES = new Map<number, string>(
  Object.entries(pkcs11js)
    .filter(([key, value]) => key.startsWith('CKR_') && typeof value === 'number')
    .map(([key, value]) => [value as number, key]),
);

/** The CKR_ name of a PKCS#11 error, for messages (`CKR_PIN_INCORRECT`). */
export function ckrName(err: unknown): string {
  const code = ckrCode(err);
  if (code === undefined) return (err as Error).message ?? String(err);
  return CKR_NAMES.get(code) ?? `CKR 0x${code.toString(16)}`;
}

export function ckrCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}
