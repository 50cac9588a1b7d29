import type { AlgorithmName } from '../crypto/algorithms';
import { ConfigError } from '../../errors';
import type { ClientIdentity } from './identity';
import { anyMatch, compilePattern, type Matcher } from './pattern';
import type { GroupConfig, KeyPolicyConfig } from './schema';

export type Operation = 'sign' | 'decrypt' | 'decrypt_raw';

/** The groups a session's certificate places it in, computed once per session. */
export interface Membership {
  /** Groups the certificate alone satisfies. */
  readonly groups: ReadonlySet<string>;
  /** Groups whose certificate facts match but which also need a compliance region in the request. */
  readonly regional: ReadonlyMap<string, ReadonlySet<number>>;
}

export type Decision = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

const ALLOWED: Decision = { allowed: true };

interface CompiledGroup {
  readonly name: string;
  /** undefined: the group names no certificate fact, so every client matches that part. */
  readonly matches?: (identity: ClientIdentity) => boolean;
  readonly regions?: ReadonlySet<number>;
}

interface CompiledKeyPolicy {
  readonly groups: readonly string[];
  readonly operations: ReadonlySet<Operation>;
  readonly algorithms?: ReadonlySet<AlgorithmName>;
}

export interface PolicyConfig {
  readonly default_policy: 'allow' | 'deny';
  readonly groups: Readonly<Record<string, GroupConfig>>;
  readonly keys: Readonly<Record<string, { readonly policy?: KeyPolicyConfig }>>;
}

function compileGroup(name: string, config: GroupConfig): CompiledGroup {
  const facts: Array<[Matcher[], (i: ClientIdentity) => readonly string[]]> = [];
  const add = (patterns: string[] | undefined, kind: 'dns' | 'text', values: (i: ClientIdentity) => readonly string[]) => {
    if (patterns?.length) facts.push([patterns.map((p) => compilePattern(p, kind)), values]);
  };
  add(config.subject_cn, 'text', (i) => i.commonNames);
  add(config.subject_o, 'text', (i) => i.organizations);
  add(config.subject_ou, 'text', (i) => i.organizationalUnits);
  add(config.san_dns, 'dns', (i) => i.sanDns);
  add(config.san_uri, 'text', (i) => i.sanUri);
  const fingerprints = new Set((config.fingerprints ?? []).map((f) => f.replace(/:/g, '').toLowerCase()));
  const matches =
    facts.length === 0 && fingerprints.size === 0
      ? undefined
      : (identity: ClientIdentity) => fingerprints.has(identity.fingerprint) || facts.some(([matchers, values]) => anyMatch(matchers, values(identity)));
  return { name, matches, regions: config.compliance_regions?.length ? new Set(config.compliance_regions) : undefined };
}

/**
 * Who may use which key for what. Built once per configuration; `membership` runs once
 * per session and `check` per request, with no allocation on the allow path.
 */
export class Policy {
  private readonly groups: CompiledGroup[];
  private readonly keys = new Map<string, CompiledKeyPolicy>();
  private readonly defaultAllows: boolean;

  constructor(config: PolicyConfig) {
    this.defaultAllows = config.default_policy === 'allow';
    this.groups = Object.entries(config.groups).map(([name, group]) => compileGroup(name, group));
    for (const [key, options] of Object.entries(config.keys)) {
      if (!options.policy) continue;
      for (const group of options.policy.groups) {
        if (!(group in config.groups)) throw new ConfigError(`keys.${key}.policy.groups`, `unknown group "${group}" (define it under groups)`);
      }
      this.keys.set(key, {
        groups: options.policy.groups,
        operations: new Set(options.policy.operations),
        algorithms: options.policy.algorithms && new Set(options.policy.algorithms),
      });
    }
  }

  membership(identity: ClientIdentity): Membership {
    const groups = new Set<string>();
    const regional = new Map<string, ReadonlySet<number>>();
    for (const group of this.groups) {
      if (group.matches && !group.matches(identity)) continue;
      if (group.regions) regional.set(group.name, group.regions);
      else groups.add(group.name);
    }
    return { groups, regional };
  }

  check(member: Membership, keyName: string, operation: Operation, algorithm?: AlgorithmName, complianceRegion?: number): Decision {
    const policy = this.keys.get(keyName);
    if (!policy) return this.defaultAllows ? ALLOWED : { allowed: false, reason: `key ${keyName} has no policy and default_policy is deny` };
    if (!policy.operations.has(operation)) return { allowed: false, reason: `key ${keyName} does not allow ${operation}` };
    if (algorithm && policy.algorithms && !policy.algorithms.has(algorithm)) return { allowed: false, reason: `key ${keyName} does not allow ${algorithm}` };
    for (const group of policy.groups) {
      if (member.groups.has(group)) return ALLOWED;
      const regions = member.regional.get(group);
      if (regions && complianceRegion !== undefined && regions.has(complianceRegion)) return ALLOWED;
    }
    return { allowed: false, reason: `client is in none of the groups allowed to use key ${keyName} (${policy.groups.join(', ')})` };
  }

  /** Whether list_keys shows the key: the client may use it for something, in some region. */
  visible(member: Membership, keyName: string): boolean {
    const policy = this.keys.get(keyName);
    if (!policy) return this.defaultAllows;
    return policy.groups.some((group) => member.groups.has(group) || member.regional.has(group));
  }
}
