import * as pkcs11js from 'pkcs11js';
import { loadAddon } from '../../src/util/package-root';
import { UnsupportedError } from '../../src/errors';

type FunctionList = { readonly __pkcs11FunctionList: unique symbol };

/** Numbers shared with native/token_calls.c. */
const Operation = { sign: 0, decrypt: 1 } as const;
const Parameters = { none: 0, rsaPss: 1, rsaOaep: 2 } as const;

interface TokenCallsAddon {
  bind(path: string): FunctionList;
  run(
    functions: FunctionList,
    operation: number,
    session: pkcs11js.Handle,
    key: pkcs11js.Handle,
    mechanism: number,
    parameters: number,
    hashAlg: number,
    mgf: number,
    saltOrSource: number,
    input: Buffer,
    outputLength: number,
  ): Promise<Buffer>;
}

let addon: TokenCallsAddon | undefined;

/**
 * C_SignInit + C_Sign (or C_DecryptInit + C_Decrypt) in one call on a libuv pool thread, for
 * the module loaded from `path`: pkcs11js can only run the Init calls on the event loop, where
 * SoftHSM2 spends twice as long in C_SignInit as in a P-256 signature (native/token_calls.c).
 * Rejects with `code` = the CK_RV, as pkcs11js does, so ckrCode() reads either.
 */
export function tokenCalls(path: string): (operation: 'sign' | 'decrypt', session: pkcs11js.Handle, key: pkcs11js.Handle, mechanism: pkcs11js.Mechanism, input: Buffer, outputLength: number) => Promise<Buffer> {
  addon ??= loadAddon<TokenCallsAddon>('keyless_pkcs11', 'the PKCS#11 call addon');
  const native = addon;
  const functions = native.bind(path);
  return (operation, session, key, mechanism, input, outputLength) => {
    const [kind, hashAlg, mgf, saltOrSource] = parametersOf(mechanism);
    return native.run(functions, Operation[operation], session, key, mechanism.mechanism, kind, hashAlg, mgf, saltOrSource, input, outputLength);
  };
}

/** [kind, hashAlg, mgf, saltLen or source] of a mechanism's parameters, as the addon takes them. */
function parametersOf(mechanism: pkcs11js.Mechanism): [number, number, number, number] {
  const p = mechanism.parameter as (pkcs11js.RsaPSS | pkcs11js.RsaOAEP) | undefined;
  if (p === undefined) return [Parameters.none, 0, 0, 0];
  if (p.type === pkcs11js.CK_PARAMS_RSA_PSS) {
    const pss = p as pkcs11js.RsaPSS;
    return [Parameters.rsaPss, pss.hashAlg, pss.mgf, pss.saltLen];
  }
  if (p.type === pkcs11js.CK_PARAMS_RSA_OAEP) {
    const oaep = p as pkcs11js.RsaOAEP;
    if (oaep.sourceData?.length) throw new UnsupportedError('RSA-OAEP with a label is not supported');
    return [Parameters.rsaOaep, oaep.hashAlg, oaep.mgf, oaep.source];
  }
  throw new UnsupportedError(`mechanism 0x${mechanism.mechanism.toString(16)}: parameters of type ${p.type} are not supported`);
}
