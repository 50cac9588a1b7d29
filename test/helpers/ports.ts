import { createServer } from 'node:net';

// A port asked of the kernel with listen(0) comes from the ephemeral range (32768-60999 on
// Linux), the same range every outgoing connection takes its local port from. Between closing
// that probe and the daemon's own listen(), a connection made by the other jest worker could
// take the port: measured once in ten suite runs under load, as EADDRINUSE in a spawned
// keylessd. Ports for separate processes therefore come from below the ephemeral range, in a
// block of its own for each jest worker, and each is probed before it is handed out.
const FIRST_PORT = 20_000;
const BLOCK = 3_000;
const BLOCKS = 4;
const handedOut = new Set<number>();

function workerBlockStart(): number {
  const worker = Number(process.env.JEST_WORKER_ID ?? '1');
  return FIRST_PORT + ((worker - 1) % BLOCKS) * BLOCK;
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** A port free on 127.0.0.1 right now, for a daemon started as a separate process. */
export async function freePort(): Promise<number> {
  const start = workerBlockStart();
  // A random start keeps two suites run side by side (two checkouts) mostly apart too.
  let offset = Math.floor(Math.random() * BLOCK);
  for (let tried = 0; tried < BLOCK; tried++, offset = (offset + 1) % BLOCK) {
    const port = start + offset;
    if (handedOut.has(port)) continue;
    if (await bindable(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port in ${start}-${start + BLOCK - 1} on 127.0.0.1`);
}
