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
