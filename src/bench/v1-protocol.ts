import type { keyless } from '../gen/keyless';
import { decodeResponse, encodeRequest, errorCodeName } from '../protocols/v1/codec';
import type { BenchProtocol } from './load';

/**
 * keyless.v1 frames for the load generator. The id is field 1, written first as a
 * fixed five-byte varint (non-minimal varints are valid protobuf), so each request is a
 * copy of one template with four id bytes patched.
 */
export function v1Protocol(body: Omit<keyless.v1.Request.$Properties, 'id'>): BenchProtocol {
  const tail = Buffer.from(encodeRequest(body));
  return {
    frame(id) {
      const frame = Buffer.allocUnsafe(6 + tail.length);
      frame[0] = 0x08;
      frame[1] = (id & 0x7f) | 0x80;
      frame[2] = ((id >>> 7) & 0x7f) | 0x80;
      frame[3] = ((id >>> 14) & 0x7f) | 0x80;
      frame[4] = ((id >>> 21) & 0x7f) | 0x80;
      frame[5] = (id >>> 28) & 0x7f;
      tail.copy(frame, 6);
      return frame;
    },
    answer(data) {
      const response = decodeResponse(data);
      return { id: Number(response.id), outcome: response.result === 'error' ? errorCodeName(response.error?.code) : 'ok' };
    },
  };
}
