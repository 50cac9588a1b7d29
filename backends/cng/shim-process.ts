import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BackendUnavailableError, BadRequestError, TimeoutError } from '../../src/errors';
import type { Logger } from '../../src/log';
import { PendingRequests } from '../pending';
import { decodeResponse, encodeRequest, FrameReader, type CngRequest, type CngResponse } from './codec';

export interface ShimCommand {
  readonly file: string;
  readonly args: readonly string[];
}

export type ShimRequest = Omit<CngRequest, 'id'>;

/** Lines of the shim's stderr kept to explain why it died. */
const STDERR_TAIL = 5;
/** The frame's id is 32 bits. */
const MAX_ID = 0xffffffff;

/**
 * One life of the shim process: requests out on stdin, answers matched by id from stdout
 * in whatever order they come, each with its own deadline. When the process ends (or
 * breaks the framing and is killed for it) every request still waiting fails with
 * BackendUnavailableError and `exited` settles with the reason; restarting is the
 * backend's job.
 */
export class ShimProcess {
  /** Settles, never rejects, with why the process ended. */
  readonly exited: Promise<string>;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly reader = new FrameReader();
  private readonly pending = new PendingRequests<CngResponse>(MAX_ID);
  private readonly stderrTail: string[] = [];
  private ended = false;
  private failure?: string;
  private settleExited!: (reason: string) => void;

  constructor(
    command: ShimCommand,
    private readonly logger: Logger,
  ) {
    this.exited = new Promise((resolve) => (this.settleExited = resolve));
    // env: the caller's process.env as it is now (jest hands each test file its own copy).
    this.child = spawn(command.file, [...command.args], { stdio: 'pipe', env: process.env, windowsHide: true });
    this.child.stdout.on('data', (chunk: Buffer) => this.receive(chunk));
    // Writing to a shim that just died raises EPIPE here; the exit handler reports the death.
    this.child.stdin.on('error', () => undefined);
    createInterface({ input: this.child.stderr }).on('line', (line) => this.logStderr(line));
    this.child.on('error', (err) => this.end(`could not be started (${command.file}: ${err.message})`));
    this.child.on('exit', (code, signal) => this.end(this.failure ?? (signal ? `was killed by ${signal}` : `exited with code ${code}`)));
  }

  get alive(): boolean {
    return !this.ended;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  call(request: ShimRequest, timeoutMs: number, what: string): Promise<CngResponse> {
    if (this.ended) return Promise.reject(new BackendUnavailableError(`${what}: the CNG shim is not running`));
    const send = (id: number) => {
      let frame: Buffer;
      try {
        frame = encodeRequest({ ...request, id });
      } catch (err) {
        throw new BadRequestError(`${what}: ${(err as Error).message}`, { cause: err });
      }
      this.child.stdin.write(frame);
    };
    return this.pending.add(send, { ms: timeoutMs, error: () => new TimeoutError(`${what} did not finish within ${timeoutMs} ms`) });
  }

  /** Ends the process now; waiting requests fail with BackendUnavailableError. */
  kill(reason: string): void {
    this.failure ??= reason;
    this.child.kill('SIGKILL');
  }

  /** Closes stdin so the shim answers what it has and exits by itself; kills it after `graceMs`. */
  async close(graceMs: number): Promise<void> {
    if (this.ended) return;
    this.failure ??= 'was closed';
    this.child.stdin.end();
    const timer = setTimeout(() => this.kill('did not exit after its stdin closed'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  private receive(chunk: Buffer): void {
    try {
      for (const body of this.reader.push(chunk)) {
        const response = decodeResponse(body);
        // Unknown ids are answers that came after their deadline: resolve() ignores them.
        this.pending.resolve(response.id, response);
      }
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'the CNG shim broke the frame protocol; killing it');
      this.kill(`broke the frame protocol (${(err as Error).message})`);
    }
  }

  private logStderr(line: string): void {
    this.stderrTail.push(line);
    if (this.stderrTail.length > STDERR_TAIL) this.stderrTail.shift();
    this.logger.info({ shim: this.child.pid }, line);
  }

  private end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    const last = this.stderrTail.at(-1);
    const explained = last ? `${reason}; its last log line: ${last}` : reason;
    this.pending.rejectAll(new BackendUnavailableError(`the CNG shim ${explained}`));
    this.settleExited(explained);
  }
}
