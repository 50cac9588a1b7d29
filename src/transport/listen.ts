import type { AddressInfo, Server } from 'node:net';

/** Starts `server` listening; rejects with the listen error (EADDRINUSE…) instead of emitting it. */
export async function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server.address() as AddressInfo;
}

/**
 * Stops `server` accepting connections; resolves once the open ones have ended too (close()
 * waits for them), then stops the listener's rate-limited log summaries.
 */
export function stopListening(server: Server, logs: { stop(): void }): Promise<void> {
  return new Promise((resolve) =>
    server.close(() => {
      logs.stop();
      resolve();
    }),
  );
}
