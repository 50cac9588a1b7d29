import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const root = join(__dirname, '..', '..');
export const KEYLESSD = join(root, 'dist', 'src', 'cli', 'keylessd.js');
export const KEYLESSCTL = join(root, 'dist', 'src', 'cli', 'keylessctl.js');

export interface Run {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `command` to its exit, capturing its output; `env` adds to this process's environment. */
export function run(command: string, args: readonly string[], options: { env?: NodeJS.ProcessEnv; onStart?: (child: ChildProcess) => void } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
    let [stdout, stderr] = ['', ''];
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('exit', (status) => resolve({ status, stdout, stderr }));
    options.onStart?.(child);
  });
}

/** keylessctl from the build, as a user runs it. */
export function keylessctl(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<Run> {
  return run(process.execPath, [KEYLESSCTL, ...args], { env });
}
