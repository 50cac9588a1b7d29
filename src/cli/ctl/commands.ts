import { parseArgs, type ParseArgsConfig } from 'node:util';
import { SCHEME_OF, SIGNATURE_ALGORITHMS, isSignatureAlgorithm } from '../../core/crypto/algorithms';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { stringify } from 'yaml';
import { convertGokeylessConfig } from '../../config/gokeyless';
import { parseYaml } from '../../config/load';
import { initPki } from '../../pki/init';
import { CONNECTION_HELP, CONNECTION_OPTIONS, UsageError, openSession } from './connection';
import { describeFsError, parseHex, readInput, writeOutput } from './io';
import { CheckFailedError } from './exit';
import { PKI_CLIENT_HELP, runPkiClients } from './pki-clients';
import { parseKeyRef } from './keyref';
import type { keyless } from '../../gen/keyless';
import { connectCloudflare, skiFromFlag } from './cloudflare';
import { Opcode, SIGN_OPCODE } from '../../protocols/compat/request';
import { ERROR_BYTE_NAMES, Tag } from '../../protocols/compat/codec';
import { hashMessage } from '../../core/crypto/hashes';

export interface Command {
  readonly summary: string;
  readonly help: string;
  run(argv: string[]): Promise<void>;
}

/** `--help` never reaches here: keylessctl answers it before running a command. */
function parse<const T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T) {
  return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
}

function required(value: string | undefined, flag: string): string {
  if (value === undefined) throw new UsageError(`${flag} is required`);
  return value;
}

function keyLine(key: keyless.v1.KeyInfo.$Properties): string {
  const size = key.type === 'ec' ? key.curve : key.type === 'rsa' ? `${key.bits}` : '';
  return [key.name, key.type, size, Buffer.from(key.ski ?? []).toString('hex'), key.backend, key.decryptAllowed ? 'decrypt' : ''].join('\t');
}

const PROTOCOL_HELP = `  --protocol P       keyless.v1 (default) or cloudflare (the compatibility port; --server host:port, default 127.0.0.1:2407)`;

function protocolOf(value: string | undefined): 'keyless.v1' | 'cloudflare' {
  if (value === undefined || value === 'keyless.v1' || value === 'keyless') return 'keyless.v1';
  if (value === 'cloudflare') return 'cloudflare';
  throw new UsageError(`--protocol must be keyless.v1 or cloudflare, got ${value}`);
}

export const ping: Command = {
  summary: 'check that a server answers (round trip)',
  help: `Usage: keylessctl ping [--count N] [--protocol keyless.v1|cloudflare] [--json]\n\n  --json             one JSON object: server, protocol and each round trip in ms\n${PROTOCOL_HELP}\n${CONNECTION_HELP}`,
  async run(argv) {
    const { values } = parse(argv, { ...CONNECTION_OPTIONS, count: { type: 'string', default: '1' }, protocol: { type: 'string' }, json: { type: 'boolean' } });
    const count = Number(values.count);
    if (!Number.isInteger(count) || count < 1) throw new UsageError(`--count must be a positive whole number, got ${values.count}`);
    const session = protocolOf(values.protocol) === 'cloudflare' ? await connectCloudflare(values) : await openSession(values);
    const roundTrips: number[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const started = process.hrtime.bigint();
        const payload = Buffer.from(`ping ${i}`);
        const echoed = await session.ping(payload);
        if (!echoed.equals(payload)) throw new CheckFailedError('the server echoed a different payload');
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        roundTrips.push(Number(ms.toFixed(3)));
        if (!values.json) process.stdout.write(`pong from ${values.server ?? 'server'}: ${ms.toFixed(3)} ms\n`);
      }
    } finally {
      await session.close();
    }
    if (values.json) process.stdout.write(`${JSON.stringify({ server: values.server ?? null, protocol: protocolOf(values.protocol), round_trips_ms: roundTrips })}\n`);
  },
};

export const keys: Command = {
  summary: 'list the keys this client may use',
  help: `Usage: keylessctl keys [--json]\n\nColumns: name, type, bits or curve, SKI, backend, decrypt.\n\n${CONNECTION_HELP}`,
  async run(argv) {
    const { values } = parse(argv, { ...CONNECTION_OPTIONS, json: { type: 'boolean' } });
    const session = await openSession(values);
    try {
      const list = await session.listKeys();
      if (values.json) process.stdout.write(`${JSON.stringify(list.map(keyJson), null, 2)}\n`);
      else process.stdout.write(list.map((k) => `${keyLine(k)}\n`).join(''));
    } finally {
      await session.close();
    }
  },
};

function keyJson(key: keyless.v1.KeyInfo.$Properties) {
  return {
    name: key.name,
    type: key.type,
    bits: key.bits,
    curve: key.curve || undefined,
    ski: Buffer.from(key.ski ?? []).toString('hex'),
    spki_sha256: Buffer.from(key.spkiSha256 ?? []).toString('hex'),
    backend: key.backend,
    algorithms: (key.algorithms ?? []).map((a) => SIGNATURE_ALGORITHMS[a - 1]),
    decrypt_allowed: key.decryptAllowed ?? false,
    public_key_pem: `-----BEGIN PUBLIC KEY-----\n${Buffer.from(key.publicKey ?? []).toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PUBLIC KEY-----\n`,
  };
}

export const key: Command = {
  summary: 'show one key (by name, SKI hex or SPKI SHA-256 hex), with its public key',
  help: `Usage: keylessctl key KEY [--json | --pem]\n\n  --json  JSON (the default output)\n  --pem   print only the public key, PEM\n\n${CONNECTION_HELP}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { ...CONNECTION_OPTIONS, pem: { type: 'boolean' }, json: { type: 'boolean' } });
    if (values.pem && values.json) throw new UsageError('give --json or --pem, not both');
    const ref = parseKeyRef(required(positionals[0], 'KEY'));
    const session = await openSession(values);
    try {
      const info = keyJson(await session.getKey(ref));
      process.stdout.write(values.pem ? info.public_key_pem : `${JSON.stringify(info, null, 2)}\n`);
    } finally {
      await session.close();
    }
  },
};

export const sign: Command = {
  summary: 'sign a digest or a message with a key',
  help: `Usage: keylessctl sign --key KEY --algorithm ALG (--digest HEX | --message FILE | < message)
                        [--format hex|base64|raw] [--out FILE]

  --key KEY        key name, SKI (40 hex digits) or SPKI SHA-256 (64 hex digits)
  --algorithm ALG  one of ${SIGNATURE_ALGORITHMS.join(', ')}
  --digest HEX     sign this digest (its length must match the algorithm's hash)
  --message FILE   sign this message ('-' or no flag: standard input); the server hashes it
  --format F       hex (default), base64 or raw
  --out FILE       write the signature there instead of standard output
${PROTOCOL_HELP} (--key must then be an SKI)

${CONNECTION_HELP}`,
  async run(argv) {
    const { values } = parse(argv, {
      ...CONNECTION_OPTIONS,
      key: { type: 'string' },
      algorithm: { type: 'string' },
      digest: { type: 'string' },
      message: { type: 'string' },
      format: { type: 'string', default: 'hex' },
      out: { type: 'string' },
      protocol: { type: 'string' },
    });
    const ref = parseKeyRef(required(values.key, '--key'));
    const algorithm = required(values.algorithm, '--algorithm').toUpperCase();
    if (!isSignatureAlgorithm(algorithm)) {
      throw new UsageError(`unknown --algorithm ${values.algorithm}; choose one of ${SIGNATURE_ALGORITHMS.join(', ')}`);
    }
    if (values.digest !== undefined && values.message !== undefined) throw new UsageError('give --digest or --message, not both');
    const input: { digest: Buffer } | { message: Buffer } = values.digest !== undefined ? { digest: parseHex(values.digest, '--digest') } : { message: readInput(values.message, 'the message') };
    if (protocolOf(values.protocol) === 'cloudflare') {
      const ski = skiFromFlag(values.key!);
      const scheme = SCHEME_OF[algorithm];
      // The Cloudflare protocol signs digests (Ed25519: the message); hash a message here.
      const payload = 'digest' in input ? input.digest : scheme.kind === 'ed25519' ? input.message : hashMessage(scheme.hash, input.message);
      const client = await connectCloudflare(values);
      try {
        const answer = await client.request(SIGN_OPCODE[algorithm], payload, [[Tag.ski, ski]]);
        if (answer.opcode === Opcode.error) throw new CheckFailedError(`server answered error 0x${(answer.payload[0] ?? 0).toString(16).padStart(2, '0')} (${ERROR_BYTE_NAMES[answer.payload[0] ?? 0] ?? 'unknown'})`);
        writeOutput(answer.payload, values.format!, values.out);
      } finally {
        client.close();
      }
      return;
    }
    const session = await openSession(values);
    try {
      writeOutput(await session.sign(ref, algorithm, input), values.format!, values.out);
    } finally {
      await session.close();
    }
  },
};

export const decrypt: Command = {
  summary: 'decrypt an RSA ciphertext (raw or OAEP-SHA256) with a key that allows it',
  help: `Usage: keylessctl decrypt --key KEY [--padding raw|oaep-sha256] (--in FILE | --hex HEX | < ciphertext)
                           [--format hex|base64|raw] [--out FILE]

${CONNECTION_HELP}`,
  async run(argv) {
    const { values } = parse(argv, {
      ...CONNECTION_OPTIONS,
      key: { type: 'string' },
      padding: { type: 'string', default: 'oaep-sha256' },
      in: { type: 'string' },
      hex: { type: 'string' },
      format: { type: 'string', default: 'hex' },
      out: { type: 'string' },
    });
    const ref = parseKeyRef(required(values.key, '--key'));
    if (values.padding !== 'raw' && values.padding !== 'oaep-sha256') throw new UsageError(`--padding must be raw or oaep-sha256, got ${values.padding}`);
    const ciphertext = values.hex !== undefined ? parseHex(values.hex, '--hex') : readInput(values.in, 'the ciphertext');
    const session = await openSession(values);
    try {
      writeOutput(await session.decrypt(ref, values.padding === 'raw' ? 'rsa-raw' : 'rsa-oaep-sha256', ciphertext), values.format!, values.out);
    } finally {
      await session.close();
    }
  },
};

export const pki: Command = {
  summary: 'certificates: pki init DIR (CA, server, client), pki add-client NAME, pki revoke, pki crl',
  help: `Usage: keylessctl pki init DIR [options]
${PKI_CLIENT_HELP}

Writes ca.crt/ca.key, server.crt/server.key and client.crt/client.key (ECDSA P-256) into DIR.
Refuses to replace an existing CA.

  --ca-name NAME         CA common name (default "keylessd CA")
  --server-name NAME     server certificate common name (default: first --server-dns, else "localhost")
  --server-dns A,B       DNS names of the server (default localhost)
  --server-ip A,B        IP addresses of the server (default 127.0.0.1)
  --client-name NAME     client certificate common name (default "keyless edge")
  --client-org ORG       client certificate organization (O)
  --client-ou OU         client certificate organizational unit (OU), e.g. a region
  --ca-days N            CA lifetime in days (default 3650)
  --days N               server and client certificate lifetime in days (default 397)`,
  async run(argv) {
    if (argv[0] !== undefined && argv[0] !== 'init' && !argv[0].startsWith('-')) return runPkiClients(argv);
    const { values, positionals } = parse(argv, {
      'ca-name': { type: 'string', default: 'keylessd CA' },
      'server-name': { type: 'string' },
      'server-dns': { type: 'string', default: 'localhost' },
      'server-ip': { type: 'string', default: '127.0.0.1' },
      'client-name': { type: 'string', default: 'keyless edge' },
      'client-org': { type: 'string' },
      'client-ou': { type: 'string' },
      'ca-days': { type: 'string', default: '3650' },
      days: { type: 'string', default: '397' },
    });
    if (positionals[0] !== 'init') throw new UsageError('pki subcommands: init DIR, add-client NAME, revoke CERT, crl');
    const dir = required(positionals[1], 'DIR');
    const days = (flag: string, text: string) => {
      const n = Number(text);
      if (!Number.isInteger(n) || n < 1 || n > 36500) throw new UsageError(`--${flag} must be a whole number of days from 1 to 36500, got ${text}`);
      return n;
    };
    const list = (text: string) => text.split(',').map((s) => s.trim()).filter(Boolean);
    const dnsNames = list(values['server-dns']!);
    await initPki(dir, {
      caName: values['ca-name']!,
      serverName: values['server-name'] ?? dnsNames[0] ?? 'localhost',
      serverDnsNames: dnsNames,
      serverIps: list(values['server-ip']!),
      clientName: values['client-name']!,
      clientOrganization: values['client-org'],
      clientOrganizationalUnit: values['client-ou'],
      caDays: days('ca-days', values['ca-days']!),
      leafDays: days('days', values.days!),
    });
    process.stdout.write(
      `wrote ca.crt, ca.key, server.crt, server.key, client.crt, client.key, audit-signing.key, audit-signing.pub to ${dir}\nkeep ca.key offline: whoever holds it can mint edge certificates\ngive audit-signing.pub to your auditors: keylessctl audit verify --public-key audit-signing.pub\n`,
    );
  },
};

export const config: Command = {
  summary: 'convert a gokeyless.yaml to keylessd.yaml (config convert FILE > keylessd.yaml)',
  help: `Usage: keylessctl config convert [--json] GOKEYLESS_YAML > keylessd.yaml

Prints the keylessd configuration equivalent to a gokeyless.yaml on standard output and,
on standard error, each gokeyless setting it does not carry over and why.
keylessd --config gokeyless.yaml also works directly; converting lets you review and edit.
--json prints {"config": …, "notes": [{"key", "why"}]} on standard output instead.`,
  async run(argv) {
    const { positionals, values } = parse(argv, { json: { type: 'boolean' } });
    if (positionals[0] !== 'convert' || !positionals[1]) throw new UsageError('usage: keylessctl config convert GOKEYLESS_YAML');
    const file = positionals[1];
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${describeFsError(err)}`, { cause: err });
    }
    const { config, notes } = convertGokeylessConfig(parseYaml(text, file), dirname(resolve(file)));
    if (values.json) return void process.stdout.write(`${JSON.stringify({ config, notes }, null, 2)}\n`);
    for (const note of notes) process.stderr.write(`${note.key}: ${note.why}\n`);
    process.stdout.write(`# converted from ${file} by keylessctl config convert\n${stringify(config)}`);
  },
};
