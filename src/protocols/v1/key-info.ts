/** keyless.v1's KeyInfo for a registered key: how this protocol describes the core's key model. */
import { algorithmsFor } from '../../core/crypto/algorithms';
import type { RegisteredKey } from '../../core/keys/registry';
import { signatureAlgorithmNumber, type KeyInfoMessage } from './codec';

export function keyInfoMessage(key: RegisteredKey): KeyInfoMessage {
  const pub = key.handle.publicKey;
  return {
    name: key.handle.name,
    ski: pub.ski,
    spkiSha256: pub.spkiSha256,
    publicKey: pub.spki,
    type: pub.type,
    bits: pub.bits,
    curve: pub.curve,
    backend: key.handle.backend.name,
    algorithms: algorithmsFor(pub.type).map(signatureAlgorithmNumber),
    decryptAllowed: key.decryptAllowed && pub.type === 'rsa',
    rawDecryptAllowed: key.rawDecryptAllowed && pub.type === 'rsa',
  };
}
