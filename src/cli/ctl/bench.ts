import { WebSocket } from 'ws';
import { parseArgs } from 'node:util';
import { SCHEME_OF, SIGNATURE_ALGORITHMS, isSignatureAlgorithm } from '../../core/crypto/algorithms';
import { HASH_LENGTH } from '../../core/crypto/hashes';
import { SUBPROTOCOL } from '../../protocols/v1/codec';
import { measureLocalLimit } from '../../bench/local-limit';
import { runLoad, webSocketConnection, type BenchConnection, type LoadResult } from '../../bench/load';
import { FrameReader } from '../../protocols/compat/codec';
import { Opcode, SIGN_OPCODE } from '../../protocols/compat/request';
import { cloudflareBenchProtocol, connectCloudflare, skiFromFlag } from './cloudflare';
import { v1Protocol } from '../../bench/v1-protocol';
import { signatureAlgorithmNumber } from '../../protocols/v1/codec';
import type { Command } from './commands';
import { ConnectionError } from '../../client/errors';
import { CheckFailedError } from './exit';
import { CONNECTION_HELP, CONNECTION_OPTIONS, UsageError, explainV1ConnectError, sessionOptions, openSession } from './connection';
import { parseKeyRef } from './keyref';
import { keyRefToMessage } from '../../protocols/v1/codec';

function positiveNumber(text: string | undefined, flag: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} must be a positive number, got ${text}`);
  return n;
}

function report(result: LoadResult, limit: number | undefined, json: boolean, label: string): string {
  if (json) return `${JSON.stringify({ label, ...result, localLimitPerSecond: limit, ratio: limit ? result.opsPerSecond / limit : undefined })}\n`;
  const ms = (us: number) => (us / 1000).toFixed(3);
  const lines = [
    `${label}: ${result.opsPerSecond.toFixed(0)} ops/s (${result.operations} in ${result.seconds.toFixed(1)} s)`,
    `latency ms: p50 ${ms(result.latencyUs.p50)}  p90 ${ms(result.latencyUs.p90)}  p99 ${ms(result.latencyUs.p99)}  p99.9 ${ms(result.latencyUs.p999)}`,
    `load generator CPU: ${result.generatorCpuUsPerOp.toFixed(1)} µs per request`,
    `errors: ${Object.keys(result.errors).length === 0 ? 'none' : Object.entries(result.errors).map(([code, n]) => `${code} ${n}`).join(', ')}`,
  ];
  const lost = Object.entries(result.connectionErrors);
  if (lost.length > 0) lines.push(`connection errors: ${lost.map(([reason, n]) => `${n} x ${reason}`).join(', ')}`);
  if (limit) lines.push(`local limit (same signature in-process on all cores): ${limit.toFixed(0)}/s; ratio ${(result.opsPerSecond / limit).toFixed(3)}`);
  return `${lines.join('\n')}\n`;
}

export const bench: Command = {
  summary: 'load generator: ops/s and latency percentiles, with the local limit for comparison',
  help: `Usage: keylessctl bench --key KEY --algorithm ALG [options]
       keylessctl bench --operation ping [options]

  --operation sign|ping    what to send (default sign)
  --key KEY                key name, SKI or SPKI SHA-256 (sign)
  --algorithm ALG          signature algorithm (sign); a digest of its hash length is sent (a message for ED25519)
  --sessions N             sessions (default 8)
  --inflight N             requests outstanding per session (default 16)
  --duration S             seconds measured (default 10)
  --warmup S               seconds run before measuring (default 2)
  --protocol P             keyless.v1 (default) or cloudflare (--server host:port, --key as SKI hex)
  --no-limit               skip measuring the local limit
  --json                   one JSON object instead of text

On a terminal, progress (ops/s so far) is shown on standard error. Exit status 3 when
sessions were lost during the run (the server went away: the report says how many and
why), 1 when requests were answered with an error, else 0.

The local limit is the same signature made in-process with OpenSSL on every core of
this machine for --duration seconds, measured after the load run; the ratio compares the
server's throughput with it.

${CONNECTION_HELP}`,
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        ...CONNECTION_OPTIONS,
        operation: { type: 'string', default: 'sign' },
        key: { type: 'string' },
        algorithm: { type: 'string' },
        sessions: { type: 'string', default: '8' },
        inflight: { type: 'string', default: '16' },
        duration: { type: 'string', default: '10' },
        warmup: { type: 'string', default: '2' },
        'no-limit': { type: 'boolean' },
        protocol: { type: 'string', default: 'keyless.v1' },
        json: { type: 'boolean' },
      },
      strict: true,
    });
    const sessions = positiveNumber(values.sessions, '--sessions');
    const inflight = positiveNumber(values.inflight, '--inflight');
    const seconds = positiveNumber(values.duration, '--duration');
    const warmupSeconds = Number(values.warmup);
    const cloudflare = values.protocol === 'cloudflare';
    if (!cloudflare && values.protocol !== 'keyless.v1') throw new UsageError(`--protocol must be keyless.v1 or cloudflare, got ${values.protocol}`);
    const connect = cloudflare
      ? async (): Promise<BenchConnection> => {
          const client = await connectCloudflare(values);
          const reader = new FrameReader();
          client.socket.removeAllListeners('data');
          let closing = false;
          let error: string | undefined;
          return {
            send: (frame) => void client.socket.write(frame),
            onMessage: (handler) =>
              client.socket.on('data', (chunk: Buffer) => {
                // A keyless.v1 port answers Cloudflare frames with an HTTP error: name the protocol.
                if (reader.pending === 0 && chunk.subarray(0, 5).toString('latin1') === 'HTTP/') {
                  error = 'the server speaks keyless.v1 (HTTPS/WebSocket), not the Cloudflare protocol: drop --protocol cloudflare';
                  client.socket.destroy();
                  return;
                }
                reader.push(chunk).forEach(handler);
              }),
            onLost: (handler) => {
              client.socket.on('error', (err: NodeJS.ErrnoException) => (error ??= err.code ?? err.message));
              client.socket.on('close', () => closing || handler(error?.startsWith('the server') ? error : error ? `connection lost: ${error}` : 'connection closed by the server'));
            },
            close: () => {
              closing = true;
              client.socket.destroy();
            },
          };
        }
      : () => {
          const options = sessionOptions(values);
          return new Promise<BenchConnection>((resolve, reject) => {
            const ws = new WebSocket(options.url, SUBPROTOCOL, { ca: options.ca, cert: options.cert, key: options.key, perMessageDeflate: false, maxPayload: 1 << 24 });
            ws.once('open', () => resolve(webSocketConnection(ws)));
            ws.once('error', (err) => reject(explainV1ConnectError(err, options.url)));
          });
        };

    let protocol;
    let limitKey;
    let label;
    if (values.operation === 'ping') {
      protocol = cloudflare ? cloudflareBenchProtocol(Opcode.ping, Buffer.alloc(32)) : v1Protocol({ ping: { payload: Buffer.alloc(32) } });
      label = `ping, ${sessions} sessions x ${inflight} in flight`;
    } else if (values.operation === 'sign') {
      if (!values.key) throw new UsageError('--key is required for sign');
      const algorithm = (values.algorithm ?? '').toUpperCase();
      if (!isSignatureAlgorithm(algorithm)) throw new UsageError(`--algorithm must be one of ${SIGNATURE_ALGORITHMS.join(', ')}`);
      const ref = parseKeyRef(values.key);
      const scheme = SCHEME_OF[algorithm];
      const input = scheme.kind === 'ed25519' ? { message: Buffer.alloc(32, 7) } : { digest: Buffer.alloc(HASH_LENGTH[scheme.hash], 7) };
      if (cloudflare) {
        const ski = skiFromFlag(values.key);
        protocol = cloudflareBenchProtocol(SIGN_OPCODE[algorithm], 'digest' in input ? input.digest! : input.message!, ski);
        label = `${algorithm} over the Cloudflare protocol with SKI ${ski.toString('hex')}, ${sessions} sessions x ${inflight} in flight`;
      } else {
        const probe = await openSession(values);
        const info = await probe.getKey(ref).finally(() => probe.close());
        protocol = v1Protocol({ sign: { key: keyRefToMessage(ref), algorithm: signatureAlgorithmNumber(algorithm), ...input } });
        limitKey = { type: info.type as 'rsa' | 'ec' | 'ed25519', bits: info.bits ?? 0, curve: info.curve ?? '' };
        label = `${algorithm} with ${info.name} (${info.backend}), ${sessions} sessions x ${inflight} in flight`;
      }
    } else {
      throw new UsageError(`--operation must be sign or ping, got ${values.operation}`);
    }

    const tty = process.stderr.isTTY && !values.json;
    const result = await runLoad({
      sessions,
      inflight,
      seconds,
      warmupSeconds,
      connect,
      protocol,
      progress: tty ? (n, t) => process.stderr.write(`\r${(n / t).toFixed(0)} ops/s, ${n} answered, ${t.toFixed(0)} of ${seconds} s   `) : undefined,
    });
    if (tty) process.stderr.write('\r\x1b[K');
    const failed = Object.keys(result.connectionErrors).length > 0;
    const limit = limitKey && !values['no-limit'] && !failed ? await measureLocalLimit(limitKey, seconds) : undefined;
    process.stdout.write(report(result, limit, values.json ?? false, label));
    if (failed) {
      const sessionsLost = Object.values(result.connectionErrors).reduce((a, b) => a + b, 0);
      throw new ConnectionError(`${sessionsLost} of ${sessions} sessions were lost during the run; the figures above cover only what was answered`);
    }
    const refused = Object.values(result.errors).reduce((a, b) => a + b, 0);
    if (refused > 0) throw new CheckFailedError(`${refused} of ${result.operations} requests were answered with an error`);
  },
};
