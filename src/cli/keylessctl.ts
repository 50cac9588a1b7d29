#!/usr/bin/env node
import { ConnectionError, RemoteError } from '../client/errors';
import { KeylessError, TimeoutError } from '../errors';
import { packageVersion } from '../util/package-root';
import { UsageError } from './ctl/connection';
import { audit } from './ctl/audit';
import { CheckFailedError, EXIT, WrongProtocolError } from './ctl/exit';
import { bench } from './ctl/bench';
import * as commands from './ctl/commands';

const COMMANDS: Readonly<Record<string, commands.Command>> = {
  ping: commands.ping,
  keys: commands.keys,
  key: commands.key,
  sign: commands.sign,
  decrypt: commands.decrypt,
  pki: commands.pki,
  audit,
  config: commands.config,
  bench,
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  return `Usage: keylessctl COMMAND [options]   (keylessctl COMMAND --help for its options)
       keylessctl --version

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`)
  .join('\n')}

Read commands (ping, keys, key, audit verify, config convert, bench) print JSON with --json.

Exit status:
  0  success
  1  the server refused or failed the operation (it answered an error code), or a check
     failed (audit verify found a broken chain, bench saw error answers)
  2  usage: unknown command or option, missing or malformed value, unreadable input file
  3  connection: cannot connect, TLS refused, session lost, no answer in time, wrong protocol
`;
}

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    process.stderr.write(usage());
    process.exitCode = EXIT.usage;
    return;
  }
  if (name === '-h' || name === '--help' || name === 'help') return void process.stdout.write(usage());
  if (name === '-v' || name === '--version') return void process.stdout.write(`${packageVersion()}\n`);
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command ${name}\n${usage()}`);
  if (rest.includes('--help') || rest.includes('-h')) return void process.stdout.write(`${command.help}\n`);
  await command.run(rest);
}

/** The message and exit status of whatever a command threw. */
function describeFailure(err: unknown): { line: string; status: number } {
  const e = err as Error & { code?: string; exitCode?: number };
  if (err instanceof RemoteError) return { line: `server answered ${err.code}: ${err.message}`, status: EXIT.refused };
  if (err instanceof TimeoutError) return { line: `${err.code}: ${err.message}`, status: EXIT.connection };
  if (err instanceof KeylessError) return { line: `${err.code}: ${err.message}`, status: EXIT.refused };
  if (err instanceof UsageError) return { line: e.message, status: EXIT.usage };
  if (err instanceof ConnectionError || err instanceof WrongProtocolError) return { line: e.message, status: EXIT.connection };
  if (err instanceof CheckFailedError) return { line: e.message, status: EXIT.refused };
  if (e.code?.startsWith('ERR_PARSE_ARGS')) return { line: `${e.message} (see --help)`, status: EXIT.usage };
  if (typeof e.exitCode === 'number') return { line: e.message, status: e.exitCode };
  return { line: e.message ?? String(err), status: EXIT.refused };
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const { line, status } = describeFailure(err);
  process.stderr.write(`keylessctl: ${line}\n`);
  process.exit(status);
});
