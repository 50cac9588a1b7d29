#!/usr/bin/env node
import { ConnectionError, RemoteError } from '../client/errors';
import { KeylessError } from '../errors';
import { UsageError } from './ctl/connection';
import { audit } from './ctl/audit';
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
  return `Usage: keylessctl COMMAND [options]   (keylessctl COMMAND --help for its options)\n\nCommands:\n${Object.entries(COMMANDS)
    .map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`)
    .join('\n')}\n`;
}

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') return void process.stdout.write(usage());
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command ${name}\n${usage()}`);
  if (rest.includes('--help') || rest.includes('-h')) return void process.stdout.write(`${command.help}\n`);
  await command.run(rest);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const e = err as Error & { code?: string };
  let line: string;
  if (err instanceof RemoteError) line = `server answered ${err.code}: ${err.message}`;
  else if (err instanceof KeylessError) line = `${err.code}: ${err.message}`;
  else if (err instanceof UsageError || err instanceof ConnectionError) line = e.message;
  else if (e.code?.startsWith('ERR_PARSE_ARGS')) line = `${e.message} (see --help)`;
  else line = e.message ?? String(err);
  process.stderr.write(`keylessctl: ${line}\n`);
  process.exit(1);
});
