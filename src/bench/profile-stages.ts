/**
 * Reads a V8 .cpuprofile (`node --cpu-prof`) of keylessd and splits its samples into the
 * stages of a request, for docs/benchmarks.md. Each sample goes to the innermost frame on
 * its stack that belongs to a stage (walking from the leaf towards the root), so time in
 * Node's crypto or buffer helpers counts for whoever called them (audit hashing is audit,
 * not "crypto"). Native frames (no script URL) take the stage of their caller.
 *
 *   node dist/src/bench/profile-stages.js PROFILE.cpuprofile REQUESTS
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string };
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
  readonly startTime: number;
  readonly endTime: number;
}

/** Stage names in the order they are printed. */
export const STAGES = [
  'TLS read/write (tls, net, streams, syscalls)',
  'WebSocket framing (ws)',
  'protobuf decode/encode',
  'session (v1 / compat listener code)',
  'dispatch + policy',
  'fair scheduler',
  'backend hop (file key, native addon completion)',
  'audit (record, chain hash, write)',
  'metrics (prom-client observations)',
  'promise/microtask machinery and timers',
  'garbage collector',
  'other JS',
  'program (V8/libuv native, unattributed)',
] as const;
export type Stage = (typeof STAGES)[number];

/** The stage a frame belongs to, or undefined to keep walking towards the root. */
export function stageOf(functionName: string, url: string): Stage | undefined {
  if (functionName === '(garbage collector)') return 'garbage collector';
  if (functionName === '(program)') return 'program (V8/libuv native, unattributed)';
  if (url === '') return undefined; // native helper: its caller says why it ran
  if (/\/(audit)\//.test(url)) return 'audit (record, chain hash, write)';
  if (/prom-client|\/metrics\//.test(url)) return 'metrics (prom-client observations)';
  if (/fair-scheduler/.test(url)) return 'fair scheduler';
  if (/\/backends\/|keyless_openssl/.test(url)) return 'backend hop (file key, native addon completion)';
  if (/dispatcher|\/policy\/|\/keys\/registry|timeout\.js/.test(url)) return 'dispatch + policy';
  if (/protobufjs|\/gen\/keyless|\/protocol(s\/v1)?\/(v1|codec|operation)|long\/|compat\/(codec|request)/.test(url)) return 'protobuf decode/encode';
  if (/node_modules\/ws\//.test(url)) return 'WebSocket framing (ws)';
  if (/v1-session|v1-listener|protocols\/v1\/(session|listener)|compat\/listener/.test(url)) return 'session (v1 / compat listener code)';
  if (/node:(_tls|tls|net|stream|internal\/(tls|net|stream|js_stream)|internal\/streams)/.test(url)) return 'TLS read/write (tls, net, streams, syscalls)';
  if (/node:internal\/(process\/task_queues|timers|process\/promises|async_hooks)|node:timers/.test(url)) return 'promise/microtask machinery and timers';
  if (url.startsWith('node:')) return undefined; // buffers, events, crypto helpers: the caller's stage
  return 'other JS';
}

export interface StageReport {
  readonly busyMs: number;
  readonly idleMs: number;
  /** Module loading and start-up: not per request, left out of busyMs. */
  readonly startupMs: number;
  readonly ms: ReadonlyMap<Stage, number>;
}

export function splitProfile(profile: CpuProfile): StageReport {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const stageOfNode = new Map<number, Stage | 'idle' | 'startup'>();
  const resolve = (id: number): Stage | 'idle' | 'startup' => {
    const known = stageOfNode.get(id);
    if (known) return known;
    let stage: Stage | 'idle' | 'startup' | undefined;
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const { functionName, url } = byId.get(at)!.callFrame;
      if (url.startsWith('node:internal/modules/') || url === 'node:internal/main/run_main_module') {
        stage = 'startup'; // loading code, wherever it happens: not the request path
        break;
      }
      if (functionName === '(idle)') {
        stage = 'idle';
        break;
      }
      stage ??= stageOf(functionName, url);
    }
    stageOfNode.set(id, stage ?? 'other JS');
    return stage ?? 'other JS';
  };
  const ms = new Map<Stage, number>();
  let idleMs = 0;
  let busyMs = 0;
  let startupMs = 0;
  profile.samples.forEach((id, i) => {
    const dt = (profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0) / 1000;
    const stage = resolve(id);
    if (stage === 'idle') idleMs += dt;
    else if (stage === 'startup') startupMs += dt;
    else {
      busyMs += dt;
      ms.set(stage, (ms.get(stage) ?? 0) + dt);
    }
  });
  return { busyMs, idleMs, startupMs, ms };
}

/** A Markdown table: stage, ms of main-thread samples, µs per request, share. */
export function stageTable(report: StageReport, requests: number): string {
  const rows = ['| stage | main thread ms | µs / request | share |', '|---|---|---|---|'];
  for (const stage of STAGES) {
    const ms = report.ms.get(stage) ?? 0;
    rows.push(`| ${stage} | ${ms.toFixed(0)} | ${((ms * 1000) / requests).toFixed(1)} | ${((100 * ms) / report.busyMs).toFixed(1)}% |`);
  }
  rows.push(`| **main thread busy** | ${report.busyMs.toFixed(0)} | **${((report.busyMs * 1000) / requests).toFixed(1)}** | 100% |`);
  rows.push(`| (idle) | ${report.idleMs.toFixed(0)} | | |`);
  rows.push(`| (start-up: module loading, not counted) | ${report.startupMs.toFixed(0)} | | |`);
  return rows.join('\n');
}

if (require.main === module) {
  const [file, requests] = process.argv.slice(2);
  if (!file || !Number(requests)) {
    process.stderr.write('usage: profile-stages PROFILE.cpuprofile REQUESTS\n');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  process.stdout.write(`${stageTable(splitProfile(profile), Number(requests))}\n`);
}
