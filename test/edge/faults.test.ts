/**
 * Faults at the edge, with real nginx: keylessd down, agent restarted or frozen, a replica
 * killed under load, a key removed by reload, garbage on the agent's socket. nginx is never
 * restarted; its master pid is checked to prove it.
 */
import { unlinkSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { generateKey, startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { agentRequest, ensureModule, handshake, keyUri, MODULE, moduleEnv, openDir, run, selfSignedCertificates, startAgent, startNginx, type Agent, type Nginx } from './harness';
import { keepBusy } from '../helpers/load';
import { until } from '../helpers/until';

const TIMEOUT_MS = 1500; // the module's KEYLESSD_PKCS11_TIMEOUT_MS here

const ecKey = generateKey({ name: 'edge-p256', type: 'ec', curve: 'P-256' });
const rsaKey = generateKey({ name: 'edge-rsa', type: 'rsa', bits: 2048 });
const extraKey = generateKey({ name: 'edge-extra', type: 'ec', curve: 'P-256' });

let pki: TestPki;
let keyDir: string;
let ports: [number, number];
let replicas: [RunningDaemon | undefined, RunningDaemon | undefined];
let agent: Agent;
let nginx: Nginx;
let env: NodeJS.ProcessEnv;
let work: string;
let caFile: string;
let nginxPort: number;

const serve = (i: 0 | 1) => startDaemon({ backends: [{ type: 'file', dir: keyDir }], listen: { port: ports[i] } }, pki);
const ecdsa = ['-tls1_3', '-sigalgs', 'ecdsa_secp256r1_sha256'];
const rsaPss = ['-tls1_3', '-sigalgs', 'rsa_pss_rsae_sha256'];
const masterPid = () => Number(readFileSync(join(nginx.prefix, 'nginx.pid'), 'utf8').trim());
const urls = () => ports.map((p) => `wss://127.0.0.1:${p}/v1`);

beforeAll(async () => {
  ensureModule();
  pki = await makeTestPki({ commonName: 'edge agent faults' });
  keyDir = writeKeyDir([
    { name: 'edge-p256', key: ecKey },
    { name: 'edge-rsa', key: rsaKey },
    { name: 'edge-extra', key: extraKey },
  ]);
  ports = [await freePort(), await freePort()];
  replicas = [await serve(0), await serve(1)];
  work = openDir('keylessd-edge-faults-');
  agent = await startAgent(pki, urls(), { socketDir: work, metricsPort: await freePort() });
  env = moduleEnv(agent.socket, work, TIMEOUT_MS);
  const issued = selfSignedCertificates(keyDir, work, ['edge-p256', 'edge-rsa']);
  const [ecCert, rsaCert] = issued.certs as [string, string];
  caFile = issued.caFile;
  nginxPort = await freePort();
  nginx = await startNginx(env, [
    {
      port: nginxPort,
      certs: [
        { cert: ecCert, key: `engine:pkcs11:${keyUri('edge-p256')}` },
        { cert: rsaCert, key: `engine:pkcs11:${keyUri('edge-rsa')}` },
      ],
    },
  ]);
}, 60_000);

afterAll(async () => {
  await nginx?.stop();
  await agent?.stop();
  await Promise.all(replicas.map((r) => r?.stop()));
});

async function stopReplica(i: 0 | 1): Promise<void> {
  await replicas[i]!.stop();
  replicas[i] = undefined;
}

test('keylessd down: handshakes fail fast and nginx keeps running; back up: they succeed again without an nginx restart', async () => {
  const pid = masterPid();
  await stopReplica(0);
  await stopReplica(1);
  const failed = await handshake(nginxPort, caFile, ecdsa);
  expect(failed.ok).toBe(false);
  // The agent answers BACKEND_UNAVAILABLE at once; the handshake ends by itself instead of
  // waiting for s_client's 15 s kill (no wall-clock bound: a loaded machine stretches both).
  expect(failed.hung).toBe(false);
  expect(nginx.process.exitCode).toBeNull();
  await until(async () => (await fetch(`http://127.0.0.1:${agent.metricsPort}/healthz`)).status === 503, 15_000, 'the agent to report itself unhealthy');
  replicas = [await serve(0), await serve(1)];
  await until(async () => (await handshake(nginxPort, caFile, ecdsa)).ok, 20_000, 'handshakes to succeed again once keylessd is back');
  expect((await handshake(nginxPort, caFile, rsaPss)).ok).toBe(true);
  expect(masterPid()).toBe(pid);
});

test('agent restarted: handshakes fail while it is gone and succeed again after, nginx untouched', async () => {
  const pid = masterPid();
  await agent.stop();
  const failed = await handshake(nginxPort, caFile, ecdsa);
  expect(failed.ok).toBe(false);
  expect(failed.hung).toBe(false);
  agent = await startAgent(pki, urls(), { socketDir: work });
  await until(async () => (await handshake(nginxPort, caFile, ecdsa)).ok, 15_000, 'handshakes through the new agent');
  expect((await handshake(nginxPort, caFile, rsaPss)).ok).toBe(true);
  expect(masterPid()).toBe(pid);
});

test('an agent that accepts but never answers: the handshake fails within the timeout instead of hanging', async () => {
  process.kill(agent.process.pid!, 'SIGSTOP');
  try {
    const failed = await handshake(nginxPort, caFile, ecdsa);
    expect(failed.ok).toBe(false);
    // It waited for the module's timeout (C_Sign → CKR_DEVICE_ERROR), then nginx closed the
    // handshake: it did not hang until s_client's 15 s kill. test/edge/module.test.ts checks
    // C_Sign's own outcome and timing in-process.
    expect(failed.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 100);
    expect(failed.hung).toBe(false);
  } finally {
    process.kill(agent.process.pid!, 'SIGCONT');
  }
  await until(async () => (await handshake(nginxPort, caFile, ecdsa)).ok, 15_000, 'handshakes once the agent runs again');
});

test('one of two replicas killed under load: no failed handshake after the failover window', async () => {
  await until(async () => {
    const response = await agentRequest(agent.socket, { id: 7, ping: { payload: Buffer.from('x') } });
    return response.result === 'pong';
  }, 15_000, 'the agent to hold sessions to both replicas');
  let killedAt = 0;
  const failures: number[] = [];
  let ok = 0;
  const load = keepBusy(4, async (loop) => {
    const started = Date.now();
    const result = await handshake(nginxPort, caFile, loop % 2 ? ecdsa : rsaPss);
    if (result.ok) ok++;
    else failures.push(started);
  });
  await until(() => ok >= 20, 30_000, 'some handshakes before the kill');
  killedAt = Date.now();
  await stopReplica(0);
  const okAtKill = ok;
  await until(() => ok >= okAtKill + 40, 30_000, 'handshakes after the kill');
  await load.stop();
  // The pool retries a lost request on the other replica; a handshake that started more than one
  // timeout after the kill must not fail.
  expect(failures.filter((started) => started > killedAt + TIMEOUT_MS)).toEqual([]);
  replicas[0] = await serve(0);
});

test('a key removed from keylessd and reloaded: its object disappears, the others keep working', async () => {
  const toolEnv = { ...env, OPENSSL_CONF: '/dev/null' };
  const listed = async () => (await run('pkcs11-tool', ['--module', MODULE, '--list-objects'], { env: toolEnv })).stdout;
  expect(await listed()).toContain('label:      edge-extra');
  unlinkSync(join(keyDir, 'edge-extra.pem'));
  for (const r of replicas) expect(await r!.reload({ backends: [{ type: 'file', dir: keyDir }] })).toBe(true);
  await until(async () => {
    const text = await listed();
    return !text.includes('edge-extra') && text.includes('label:      edge-p256') && text;
  }, 15_000, 'edge-extra to disappear from the token');
  expect((await handshake(nginxPort, caFile, ecdsa)).ok).toBe(true);
  expect((await handshake(nginxPort, caFile, rsaPss)).ok).toBe(true);
});

test('nginx -s reload loads the keys again through the module; handshakes go on', async () => {
  const pid = masterPid();
  process.kill(pid, 'SIGHUP');
  await until(() => /reconfiguring/.test(nginx.errorLog()), 15_000, 'nginx to report the reconfiguration');
  await until(async () => (await handshake(nginxPort, caFile, ecdsa)).ok, 15_000, 'handshakes after the reload');
  expect((await handshake(nginxPort, caFile, rsaPss)).ok).toBe(true);
  expect(nginx.errorLog()).not.toMatch(/\[emerg\]/);
  expect(masterPid()).toBe(pid);
});

test('garbage on the agent socket: that connection is closed, the agent keeps serving', async () => {
  const closed = await new Promise<boolean>((resolve) => {
    const socket = connect(agent.socket);
    socket.on('connect', () => socket.write(Buffer.concat([Buffer.from([0, 0, 0, 12]), Buffer.from('not protobuf')])));
    socket.on('data', () => resolve(false));
    socket.on('close', () => resolve(true));
    socket.on('error', () => undefined);
  });
  expect(closed).toBe(true);
  const huge = await new Promise<boolean>((resolve) => {
    const socket = connect(agent.socket);
    socket.on('connect', () => socket.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])));
    socket.on('close', () => resolve(true));
    socket.on('error', () => undefined);
  });
  expect(huge).toBe(true);
  expect((await agentRequest(agent.socket, { id: 9, ping: { payload: Buffer.from('still here') } })).pong?.payload).toEqual(Buffer.from('still here'));
  expect((await handshake(nginxPort, caFile, ecdsa)).ok).toBe(true);
  expect(agent.log()).toContain('closing a module connection that sent garbage');
});
