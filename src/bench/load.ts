import { WebSocket } from 'ws';
import { LatencyHistogram } from './histogram';

/** How to speak one protocol to the load generator: frames with a patched id, and answers. */
export interface BenchProtocol {
  /** The request frame for `id`; called once per request, so it should only patch the id into a template. */
  frame(id: number): Buffer;
  /** The id and outcome (`ok` or an error code) of a response frame. */
  answer(data: Buffer): { id: number; outcome: string };
}

export interface BenchConnection {
  send(frame: Buffer): void;
  onMessage(handler: (data: Buffer) => void): void;
  /** Called once if the connection ends before close() (the server went away); `reason` is one line. */
  onLost?(handler: (reason: string) => void): void;
  close(): void;
}

export interface LoadOptions {
  readonly sessions: number;
  readonly inflight: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly connect: () => Promise<BenchConnection>;
  readonly protocol: BenchProtocol;
  /** Called about once a second while measuring, with operations so far and elapsed seconds. */
  readonly progress?: (operations: number, elapsed: number) => void;
}

export interface LoadResult {
  readonly operations: number;
  readonly seconds: number;
  readonly opsPerSecond: number;
  readonly latencyUs: { p50: number; p90: number; p99: number; p999: number };
  readonly errors: Record<string, number>;
  /** This process's CPU time (user + system, every thread) per answered request while measuring: the load generator's own cost. */
  readonly generatorCpuUsPerOp: number;
  /** Sessions lost during the run, by reason; their requests in flight count as `errors['no answer (session lost)']`. */
  readonly connectionErrors: Record<string, number>;
}

/**
 * Closed loop: every session keeps `inflight` requests outstanding and sends a new one as
 * each answer arrives. After the warm-up, answers are counted and timed for `seconds`.
 */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const connections = await Promise.all(Array.from({ length: options.sessions }, () => options.connect()));
  const histogram = new LatencyHistogram();
  const errors: Record<string, number> = {};
  const connectionErrors: Record<string, number> = {};
  const sentAt = new Map<number, number>();
  let nextId = 1;
  let measuring = false;
  let stopping = false;
  let operations = 0;
  let outstanding = 0;
  let alive = connections.length;
  let allLost: () => void = () => {};
  const everyoneLost = new Promise<void>((resolve) => (allLost = resolve));

  const inflightOn = new Map<BenchConnection, Set<number>>();
  const send = (connection: BenchConnection) => {
    const id = nextId++;
    sentAt.set(id, performance.now());
    inflightOn.get(connection)!.add(id);
    outstanding += 1;
    connection.send(options.protocol.frame(id));
  };
  for (const connection of connections) {
    inflightOn.set(connection, new Set());
    connection.onLost?.((reason) => {
      if (stopping) return;
      connectionErrors[reason] = (connectionErrors[reason] ?? 0) + 1;
      const lost = inflightOn.get(connection)!;
      for (const id of lost) sentAt.delete(id);
      outstanding -= lost.size;
      if (lost.size > 0) errors['no answer (session lost)'] = (errors['no answer (session lost)'] ?? 0) + lost.size;
      lost.clear();
      alive -= 1;
      if (alive === 0) allLost();
    });
    connection.onMessage((data) => {
      const { id, outcome } = options.protocol.answer(data);
      const started = sentAt.get(id);
      if (started === undefined) return;
      sentAt.delete(id);
      inflightOn.get(connection)!.delete(id);
      outstanding -= 1;
      if (measuring) {
        operations += 1;
        histogram.record((performance.now() - started) * 1000);
        if (outcome !== 'ok') errors[outcome] = (errors[outcome] ?? 0) + 1;
      }
      if (!stopping) send(connection);
    });
    for (let i = 0; i < options.inflight; i++) send(connection);
  }
  // With every session lost there is nothing left to measure: stop early.
  await Promise.race([sleep(options.warmupSeconds * 1000), everyoneLost]);
  measuring = true;
  const started = performance.now();
  const cpuAtStart = process.cpuUsage();
  const ticker = options.progress && setInterval(() => options.progress!(operations, (performance.now() - started) / 1000), 1000);
  await Promise.race([sleep(options.seconds * 1000), everyoneLost]);
  measuring = false;
  const elapsed = (performance.now() - started) / 1000;
  const counted = operations;
  const cpu = process.cpuUsage(cpuAtStart);
  stopping = true;
  clearInterval(ticker);
  const drainBy = Date.now() + 5000;
  while (outstanding > 0 && Date.now() < drainBy) await sleep(10);
  for (const connection of connections) connection.close();
  return {
    operations: counted,
    seconds: elapsed,
    opsPerSecond: counted / elapsed,
    latencyUs: { p50: histogram.percentile(0.5), p90: histogram.percentile(0.9), p99: histogram.percentile(0.99), p999: histogram.percentile(0.999) },
    errors,
    generatorCpuUsPerOp: counted > 0 ? (cpu.user + cpu.system) / counted : 0,
    connectionErrors,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** A keyless.v1 WebSocket as a BenchConnection. */
export function webSocketConnection(ws: WebSocket): BenchConnection {
  return {
    send: (frame) => ws.send(frame),
    onMessage: (handler) => ws.on('message', (data: Buffer) => handler(data)),
    onLost: (handler) => {
      let error: string | undefined;
      ws.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
      ws.on('close', (code) => handler(error ? `session lost: ${error}` : `session closed by the server (${code})`));
    },
    close: () => {
      ws.removeAllListeners('close');
      ws.terminate();
    },
  };
}
