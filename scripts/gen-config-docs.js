#!/usr/bin/env node
// Generates docs/configuration.md from the config schema the daemon validates with, so the
// reference cannot drift from the code. Run after `npm run build` (it reads dist/):
//   node scripts/gen-config-docs.js          writes docs/configuration.md
//   node scripts/gen-config-docs.js --check  exits 1 if docs/configuration.md is out of date
// test/deploy renders the same text from the TypeScript sources and compares.
'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');
const { z } = require('zod');

const HEADER = '| setting | type | default | meaning |\n|---|---|---|---|';

// zod's .int() adds these bounds; they say nothing an operator needs to read.
const UNBOUNDED = new Set([Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER]);

/** Table cells must not contain a bare `|` or a line break. */
function cell(text) {
  return String(text).replace(/\s*\n\s*/g, ' ').replace(/\|/g, '\\|');
}

/** Prose from `.describe()`: a `<word>` outside code spans would be taken for an HTML tag. */
function prose(text) {
  return cell(text)
    .split(/(`[^`]*`)/)
    .map((part, i) => (i % 2 === 1 ? part : part.replace(/</g, '&lt;')))
    .join('');
}

function code(value) {
  return `\`${typeof value === 'string' && value !== '' ? value : JSON.stringify(value)}\``;
}

/** Follows `$ref`s into `$defs`, which zod emits for schemas given an id or used recursively. */
function resolver(root) {
  return function resolve(schema) {
    let node = schema;
    while (node && typeof node.$ref === 'string') {
      const name = node.$ref.replace(/^#\/\$defs\//, '');
      const target = root.$defs && root.$defs[name];
      if (!target) throw new Error(`cannot resolve ${node.$ref} in the config schema`);
      const { $ref: _ref, ...rest } = node;
      node = { ...target, ...rest };
    }
    if (node && Array.isArray(node.allOf)) {
      // An intersection: one object with every part's fields.
      const parts = node.allOf.map(resolve);
      const { allOf: _allOf, ...rest } = node;
      node = parts.reduce(
        (merged, part) => ({
          ...part,
          ...merged,
          properties: { ...(merged.properties || {}), ...(part.properties || {}) },
          required: [...(merged.required || []), ...(part.required || [])],
        }),
        rest,
      );
    }
    return node;
  };
}

function variantsOf(schema) {
  return schema.oneOf || schema.anyOf;
}

function isObject(schema) {
  return schema.type === 'object' || schema.properties !== undefined;
}

function range(schema) {
  const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? `>${schema.exclusiveMinimum}` : undefined);
  const high = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? `<${schema.exclusiveMaximum}` : undefined);
  const shownLow = low !== undefined && !UNBOUNDED.has(low) ? low : undefined;
  const shownHigh = high !== undefined && !UNBOUNDED.has(high) ? high : undefined;
  if (shownLow !== undefined && shownHigh !== undefined) return ` (${shownLow}–${shownHigh})`;
  if (shownLow !== undefined) return ` (≥ ${shownLow})`;
  if (shownHigh !== undefined) return ` (≤ ${shownHigh})`;
  return '';
}

function stringType(schema) {
  if (schema.format === 'starts_with' && typeof schema.pattern === 'string') {
    const prefix = schema.pattern.replace(/^\^/, '').replace(/\.\*$/, '').replace(/\\(.)/g, '$1');
    return `string starting with ${code(prefix)}`;
  }
  if (schema.pattern) return `string matching ${code(schema.pattern)}`;
  if (schema.format) return `string (${schema.format})`;
  return 'string';
}

/** A short human name of a value's type: `whole number (1–65535)`, `` `a` | `b` ``, `list of string`. */
function typeName(schema, resolve) {
  const node = resolve(schema);
  if (node.enum) return node.enum.map(code).join(' | ');
  if (node.const !== undefined) return code(node.const);
  const variants = variantsOf(node);
  if (variants) return variants.map((v) => typeName(v, resolve)).join(' | ');
  if (Array.isArray(node.type)) return node.type.join(' | ');
  switch (node.type) {
    case 'integer':
      return `whole number${range(node)}`;
    case 'number':
      return `number${range(node)}`;
    case 'string':
      return stringType(node);
    case 'array': {
      const least = node.minItems ? ` (at least ${node.minItems})` : '';
      return `list${least} of ${node.items ? typeName(node.items, resolve) : 'values'}`;
    }
    case 'object':
      if (typeof node.additionalProperties === 'object') return `map of ${typeName(node.additionalProperties, resolve)}`;
      return 'section';
    case undefined:
      return 'any value';
    default:
      return String(node.type);
  }
}

/** Empty sections and lists as defaults tell nothing; everything else is shown as YAML would spell it. */
function defaultCell(schema, required) {
  if (schema.default === undefined) return required ? '**required**' : '';
  const value = schema.default;
  if (value !== null && typeof value === 'object' && Object.keys(value).length === 0) return '';
  return code(value);
}

/**
 * Walks one object schema, appending a table row per setting to `rows` and, for each list or
 * map whose entries come in several kinds (`backends`, by `type`), a subsection to `kinds`.
 */
function walk(schema, path, rows, kinds, resolve) {
  const node = resolve(schema);
  const required = new Set(node.required || []);
  for (const [name, raw] of Object.entries(node.properties || {})) {
    const child = resolve(raw);
    const here = path ? `${path}.${name}` : name;
    describeSetting(child, here, required.has(name), rows, kinds, resolve);
  }
}

function row(path, type, defaultText, description) {
  return `| ${code(path)} | ${cell(type)} | ${cell(defaultText)} | ${prose(description || '')} |`;
}

function describeSetting(child, here, required, rows, kinds, resolve) {
  const description = child.description || '';
  const kindsOf = (container) => {
    const variants = (variantsOf(container) || []).map(resolve);
    return variants.length > 0 && variants.every(isObject) ? variants : undefined;
  };
  if (child.type === 'array' && child.items) {
    const items = resolve(child.items);
    const variants = kindsOf(items);
    if (variants) {
      rows.push(row(here, `list${child.minItems ? ` (at least ${child.minItems})` : ''}`, defaultCell(child, required), `${description} Entry kinds: see [${code(here)}](#${anchor(here)}).`));
      kinds.push(kindSection(here, `${here}[]`, items, variants, resolve));
    } else if (isObject(items) && items.properties) {
      rows.push(row(here, 'list', defaultCell(child, required), description));
      walk(items, `${here}[]`, rows, kinds, resolve);
    } else {
      rows.push(row(here, typeName(child, resolve), defaultCell(child, required), description));
    }
    return;
  }
  if (isObject(child) && typeof child.additionalProperties === 'object' && !child.properties) {
    const value = resolve(child.additionalProperties);
    const entry = `${here}.<name>`;
    const variants = kindsOf(value);
    if (variants) {
      rows.push(row(entry, 'map', defaultCell(child, required), `${description} Entry kinds: see [${code(entry)}](#${anchor(entry)}).`));
      kinds.push(kindSection(entry, entry, value, variants, resolve));
    } else if (isObject(value) && value.properties) {
      rows.push(row(entry, 'map', defaultCell(child, required), [description, value.description].filter(Boolean).join(' ')));
      walk(value, entry, rows, kinds, resolve);
    } else {
      rows.push(row(entry, typeName(value, resolve), defaultCell(child, required), [description, value.description].filter(Boolean).join(' ')));
    }
    return;
  }
  if (isObject(child) && child.properties) {
    if (description || required) rows.push(row(here, 'section', defaultCell(child, required), description));
    walk(child, here, rows, kinds, resolve);
    return;
  }
  const variants = kindsOf(child);
  if (variants) {
    rows.push(row(here, 'section', defaultCell(child, required), `${description} Kinds: see [${code(here)}](#${anchor(here)}).`));
    kinds.push(kindSection(here, here, child, variants, resolve));
    return;
  }
  const fixed = child.const !== undefined && !description ? `Always ${code(child.const)} for this kind.` : description;
  rows.push(row(here, typeName(child, resolve), defaultCell(child, required), fixed));
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes. */
function anchor(heading) {
  return heading.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-');
}

/** The field whose constant value tells the kinds apart (`type`), if there is one. */
function discriminator(variants, resolve) {
  const candidates = Object.keys(variants[0].properties || {});
  return candidates.find((name) => {
    const values = variants.map((v) => v.properties && v.properties[name] && resolve(v.properties[name]).const);
    return values.every((value) => value !== undefined) && new Set(values).size === values.length;
  });
}

function kindSection(title, prefix, container, variants, resolve) {
  const tag = discriminator(variants, resolve);
  const parts = [`### ${code(title)}`, ''];
  if (container.description) parts.push(prose(container.description), '');
  parts.push(tag ? `Each entry is one of these kinds, chosen by \`${tag}\`.` : 'Each entry has one of these shapes.', '');
  variants.forEach((variant, index) => {
    const rows = [];
    const nested = [];
    walk(variant, prefix, rows, nested, resolve);
    const name = tag ? `\`${tag}: ${resolve(variant.properties[tag]).const}\`` : `shape ${index + 1}`;
    parts.push(`#### ${name}`, '');
    if (variant.description) parts.push(prose(variant.description), '');
    parts.push(HEADER, ...rows, '', ...nested);
  });
  return parts.join('\n');
}

/**
 * The text of docs/configuration.md. `envOverrides` maps environment variable names to the
 * config path each sets (ENV_OVERRIDES of src/config/load.ts).
 */
function renderConfigReference(configSchema, envOverrides) {
  const root = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' });
  const resolve = resolver(root);
  const rows = [];
  const kinds = [];
  walk(root, '', rows, kinds, resolve);
  const env = Object.entries(envOverrides).map(([name, path]) => `| \`${name}\` | \`${path.join('.')}\` |`);
  return [
    '# Configuration reference',
    '',
    '<!-- Generated from src/config/schema.ts by `npm run docs:config` (scripts/gen-config-docs.js). Do not edit: a test fails if this file differs from what the schema generates. -->',
    '',
    'keylessd reads one YAML file: `keylessd --config FILE`. `keylessd --check-config FILE` validates it,',
    'reads the TLS files and opens every backend without serving. Relative paths are relative to the',
    'folder of the config file. Unknown fields are errors. A gokeyless.yaml is accepted too',
    '([compat.md](compat.md)).',
    '',
    'Environment variables override the file, and command-line flags override both (`keylessd --help`):',
    '',
    '| variable | sets |',
    '|---|---|',
    ...env,
    '',
    '## Settings',
    '',
    HEADER,
    ...rows,
    '',
    ...(kinds.length > 0 ? ['## Settings by kind', '', ...kinds.flatMap((k) => [k, ''])] : []),
  ]
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .replace(/\n*$/, '\n');
}

module.exports = { renderConfigReference };

if (require.main === module) {
  const { configSchema } = require('../dist/src/config/schema');
  const { ENV_OVERRIDES } = require('../dist/src/config/load');
  const target = join(__dirname, '..', 'docs', 'configuration.md');
  const text = renderConfigReference(configSchema, ENV_OVERRIDES);
  if (process.argv.includes('--check')) {
    const current = readFileSync(target, 'utf8');
    if (current !== text) {
      process.stderr.write('docs/configuration.md is out of date: run npm run docs:config\n');
      process.exit(1);
    }
  } else {
    writeFileSync(target, text);
    process.stdout.write(`wrote ${target}\n`);
  }
}
