import { createServer, type Server } from 'node:http';
import { listen } from '../transport/listen';
import type { AddressInfo } from 'node:net';
import type { Metrics } from './metrics';

export interface ReadinessCheck {
  readonly name: string;
  /** undefined when healthy, else what is wrong. */
  readonly problem: () => string | undefined;
}

/**
 * Plain HTTP for SREs, on its own port: /metrics (Prometheus), /healthz (the process and
 * its event loop answer), /readyz (503 with the failing checks as JSON).
 */
export class MetricsServer {
  private readonly server: Server;

  constructor(
    private readonly metrics: Metrics,
    private readonly checks: () => readonly ReadinessCheck[],
  ) {
    this.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
      } else if (path === '/metrics') {
        this.metrics.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
      } else if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
      } else if (path === '/readyz') {
        const failed = this.checks().flatMap((check) => {
          const problem = check.problem();
          return problem === undefined ? [] : [{ check: check.name, problem }];
        });
        res
          .writeHead(failed.length === 0 ? 200 : 503, { 'content-type': 'application/json' })
          .end(JSON.stringify(failed.length === 0 ? { ready: true } : { ready: false, failed }) + '\n');
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
      }
    });
  }

  async start(host: string, port: number): Promise<AddressInfo> {
    const address = await listen(this.server, port, host);
    return address;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
