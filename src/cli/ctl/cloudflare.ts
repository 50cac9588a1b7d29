import { CompatClient } from '../../client/compat';
import type { BenchProtocol } from '../../bench/load';
import { Tag, decodeFrame, encodeFrame, PADDED_LENGTH } from '../../protocols/compat/codec';
import { Opcode } from '../../protocols/compat/request';
import { isIP } from 'node:net';
import { UsageError, sessionOptions, type ConnectionFlags } from './connection';
import { WrongProtocolError } from './exit';

/** The compat port from --server (host:port; default 127.0.0.1:2407) with the usual credentials. */
export async function connectCloudflare(flags: ConnectionFlags): Promise<CompatClient> {
  const server = flags.server ?? process.env.KEYLESS_SERVER ?? '127.0.0.1:2407';
  const match = /^(?:[a-z]+:\/\/)?([^:/]+|\[[^\]]+\]):(\d+)\/?$/.exec(server);
  if (!match) throw new UsageError(`--server must be host:port for --protocol cloudflare, got ${server}`);
  const options = sessionOptions({ ...flags, server: `${match[1]}:${match[2]}` });
  const host = match[1]!.replace(/^\[|\]$/g, '');
  const client = await CompatClient.connect({
    host,
    port: Number(match[2]),
    // The name given (--servername), else the host: an IP address is checked against the
    // certificate's IP SANs and sent without SNI (RFC 6066 forbids IPs there), as keyless.v1 does.
    servername: flags.servername ?? (isIP(host) ? '' : host),
    ca: options.ca,
    cert: options.cert,
    key: options.key,
  });
  guardAgainstHttp(client, `${match[1]}:${match[2]}`);
  return client;
}

/**
 * A keyless.v1 port answers Cloudflare frames with an HTTP error at once; without this the
 * client would wait for a frame until its request timeout. Requests then fail with a hint.
 */
function guardAgainstHttp(client: CompatClient, target: string): void {
  let wrong: ((err: Error) => void) | undefined;
  const verdict = new Promise<never>((_resolve, reject) => (wrong = reject));
  verdict.catch(() => {});
  client.socket.prependListener('data', (chunk: Buffer) => {
    if (chunk.subarray(0, 5).toString('latin1') !== 'HTTP/') return;
    wrong!(new WrongProtocolError(`${target} speaks keyless.v1 (HTTPS/WebSocket), not the Cloudflare Keyless protocol: drop --protocol cloudflare, or connect to the compatibility port (2407 by default)`));
  });
  const request = client.request.bind(client);
  client.request = (...args: Parameters<CompatClient['request']>) => Promise.race([request(...args), verdict]);
}

/** The compat protocol needs an SKI: it has no key names. */
export function skiFromFlag(key: string): Buffer {
  const hex = key.replace(/:/g, '');
  if (!/^[0-9a-fA-F]{40}$/.test(hex)) throw new UsageError('--protocol cloudflare finds keys by SKI: give --key as 40 hex digits (keylessctl keys lists them)');
  return Buffer.from(hex, 'hex');
}

/** Cloudflare-protocol frames for the load generator: the id sits at bytes 4-7 of the header. */
export function cloudflareBenchProtocol(opcode: number, payload: Buffer, ski?: Buffer): BenchProtocol {
  const template = encodeFrame(0, [[Tag.opcode, Buffer.from([opcode])], [Tag.payload, payload], ...(ski ? ([[Tag.ski, ski]] as Array<[number, Buffer]>) : [])], PADDED_LENGTH);
  return {
    frame(id) {
      const frame = Buffer.from(template);
      frame.writeUInt32BE(id >>> 0, 4);
      return frame;
    },
    answer(data) {
      const frame = decodeFrame(data);
      const opcode = frame.items.get(Tag.opcode)?.[0];
      const payload = frame.items.get(Tag.payload);
      return { id: frame.id, outcome: opcode === Opcode.error ? `error 0x${(payload?.[0] ?? 0).toString(16).padStart(2, '0')}` : 'ok' };
    },
  };
}

