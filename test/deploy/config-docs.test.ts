import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ENV_OVERRIDES } from '../../src/config/load';
import { configSchema } from '../../src/config/schema';

// The generator is plain JavaScript so that it runs from dist/ after a build; here it is fed
// the TypeScript sources, so the comparison below does not depend on a fresh build.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { renderConfigReference } = require('../../scripts/gen-config-docs.js') as {
  renderConfigReference(schema: z.ZodType, env: Readonly<Record<string, readonly string[]>>): string;
};

const root = join(__dirname, '..', '..');

test('docs/configuration.md is what the schema generates (if not: npm run docs:config)', () => {
  const committed = readFileSync(join(root, 'docs', 'configuration.md'), 'utf8');
  expect(committed).toBe(renderConfigReference(configSchema, ENV_OVERRIDES));
});

/** The table row of one setting, split into its cells. */
function rowOf(text: string, path: string): string[] | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`| \`${path}\` |`));
  return line?.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
}

describe('the generator handles every shape the schema may grow into', () => {
  const kindA = z.object({ type: z.literal('alpha'), depth: z.number().int().min(1).max(9).default(3).describe('How deep.') }).strict();
  const kindB = z
    .object({ type: z.literal('beta'), mode: z.enum(['fast', 'safe']).describe('Which | way.'), extra: z.string().optional() })
    .describe('The beta kind.');
  const schema = z.object({
    listen: z.object({ port: z.number().int().min(1).max(65535).default(2408).describe('The port.') }).prefault({}),
    name: z.string().min(1).describe('Required name, see PATH.<seq>.'),
    path: z.string().startsWith('/').default('/v1').describe('A path.'),
    tags: z.array(z.string()).min(1).optional().describe('Some tags.'),
    things: z.array(z.discriminatedUnion('type', [kindA, kindB])).describe('Things by kind.'),
    regions: z.record(z.string(), z.object({ codes: z.array(z.number().int().min(0).max(255)).describe('Region codes.') })).default({}),
    labels: z.record(z.string(), z.string()).optional().describe('Free labels.'),
    either: z.union([z.string(), z.number()]).nullable().optional().describe('Text or number.'),
    merged: z.intersection(z.object({ a: z.boolean().default(true) }), z.object({ b: z.string() })).optional().describe('Both parts.'),
    count: z.number().int().min(0).default(0).describe('No upper bound.'),
  });
  const text = renderConfigReference(schema, { APP_PORT: ['listen', 'port'] });

  test('nested objects: dotted paths, types, defaults and descriptions', () => {
    expect(rowOf(text, 'listen.port')).toEqual(['`listen.port`', 'whole number (1–65535)', '`2408`', 'The port.']);
    expect(rowOf(text, 'path')).toEqual(['`path`', 'string starting with `/`', '`/v1`', 'A path.']);
    expect(rowOf(text, 'count')).toEqual(['`count`', 'whole number (≥ 0)', '`0`', 'No upper bound.']);
  });

  test('required settings are marked; prose cannot open HTML tags', () => {
    expect(rowOf(text, 'name')).toEqual(['`name`', 'string', '**required**', 'Required name, see PATH.&lt;seq>.']);
  });

  test('lists, records and unions of plain values', () => {
    expect(rowOf(text, 'tags')).toEqual(['`tags`', 'list (at least 1) of string', '', 'Some tags.']);
    expect(rowOf(text, 'regions.<name>.codes')).toEqual(['`regions.<name>.codes`', 'list of whole number (0–255)', '**required**', 'Region codes.']);
    expect(rowOf(text, 'labels.<name>')?.[1]).toBe('string');
    expect(rowOf(text, 'either')?.[1]).toBe('string \\| number \\| null');
    expect(rowOf(text, 'merged.a')?.[2]).toBe('`true`');
    expect(rowOf(text, 'merged.b')?.[2]).toBe('**required**');
  });

  test('a list of kinds gets a section per kind, named by its discriminator', () => {
    expect(rowOf(text, 'things')?.[3]).toContain('[`things`](#things)');
    expect(text).toContain('### `things`');
    expect(text).toContain('#### `type: alpha`');
    expect(text).toContain('#### `type: beta`\n\nThe beta kind.');
    expect(rowOf(text, 'things[].depth')).toEqual(['`things[].depth`', 'whole number (1–9)', '`3`', 'How deep.']);
    expect(rowOf(text, 'things[].mode')).toEqual(['`things[].mode`', '`fast` \\| `safe`', '**required**', 'Which \\| way.']);
  });

  test('environment overrides are listed with the setting each replaces', () => {
    expect(text).toContain('| `APP_PORT` | `listen.port` |');
  });
});
