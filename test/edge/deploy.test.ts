/**
 * The edge's packaging, checked by parsing (like test/deploy): the compose edge services,
 * their nginx/OpenSSL files and the agent's systemd unit agree with each other and with the code.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse } from 'yaml';
import { ENGINE, ROOT } from './harness';

const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
type Service = { image?: string; build?: { context: string; dockerfile: string }; entrypoint?: string[]; command?: string[]; environment?: Record<string, string>; volumes?: string[]; depends_on?: unknown; user?: string };
const services = (parse(read('docker-compose.yml')) as { services: Record<string, Service> }).services;
const agentService = services['edge-agent']!;
const edge = services.edge!;
const mounts = (s: Service) => (s.volumes ?? []).map((v) => ({ source: v.split(':')[0]!, target: v.split(':')[1]! }));
const flag = (args: string[], name: string) => args[args.indexOf(name) + 1];

test('the agent and nginx share the socket through one volume, at the path the module is told', () => {
  const socket = flag(agentService.command!, '--socket')!;
  expect(edge.environment!.KEYLESSD_PKCS11_SOCKET).toBe(socket);
  const agentMount = mounts(agentService).find((m) => m.target === dirname(socket));
  const edgeMount = mounts(edge).find((m) => m.target === dirname(socket));
  expect(agentMount?.source).toBe('edge-socket');
  expect(edgeMount?.source).toBe('edge-socket');
  // The image makes that folder for the agent's uid, so the fresh volume is writable by it.
  expect(read('deploy/edge/Dockerfile')).toContain(`chown keylessd:keylessd ${dirname(socket)}`);
  expect(agentService.user).toBe('10001:10001');
  expect(edge.image).toBe(agentService.image);
});

test('the agent uses the compose PKI client certificate and keylessd\'s service name', () => {
  const args = agentService.command!;
  expect(flag(args, '--server')).toBe('wss://keylessd:2408/v1');
  for (const name of ['--ca', '--cert', '--key']) expect(mounts(agentService).find((m) => flag(args, name)!.startsWith(`${m.target}/`))?.source).toBe('pki');
  expect(read('deploy/compose/init-token.sh')).toMatch(/--server-dns [^\n]*keylessd/);
  const usage = spawnSync(process.execPath, [join(ROOT, 'dist/src/cli/keylessd-agent.js'), '--help'], { encoding: 'utf8' }).stdout;
  for (const arg of args.filter((a) => a.startsWith('--'))) expect([arg, usage.includes(arg)]).toEqual([arg, true]);
});

test('nginx, OpenSSL and the entrypoint agree: engine, module path, key URI, certificate path', () => {
  const nginx = read('deploy/edge/nginx.conf');
  const openssl = read('deploy/edge/openssl.cnf');
  const entry = read('deploy/edge/edge-entrypoint.sh');
  for (const [source, target] of mounts(edge).filter((m) => m.source.startsWith('./')).map((m) => [m.source, m.target] as const)) expect([source, existsSync(join(ROOT, source))]).toEqual([source, true]), void target;
  expect(mounts(edge).find((m) => m.target === edge.environment!.OPENSSL_CONF)?.source).toBe('./deploy/edge/openssl.cnf');
  expect(mounts(edge).find((m) => m.target === edge.entrypoint![1])?.source).toBe('./deploy/edge/edge-entrypoint.sh');
  expect(entry).toContain(`nginx -c ${mounts(edge).find((m) => m.source === './deploy/edge/nginx.conf')!.target}`);
  expect(/^dynamic_path = (.+)$/m.exec(openssl)![1]).toBe(ENGINE);
  expect(/^init = 1$/m.test(openssl)).toBe(true);
  const modulePath = /^MODULE_PATH = (.+)$/m.exec(openssl)![1]!;
  expect(read('deploy/edge/Dockerfile')).toContain(`libkeylessd-pkcs11.so ${modulePath}`);
  const keyUri = /ssl_certificate_key "engine:pkcs11:(pkcs11:[^"]+)"/.exec(nginx)![1]!;
  expect(entry).toContain(keyUri);
  const object = /object=([^;]+)/.exec(keyUri)![1];
  expect(read('deploy/compose/init-token.sh')).toMatch(new RegExp(`--generate ec:P-256:${object}:`));
  const cert = /ssl_certificate (\S+);/.exec(nginx)![1];
  expect(entry).toContain(`cert=${cert}`);
  expect(nginx).toMatch(/^user keylessd keylessd;$/m);
});

test('the agent unit: dedicated user, socket group www-data, restarts, and systemd-analyze accepts it', () => {
  const unitFile = join(ROOT, 'deploy/systemd/keylessd-agent.service');
  const text = readFileSync(unitFile, 'utf8');
  expect(text).toMatch(/^User=keylessd-agent$/m);
  expect(text).toMatch(/^Restart=always$/m);
  expect(text).toMatch(/--socket \/run\/keylessd-agent\/agent\.sock --socket-group www-data --socket-mode 660/);
  expect(text).toMatch(/^RuntimeDirectory=keylessd-agent$/m);
  expect(text).toMatch(/^SupplementaryGroups=www-data$/m);
  if (spawnSync('systemd-analyze', ['--version']).status !== 0) return;
  const copy = join(mkdtempSync(join(tmpdir(), 'keylessd-unit-')), 'keylessd-agent.service');
  copyFileSync(unitFile, copy);
  const result = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
  expect({ status: result.status, output: `${result.stdout}${result.stderr}`.trim() }).toEqual({ status: 0, output: '' });
});
