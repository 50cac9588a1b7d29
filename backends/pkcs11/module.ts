import { Worker } from 'node:worker_threads';
import * as pkcs11js from 'pkcs11js';
import { BackendUnavailableError, KeylessdError, TimeoutError } from '../../src/errors';
import { withDeadline } from '../lifecycle';
import { PendingRequests } from '../pending';
import { tokenCalls } from './token-calls';

/**
 * A PKCS#11 module is process-global: loaded and initialized once, whatever number of
 * backends use it. CKF_OS_LOCKING_OK is required: without it SoftHSM corrupted its heap
 * with several sessions in flight.
 */
const modules = new Map<string, SharedModule>();

export function loadModule(path: string): pkcs11js.PKCS11 {
  return sharedModule(path).module;
}

export function sharedModule(path: string): SharedModule {
  let shared = modules.get(path);
  if (shared) return shared;
  const module = new pkcs11js.PKCS11();
  module.load(path);
  initialize(module);
  shared = new SharedModule(path, module);
  modules.set(path, shared);
  return shared;
}

/**
 * C_Initialize, where an earlier one (by this or another backend, or by anything else in
 * the process) counts as success. Recovery calls it again in case something finalized the
 * module underneath the daemon.
 */
export function initialize(module: pkcs11js.PKCS11): void {
  try {
    module.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckrCode(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
}

/** A backend on a shared module, as a C_Finalize needs to see it. */
export interface ModuleUser {
  /** Takes the backend out of service (its recovery brings it back). */
  suspend(reason: string): void;
  /** Resolves once no call of this backend runs inside the module. */
  idle(): Promise<void>;
}

/**
 * The calls that block, run on a thread of their own. pkcs11js has asynchronous variants
 * only for the cryptographic calls; C_FindObjects, C_GetAttributeValue, C_GetTokenInfo,
 * C_Initialize and C_Finalize block the calling thread, for seconds on a token with
 * thousands of objects. The worker loads the same library (dlopen hands back the same
 * instance, so sessions and the login are shared) and runs one call at a time.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const pkcs11js = require(workerData.pkcs11js);
const m = new pkcs11js.PKCS11();
m.load(workerData.path);
const ABSENT = new Set([pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11js.CKR_ATTRIBUTE_SENSITIVE]);
/**
 * Many small Buffers cost the receiving thread an ArrayBuffer each (and the garbage
 * collector a backing store each): a list of them travels as one buffer and the lengths,
 * -1 for null, and the receiver takes views of it.
 */
const pack = (list) => {
  const lengths = new Int32Array(list.length);
  let total = 0;
  list.forEach((b, i) => { lengths[i] = b ? b.length : -1; total += b ? b.length : 0; });
  const data = new Uint8Array(total);
  let at = 0;
  for (const b of list) if (b) { data.set(b, at); at += b.length; }
  return { packed: true, data, lengths };
};
const toBuffers = (v) => v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  : Array.isArray(v) ? v.map(toBuffers)
  : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toBuffers(x)])) : v;
const ops = {
  /** Every object matching the template, in batches: no cap on the count. */
  find(session, template, batch) {
    m.C_FindObjectsInit(session, template);
    try {
      const all = [];
      for (;;) {
        const got = m.C_FindObjects(session, batch);
        for (const h of got) all.push(h);
        if (got.length < batch) return pack(all);
      }
    } finally {
      m.C_FindObjectsFinal(session);
    }
  },
  /**
   * attributes[object][type], null where absent or sensitive: the whole template in one
   * C_GetAttributeValue, else (a token refuses the whole template when one attribute is
   * absent or sensitive) one call per attribute.
   */
  attributes(session, objects, types) {
    const one = (object, type) => {
      try {
        const [a] = m.C_GetAttributeValue(session, object, [{ type }]);
        return Buffer.isBuffer(a && a.value) && a.value.length > 0 ? a.value : null;
      } catch (err) {
        if (ABSENT.has(err.code)) return null;
        throw err;
      }
    };
    return pack(objects.flatMap((object) => {
      try {
        return m.C_GetAttributeValue(session, object, types.map((type) => ({ type })))
          .map((a) => (Buffer.isBuffer(a.value) && a.value.length > 0 ? a.value : null));
      } catch (err) {
        if (!ABSENT.has(err.code)) throw err;
        return types.map((type) => one(object, type));
      }
    }));
  },
  /** Every slot with its token and slot info, or the error reading them. */
  slots() {
    return m.C_GetSlotList(true).map((slot) => {
      try {
        return { slot, token: m.C_GetTokenInfo(slot), info: m.C_GetSlotInfo(slot) };
      } catch (err) {
        return { slot, error: { message: err.message, code: err.code } };
      }
    });
  },
  initialize() {
    try { m.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }); } catch (err) { if (err.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err; }
  },
  finalize() {
    try { m.C_Finalize(); } catch (err) { if (err.code !== pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED) throw err; }
  },
};
parentPort.on('message', ({ id, op, args }) => {
  try {
    const result = ops[op](...toBuffers(args));
    parentPort.postMessage({ id, result }, result && result.packed ? [result.data.buffer] : []);
  } catch (err) {
    parentPort.postMessage({ id, error: { message: err.message, code: err.code } });
  }
});
`;

/** A packed list from the worker, as Buffer views of its one ArrayBuffer. */
function unpack({ data, lengths }: { data: Uint8Array; lengths: Int32Array }): Array<Buffer | null> {
  const out: Array<Buffer | null> = new Array(lengths.length);
  let at = 0;
  for (let i = 0; i < lengths.length; i++) {
    const length = lengths[i]!;
    out[i] = length < 0 ? null : Buffer.from(data.buffer, data.byteOffset + at, length);
    at += Math.max(length, 0);
  }
  return out;
}

/** Structured clone turns Buffers into Uint8Arrays: back to Buffers, deeply. */
function toBuffers(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return value.map(toBuffers);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toBuffers(v)]));
  return value;
}

export interface SlotEntry {
  readonly slot: pkcs11js.Handle;
  readonly token?: pkcs11js.TokenInfo;
  readonly info?: pkcs11js.SlotInfo;
  readonly error?: Error & { code?: number };
}

/**
 * A call on the worker thread failed; `rv` is the module's CKR_ value when it returned one
 * (as pkcs11js's own errors carry it in `code`; read either with ckrCode).
 */
export class Pkcs11CallError extends KeylessdError {
  readonly code = 'PKCS11_CALL';

  constructor(
    message: string,
    readonly rv?: number,
  ) {
    super(message);
  }
}

/** How many handles one C_FindObjects call asks for. */
export const FIND_BATCH = 1000;

/**
 * One loaded module and what its backends share: the worker thread for blocking calls, and
 * C_Finalize + C_Initialize, which end every session of every backend on the module and
 * so wait until none of them has a call running.
 */
export class SharedModule {
  private worker?: Worker;
  private readonly pending = new PendingRequests<unknown>();
  private readonly users = new Set<ModuleUser>();
  private reinitializing?: Promise<void>;
  private calls?: ReturnType<typeof tokenCalls>;
  /** Counts C_Finalize + C_Initialize cycles. */
  generation = 0;

  constructor(
    readonly path: string,
    readonly module: pkcs11js.PKCS11,
  ) {}

  /** One private-key operation, its Init call included, on a libuv pool thread (token-calls.ts). */
  operate(operation: 'sign' | 'decrypt', session: pkcs11js.Handle, key: pkcs11js.Handle, mechanism: pkcs11js.Mechanism, input: Buffer, outputLength: number): Promise<Buffer> {
    this.calls ??= tokenCalls(this.path);
    return this.calls(operation, session, key, mechanism, input, outputLength);
  }

  /** Runs a blocking operation on the module's worker thread. */
  call<T>(op: 'find' | 'attributes' | 'slots' | 'initialize' | 'finalize', ...args: unknown[]): Promise<T> {
    const worker = this.startWorker();
    if (this.pending.size === 0) worker.ref();
    return this.pending.add((id) => worker.postMessage({ id, op, args })) as Promise<T>;
  }

  /** Every object matching `template`, however many: the worker pages through them. */
  async find(session: pkcs11js.Handle, template: pkcs11js.Template, batch = FIND_BATCH): Promise<pkcs11js.Handle[]> {
    return unpack(await this.call('find', session, template, batch)) as pkcs11js.Handle[];
  }

  /** values[object][type], null where absent or sensitive; any other error rejects. */
  async attributes(session: pkcs11js.Handle, objects: pkcs11js.Handle[], types: number[]): Promise<Array<Array<Buffer | null>>> {
    if (objects.length === 0) return [];
    const flat = unpack(await this.call('attributes', session, objects, types));
    return objects.map((_, i) => flat.slice(i * types.length, (i + 1) * types.length));
  }

  slots(): Promise<SlotEntry[]> {
    return this.call('slots');
  }

  private startWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path: this.path, pkcs11js: require.resolve('pkcs11js') } });
    worker.unref();
    worker.on('message', ({ id, result, error }: { id: number; result?: unknown; error?: { message: string; code?: number } }) => {
      if (error) this.pending.reject(id, new Pkcs11CallError(error.message, error.code));
      else this.pending.resolve(id, (result as { packed?: boolean } | undefined)?.packed ? result : toBuffers(result));
      if (this.pending.size === 0) worker.unref();
    });
    const lost = (err: Error) => {
      this.worker = undefined;
      this.pending.rejectAll(err);
    };
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new BackendUnavailableError(`the PKCS#11 worker thread exited (${code})`)));
    this.worker = worker;
    return worker;
  }

  register(user: ModuleUser): void {
    this.users.add(user);
  }

  unregister(user: ModuleUser): void {
    this.users.delete(user);
  }

  /** Resolves once no C_Finalize + C_Initialize is under way; connects wait for it. */
  async settled(): Promise<void> {
    while (this.reinitializing) await this.reinitializing.catch(() => {});
  }

  /**
   * C_Finalize + C_Initialize: how a module that reads its tokens at C_Initialize (SoftHSM)
   * sees a token that was removed and put back. Every backend on the module is taken out of
   * service first and the cycle waits until none has a call inside the module (finalizing
   * under a running call is a use-after-free); they reconnect by themselves afterwards.
   * Concurrent requests share one cycle; one that started after `since` (a generation)
   * counts as done.
   */
  reinitialize(reason: string, since: number, maxWaitMs = 60_000): Promise<void> {
    if (this.generation !== since) return Promise.resolve();
    this.reinitializing ??= (async () => {
      try {
        for (const user of this.users) user.suspend(reason);
        await withDeadline(Promise.all([...this.users].map((u) => u.idle())), maxWaitMs, () => new TimeoutError(`calls still running in the module after ${maxWaitMs} ms; not finalizing under them`));
        await this.call('finalize');
        this.generation++;
        await this.call('initialize');
      } finally {
        this.reinitializing = undefined;
      }
    })();
    return this.reinitializing;
  }
}

const CKR_NAMES = new Map<number, string>(
  Object.entries(pkcs11js)
    .filter(([key, value]) => key.startsWith('CKR_') && typeof value === 'number')
    .map(([key, value]) => [value as number, key]),
);

/** The CKR_ name of a PKCS#11 error, for messages (`CKR_PIN_INCORRECT`). */
export function ckrName(err: unknown): string {
  const code = ckrCode(err);
  if (code === undefined) return (err as Error).message ?? String(err);
  return CKR_NAMES.get(code) ?? `CKR 0x${code.toString(16)}`;
}

export function ckrCode(err: unknown): number | undefined {
  if (err instanceof Pkcs11CallError) return err.rv;
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}
