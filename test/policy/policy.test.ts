import { ConfigError } from '../../src/errors';
import type { ClientIdentity } from '../../src/core/policy/identity';
import { compilePattern } from '../../src/core/policy/pattern';
import { Policy, type PolicyConfig } from '../../src/core/policy/policy';
import { groupSchema } from '../../src/core/policy/schema';

const edge = (over: Partial<ClientIdentity>): ClientIdentity => ({
  subject: 'CN=edge',
  commonNames: ['edge'],
  organizations: [],
  organizationalUnits: [],
  sanDns: [],
  sanUri: [],
  fingerprint: 'ab'.repeat(32),
  ...over,
});

const config: PolicyConfig = {
  default_policy: 'allow',
  groups: {
    eu: { subject_ou: ['eu'], san_dns: ['*.eu.edge.example'] },
    us: { subject_ou: ['us'] },
    pinned: { fingerprints: ['CD:'.repeat(31) + 'CD'] },
    regulated: { subject_o: ['Example Edge'], compliance_regions: [1, 2] },
  },
  keys: {
    'eu-only': { policy: { groups: ['eu'], operations: ['sign', 'decrypt'] } },
    'pss-only': { policy: { groups: ['eu', 'us'], operations: ['sign'], algorithms: ['RSA_PSS_SHA256'] } },
    'pinned-key': { policy: { groups: ['pinned'], operations: ['sign'] } },
    'regional-key': { policy: { groups: ['regulated'], operations: ['sign'] } },
  },
};
const policy = new Policy(config);

test('an allowed group may use the key; another group is denied with a reason', () => {
  const eu = policy.membership(edge({ organizationalUnits: ['eu'] }));
  const us = policy.membership(edge({ organizationalUnits: ['us'] }));
  expect(policy.check(eu, 'eu-only', 'sign', 'ECDSA_SHA256')).toEqual({ allowed: true });
  expect(policy.check(us, 'eu-only', 'sign', 'ECDSA_SHA256')).toEqual({ allowed: false, reason: 'client is in none of the groups allowed to use key eu-only (eu)' });
  expect(policy.visible(eu, 'eu-only')).toBe(true);
  expect(policy.visible(us, 'eu-only')).toBe(false);
});

test('groups match on any listed fact: a SAN DNS wildcard covers one label only', () => {
  expect(policy.membership(edge({ sanDns: ['fra1.eu.edge.example'] })).groups.has('eu')).toBe(true);
  expect(policy.membership(edge({ sanDns: ['a.fra1.eu.edge.example'] })).groups.has('eu')).toBe(false);
});

test('operations and algorithms restrict a key', () => {
  const us = policy.membership(edge({ organizationalUnits: ['us'] }));
  expect(policy.check(us, 'pss-only', 'sign', 'RSA_PSS_SHA256').allowed).toBe(true);
  expect(policy.check(us, 'pss-only', 'sign', 'RSA_PKCS1_SHA256')).toEqual({ allowed: false, reason: 'key pss-only does not allow RSA_PKCS1_SHA256' });
  expect(policy.check(us, 'pss-only', 'decrypt')).toEqual({ allowed: false, reason: 'key pss-only does not allow decrypt' });
});

test('fingerprints match whatever their colons and case', () => {
  expect(policy.check(policy.membership(edge({ fingerprint: 'cd'.repeat(32) })), 'pinned-key', 'sign').allowed).toBe(true);
  expect(policy.check(policy.membership(edge({})), 'pinned-key', 'sign').allowed).toBe(false);
});

test('compliance-region groups need both the certificate fact and a listed region in the request', () => {
  const member = policy.membership(edge({ organizations: ['Example Edge'] }));
  expect(policy.check(member, 'regional-key', 'sign', undefined, 2).allowed).toBe(true);
  expect(policy.check(member, 'regional-key', 'sign', undefined, 3).allowed).toBe(false);
  expect(policy.check(member, 'regional-key', 'sign').allowed).toBe(false);
  expect(policy.check(policy.membership(edge({})), 'regional-key', 'sign', undefined, 2).allowed).toBe(false);
  expect(policy.visible(member, 'regional-key')).toBe(true);
});

test('default_policy decides keys without a policy', () => {
  const anyone = policy.membership(edge({}));
  expect(policy.check(anyone, 'unlisted', 'sign').allowed).toBe(true);
  const strict = new Policy({ ...config, default_policy: 'deny' });
  expect(strict.check(strict.membership(edge({})), 'unlisted', 'sign')).toEqual({ allowed: false, reason: 'key unlisted has no policy and default_policy is deny' });
  expect(strict.visible(strict.membership(edge({})), 'unlisted')).toBe(false);
});

test('a key policy naming an unknown group is a config error naming key and group', () => {
  expect(() => new Policy({ ...config, keys: { k: { policy: { groups: ['mars'], operations: ['sign'] } } } })).toThrow(new ConfigError('keys.k.policy.groups', 'unknown group "mars" (define it under groups)'));
});

test('patterns are literal but for *: no regular-expression metacharacter leaks', () => {
  expect(compilePattern('a.b', 'text')('axb')).toBe(false);
  expect(compilePattern('a.b', 'text')('A.B')).toBe(true);
  expect(compilePattern('edge-(1|2)', 'text')('edge-1')).toBe(false);
  expect(compilePattern('edge-*', 'text')('edge-fra1.eu')).toBe(true);
  expect(compilePattern('*.example', 'dns')('a.b.example')).toBe(false);
  expect(compilePattern('spiffe://edge/*', 'text')('spiffe://edge/fra/1')).toBe(true);
});

test('a group with no matcher, or a malformed fingerprint, is refused by the schema', () => {
  expect(groupSchema.safeParse({}).success).toBe(false);
  expect(groupSchema.safeParse({ fingerprints: ['abcd'] }).success).toBe(false);
});
