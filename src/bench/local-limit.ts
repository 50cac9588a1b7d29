import { generateKeyPairSync } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { KeyType } from '../core/crypto/algorithms';

export interface LimitKey {
  readonly type: KeyType;
  readonly bits: number;
  readonly curve: string;
}

const WORKER = `
  const { parentPort, workerData } = require('node:worker_threads');
  const { sign, createPrivateKey } = require('node:crypto');
  const key = createPrivateKey({ key: workerData.pem, format: 'pem' });
  const algorithm = workerData.type === 'ed25519' ? null : 'sha256';
  const data = Buffer.alloc(32, 1);
  const end = Date.now() + workerData.ms;
  let n = 0;
  while (Date.now() < end) { for (let i = 0; i < 20; i++) sign(algorithm, data, key); n += 20; }
  parentPort.postMessage(n);`;

/**
 * What this machine signs per second in-process with OpenSSL on all cores, for the same
 * key type: the ceiling a key server on it can approach. crypto.sign hashes its 32-byte
 * input first, which costs next to nothing beside the signature.
 */
export async function measureLocalLimit(key: LimitKey, seconds: number, threads = availableParallelism()): Promise<number> {
  const pem = generate(key).export({ format: 'pem', type: 'pkcs8' }) as string;
  const counts = await Promise.all(
    Array.from(
      { length: threads },
      () =>
        new Promise<number>((resolve, reject) => {
          const worker = new Worker(WORKER, { eval: true, workerData: { pem, type: key.type, ms: seconds * 1000 } });
          worker.once('message', resolve);
          worker.once('error', reject);
        }),
    ),
  );
  return counts.reduce((a, b) => a + b, 0) / seconds;
}

function generate(key: LimitKey) {
  if (key.type === 'rsa') return generateKeyPairSync('rsa', { modulusLength: key.bits }).privateKey;
  if (key.type === 'ec') return generateKeyPairSync('ec', { namedCurve: key.curve }).privateKey;
  return generateKeyPairSync('ed25519').privateKey;
}
