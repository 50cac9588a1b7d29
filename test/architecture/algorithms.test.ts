import { ALGORITHM_NAMES, SCHEME_OF, SIGNATURE_ALGORITHMS, algorithmFor } from '../../src/core/crypto/algorithms';
import { keyless } from '../../src/gen/keyless';
import { keyPolicySchema } from '../../src/core/policy/schema';

/** One closed table of algorithm names: the protocol enum, policy and metrics labels all draw from it. */
test('every keyless.v1 algorithm is the proto enum value of the same name, and policy accepts exactly those', () => {
  const enumNames = Object.keys(keyless.v1.SignatureAlgorithm).filter((name) => name !== 'SIGNATURE_ALGORITHM_UNSPECIFIED');
  expect(enumNames).toEqual([...SIGNATURE_ALGORITHMS]);
  for (const name of SIGNATURE_ALGORITHMS) expect(keyPolicySchema.safeParse({ groups: ['g'], algorithms: [name] }).success).toBe(true);
  expect(keyPolicySchema.safeParse({ groups: ['g'], algorithms: ['RSA_PKCS1_SHA224'] }).success).toBe(false);
});

test('every scheme a request can ask for has exactly one name, and the name maps back to it', () => {
  const seen = new Set<string>();
  for (const name of ALGORITHM_NAMES) {
    expect(algorithmFor(SCHEME_OF[name])).toBe(name);
    const scheme = JSON.stringify(SCHEME_OF[name]);
    expect(seen.has(scheme)).toBe(false);
    seen.add(scheme);
  }
  expect(() => algorithmFor({ kind: 'rsa-pss', hash: 'sha1' })).toThrow(/no algorithm name/);
});
