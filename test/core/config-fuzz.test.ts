import fc from 'fast-check';
import { parseYaml, validateConfig } from '../../src/config/load';
import { ConfigError } from '../../src/errors';

const RUNS = Number(process.env.FUZZ_RUNS ?? 20_000);

/** Any outcome but a Config or a ConfigError is a bug: no TypeError, no stack trace for the operator. */
function check(run: () => unknown): void {
  try {
    run();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
  }
}

const anything = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(tie('value'), { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 12 }), tie('value'), { maxKeys: 5 })),
})).value;
const fieldNames = fc.constantFrom('listen', 'tls', 'limits', 'metrics', 'compat', 'log', 'backends', 'keys', 'groups', 'default_policy', 'audit', 'pid_file', 'port', 'private_key_stores', 'auth_cert');

test(`random settings objects end in a Config or a ConfigError (${RUNS} cases)`, () => {
  fc.assert(fc.property(fc.dictionary(fieldNames, anything, { maxKeys: 8 }), (raw) => check(() => validateConfig(raw as Record<string, unknown>))), { numRuns: RUNS });
});

test(`random YAML text ends in settings or a ConfigError naming the line (${RUNS} cases)`, () => {
  const yamlish = fc.array(fc.constantFrom('listen:', '  port: ', '2408', '"abc"', '- ', 'tls: {', '}', '[', ']', ': ', '\n', '  ', '&a', '*a', '!!binary', '#', 'backends:', '- type: file'), { maxLength: 30 }).map((parts) => parts.join(''));
  fc.assert(fc.property(yamlish, (text) => check(() => parseYaml(text, 'fuzz.yaml'))), { numRuns: RUNS });
});
