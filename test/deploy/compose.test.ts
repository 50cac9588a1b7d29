import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse } from 'yaml';
import { parsePkcs11Uri } from '../../backends/pkcs11/uri';
import { pkcs11BackendSchema } from '../../backends/pkcs11';
import { validateConfig } from '../../src/config/load';
import { metricsSchema } from '../../src/config/schema';
import { Metrics } from '../../src/metrics/metrics';
import { MetricsServer } from '../../src/metrics/http';
import { copiedBefore, coveredBy, dockerignorePatterns, ignoredBy, parseDockerfile, type Stage } from './dockerfile';
import { exportedSeriesNames, metricNamesIn } from './metric-names';

// No Docker engine runs here: these tests check everything that can be checked without one.
// compose-stack.test.ts runs the stack's init script and config for real, outside containers.
const root = join(__dirname, '..', '..');
const read = (path: string) => readFileSync(join(root, path), 'utf8');

interface Service {
  build?: string | { context: string; dockerfile?: string };
  image?: string;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  depends_on?: string[] | Record<string, { condition: string }>;
  restart?: string;
  user?: string;
}
const compose = parse(read('docker-compose.yml')) as { services: Record<string, Service>; volumes: Record<string, unknown> };
const services = compose.services;

/** A short-syntax volume entry: `source:target[:mode]`. */
function mountsOf(service: Service): Array<{ source: string; target: string; readOnly: boolean }> {
  return (service.volumes ?? []).map((entry) => {
    const [source, target, mode] = entry.split(':');
    return { source: source!, target: target!, readOnly: mode === 'ro' };
  });
}

/** The compose service's mount whose target holds `path`. */
function mountHolding(service: Service, path: string) {
  return mountsOf(service).find((m) => path === m.target || path.startsWith(`${m.target}/`));
}

/** `[host_ip:]host_port:container_port` entries, as container port → host address. */
function publishedPorts(service: Service): Map<number, string> {
  return new Map(
    (service.ports ?? []).map((entry) => {
      const parts = entry.split(':');
      return [Number(parts[parts.length - 1]), parts.slice(0, -1).join(':')];
    }),
  );
}

const stackConfig = validateConfig(parse(read('deploy/compose/keylessd.yaml')), [], '/etc/keylessd');
const dockerfile = parseDockerfile(read('Dockerfile'));

describe('docker-compose.yml', () => {
  test('every file it references exists: build contexts, Dockerfiles, bind mounts', () => {
    const referenced = Object.values(services).flatMap((service) => {
      const build = typeof service.build === 'string' ? { context: service.build } : service.build;
      return [
        ...(build ? [build.context, join(build.context, build.dockerfile ?? 'Dockerfile')] : []),
        ...mountsOf(service)
          .map((m) => m.source)
          .filter((source) => source.startsWith('.') || source.startsWith('/')),
      ];
    });
    expect(referenced).toEqual(expect.arrayContaining(['.', 'Dockerfile', './deploy/compose/keylessd.yaml', './docs/prometheus-alerts.yml']));
    for (const path of referenced) expect([path, existsSync(join(root, path))]).toEqual([path, true]);
  });

  test('every named volume is declared, and every declared volume is used', () => {
    const named = new Set(
      Object.values(services)
        .flatMap(mountsOf)
        .map((m) => m.source)
        .filter((source) => !source.startsWith('.') && !source.startsWith('/')),
    );
    expect([...named].sort()).toEqual(Object.keys(compose.volumes).sort());
  });

  test('keylessd starts only after the one-shot token-init succeeded, both from the one image', () => {
    const keylessd = services.keylessd!;
    const init = services['token-init']!;
    expect(keylessd.depends_on).toEqual({ 'token-init': { condition: 'service_completed_successfully' } });
    expect(init.restart).toBe('no');
    expect(init.build).toBe('.');
    expect(keylessd.build).toBe('.');
    expect(init.image).toBe(keylessd.image);
    // The init script is mounted where the entrypoint runs it from.
    expect(mountHolding(init, init.entrypoint![1]!)?.source).toBe('./deploy/compose/init-token.sh');
  });

  test('keylessd runs the mounted config, read-only', () => {
    const keylessd = services.keylessd!;
    const configFile = keylessd.command![keylessd.command!.indexOf('--config') + 1]!;
    expect(mountsOf(keylessd)).toContainEqual({ source: './deploy/compose/keylessd.yaml', target: configFile, readOnly: true });
  });

  test('published ports are the listeners of the mounted config; metrics only on the host loopback', () => {
    const ports = publishedPorts(services.keylessd!);
    expect(stackConfig.compat.enabled).toBe(true);
    expect([...ports.keys()].sort()).toEqual([stackConfig.listen.port, stackConfig.compat.port, stackConfig.metrics.port].sort());
    expect(ports.get(stackConfig.metrics.port)).toBe('127.0.0.1:' + stackConfig.metrics.port);
    // Inside the container every listener must bind all interfaces, or nothing reaches it.
    for (const host of [stackConfig.listen.host, stackConfig.compat.host, stackConfig.metrics.host]) expect(host).toBe('0.0.0.0');
  });

  test('every file the config names is in a volume mounted into keylessd; state and token writable', () => {
    const keylessd = services.keylessd!;
    for (const path of [stackConfig.tls.cert, stackConfig.tls.key, stackConfig.tls.client_ca]) expect([path, mountHolding(keylessd, path)?.source]).toEqual([path, 'pki']);
    expect(mountHolding(keylessd, stackConfig.audit.path!)).toMatchObject({ source: 'state', readOnly: false });
    // The state volume is the image's state folder, which the image creates for its user.
    expect(mountHolding(keylessd, stackConfig.audit.path!)!.target).toBe('/var/lib/keylessd');
    const init = services['token-init']!;
    for (const name of ['pki', 'token']) expect(mountsOf(init).find((m) => m.source === name)?.readOnly).toBe(false);
  });

  test('the pkcs11 backend names the token, key, module and PIN file that token-init creates', () => {
    const entry = stackConfig.backends[0]!;
    expect(entry.type).toBe('pkcs11');
    expect(pkcs11BackendSchema.parse(parse(read('deploy/compose/keylessd.yaml')).backends[0])).toEqual(entry);
    const uri = parsePkcs11Uri((entry as { uri: string }).uri);
    const init = read('deploy/compose/init-token.sh');
    const label = /--label (\S+)/.exec(init)![1];
    const [, , keyLabel] = /--generate (\S+)/.exec(init)![1]!.split(':');
    expect(uri.token).toBe(label);
    expect(uri.object).toBe(keyLabel);
    // Debian's softhsm2 package, which the Dockerfile installs, puts its module here.
    expect(uri.modulePath).toBe('/usr/lib/softhsm/libsofthsm2.so');
    expect(read('Dockerfile')).toMatch(/apt-get install [^\n]*softhsm2/);
    expect(uri.pinSource?.kind).toBe('file');
    const pinFile = (uri.pinSource as { path: string }).path;
    expect(mountHolding(services.keylessd!, pinFile)?.source).toBe('token');
    expect(pinFile).toBe('/token/user.pin');
    expect(init).toContain('"$token/user.pin"');
  });

  test('both services see the token through the same SOFTHSM2_CONF, which token-init writes into the token volume', () => {
    const conf = services.keylessd!.environment!.SOFTHSM2_CONF!;
    expect(services['token-init']!.environment!.SOFTHSM2_CONF).toBe(conf);
    expect(mountHolding(services.keylessd!, conf)?.source).toBe('token');
    // scripts/softhsm-token.sh writes DIR/softhsm2.conf; init-token.sh passes the token volume as DIR.
    expect(read('scripts/softhsm-token.sh')).toContain('conf="$dir/softhsm2.conf"');
    expect(read('deploy/compose/init-token.sh')).toMatch(/token="\$\{TOKEN_DIR:-\/token\}"/);
    expect(conf).toBe('/token/softhsm2.conf');
  });
});

describe('Prometheus and the alert rules', () => {
  const prometheus = parse(read('deploy/compose/prometheus.yml'));

  test('Prometheus scrapes keylessd on the metrics port of its config', () => {
    const job = prometheus.scrape_configs.find((c: { job_name: string }) => c.job_name === 'keylessd');
    expect(job.static_configs[0].targets).toEqual([`keylessd:${stackConfig.metrics.port}`]);
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
  });

  test('Prometheus loads docs/prometheus-alerts.yml itself, not a copy', () => {
    const mount = mountsOf(services.prometheus!).find((m) => m.source === './docs/prometheus-alerts.yml');
    expect(mount?.readOnly).toBe(true);
    expect(prometheus.rule_files).toEqual([mount!.target]);
    expect(mountHolding(services.prometheus!, prometheus.rule_files[0])).toBeDefined();
  });

  test('the metric-name extractor finds names and only names', () => {
    expect(metricNamesIn('sum by (le, instance) (rate(keylessd_typo_total{result=~"A|B"}[5m])) / on(instance) up > bool 0.05')).toEqual(['keylessd_typo_total', 'up']);
    expect(metricNamesIn('histogram_quantile(0.99, x_bucket) - time() < 14 * 86400')).toEqual(['x_bucket']);
  });

  test('every rule parses, is complete, and uses only series keylessd exports', async () => {
    const names = await exportedSeriesNames();
    const groups = parse(read('docs/prometheus-alerts.yml')).groups as Array<{ name: string; rules: Array<Record<string, unknown>> }>;
    const rules = groups.flatMap((g) => g.rules);
    expect(rules.length).toBeGreaterThanOrEqual(8);
    expect(new Set(rules.map((r) => r.alert)).size).toBe(rules.length);
    for (const rule of rules) {
      const { alert, expr, labels, annotations } = rule as { alert: string; expr: string; labels: { severity?: string }; annotations: { summary?: string; description?: string } };
      expect([alert, typeof expr, labels?.severity, Boolean(annotations?.summary && annotations?.description)]).toEqual([alert, 'string', expect.stringMatching(/^(page|ticket)$/), true]);
      const used = metricNamesIn(expr);
      expect([alert, used.length > 0]).toEqual([alert, true]);
      for (const name of used) expect([alert, name, names.has(name)]).toEqual([alert, name, true]);
    }
  });
});

describe('Grafana', () => {
  const dashboard = JSON.parse(read('deploy/grafana/dashboards/keylessd.json'));
  const panels = dashboard.panels as Array<{ id: number; type: string; datasource?: { uid: string }; targets?: Array<{ expr: string }> }>;

  test('the dashboard queries only series keylessd exports, through the provisioned datasource', async () => {
    const names = await exportedSeriesNames();
    const queries = [
      ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
      ...dashboard.templating.list.map((v: { query: { query: string } }) => v.query.query.replace(/^label_values\((\w+),.*$/, '$1')),
    ];
    expect(queries.length).toBeGreaterThan(15);
    for (const query of queries) for (const name of metricNamesIn(query)) expect([name, names.has(name)]).toEqual([name, true]);
    const datasource = parse(read('deploy/grafana/provisioning/datasources/prometheus.yml')).datasources[0];
    expect(datasource.url).toBe('http://prometheus:9090');
    for (const panel of panels.filter((p) => p.type !== 'row')) expect([panel.id, panel.datasource?.uid]).toEqual([panel.id, datasource.uid]);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
  });

  test('the provisioning points at the folder the dashboard is mounted in', () => {
    const grafana = services.grafana!;
    const provider = parse(read('deploy/grafana/provisioning/dashboards/keylessd.yml')).providers[0];
    expect(mountsOf(grafana)).toContainEqual({ source: './deploy/grafana/dashboards', target: provider.options.path, readOnly: true });
    expect(mountsOf(grafana)).toContainEqual({ source: './deploy/grafana/provisioning', target: '/etc/grafana/provisioning', readOnly: true });
  });
});

describe('Dockerfile', () => {
  const [build, runtime] = dockerfile as [Stage, Stage];
  const args = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);

  test('two stages on Node 20 slim; the build stage compiles, prunes dev dependencies', () => {
    expect(dockerfile.map((s) => s.from)).toEqual(['node:20-bookworm-slim', 'node:20-bookworm-slim']);
    expect(build.name).toBe('build');
    const runs = args(build, 'RUN').join('\n');
    expect(runs).toMatch(/apt-get install .*python3 make g\+\+/);
    expect(runs).toMatch(/npm ci/);
    expect(runs).toMatch(/npm run build && npm prune --omit=dev/);
  });

  test('the runtime stage has no toolchain, runs as uid 10001, keeps state in a volume', () => {
    const runs = args(runtime, 'RUN').join('\n');
    expect(runs).not.toMatch(/g\+\+|python3|\bmake\b/);
    expect(runs).toMatch(/apt-get install .*ca-certificates/);
    expect(runs).toMatch(/groupadd .*--gid 10001 keylessd/);
    expect(runs).toMatch(/useradd --system --uid 10001 --gid keylessd [^&]* keylessd &&/);
    expect(args(runtime, 'USER')).toEqual(['10001:10001']);
    // token-init hands the volumes it creates to the same user.
    expect(read('deploy/compose/init-token.sh')).toContain('owner="${KEYLESSD_UID:-10001}:${KEYLESSD_GID:-10001}"');
    expect(args(runtime, 'VOLUME')).toEqual(['["/var/lib/keylessd"]']);
    expect(args(runtime, 'ENTRYPOINT')).toEqual(['["node", "dist/src/cli/keylessd.js"]']);
  });

  test('EXPOSE matches the ports compose publishes and the config schema defaults', () => {
    const exposed = args(runtime, 'EXPOSE').flatMap((a) => a.split(' ').map(Number));
    expect(exposed.sort()).toEqual([...publishedPorts(services.keylessd!).keys()].sort());
    expect(exposed).toContain(metricsSchema.parse({}).port);
  });

  test('the runtime copies what the daemon loads: the native addons binding.gyp builds, dist, proto, the token script', () => {
    const targets = (JSON.parse(read('binding.gyp')) as { targets: Array<{ target_name: string }> }).targets.map((t) => t.target_name);
    const copies = args(runtime, 'COPY').join('\n');
    expect(targets).toEqual(['keyless_openssl', 'keyless_pkcs11']);
    for (const target of targets) expect(copies).toContain(`/app/build/Release/${target}.node`);
    expect(read('backends/file/native.ts')).toContain(`loadAddon<NativeAddon>('keyless_openssl'`);
    expect(read('backends/pkcs11/token-calls.ts')).toContain(`loadAddon<TokenCallsAddon>('keyless_pkcs11'`);
    for (const path of ['/app/dist', '/app/proto', '/app/package.json', '/app/node_modules', '/app/scripts/softhsm-token.sh']) expect(copies).toContain(`--from=build ${path}`);
    expect(args(runtime, 'WORKDIR')).toEqual(['/app']);
    // token-init runs these from the image (APP_DIR defaults to /app).
    expect(read('deploy/compose/init-token.sh')).toMatch(/app="\$\{APP_DIR:-\/app\}"/);
  });

  test('`npm ci` in both images sees every file node-gyp compiles: binding.gyp, its sources and the headers they include', () => {
    const gyp = JSON.parse(read('binding.gyp')) as { targets: Array<{ sources: string[] }> };
    const sources = gyp.targets.flatMap((t) => t.sources);
    const included = sources.flatMap((source) => [...read(source).matchAll(/^#include "([^"]+)"/gm)].map((m) => join(dirname(source), m[1]!)));
    expect(included).toContain('src/edge/pkcs11-module/pkcs11.h');
    for (const file of ['Dockerfile', 'deploy/edge/Dockerfile']) {
      const copied = copiedBefore(parseDockerfile(read(file))[0]!, /npm ci/);
      for (const needed of ['package.json', 'package-lock.json', 'binding.gyp', ...sources, ...included]) expect([file, needed, coveredBy(copied, needed)]).toEqual([file, needed, true]);
    }
  });

  test('everything COPY takes from the context exists and is not excluded by .dockerignore', () => {
    const ignore = dockerignorePatterns(read('.dockerignore'));
    const sources = args(build, 'COPY')
      .filter((a) => !a.startsWith('--from'))
      .flatMap((a) => a.split(' ').slice(0, -1));
    expect(sources).toEqual(expect.arrayContaining(['package-lock.json', 'binding.gyp', 'src', 'backends', 'proto']));
    for (const source of sources) expect([source, existsSync(join(root, source)), ignoredBy(ignore, source)]).toEqual([source, true, false]);
    // Local build outputs stay out: the image compiles its own.
    for (const local of ['node_modules', 'dist', 'build/Release/keyless_openssl.node', '.keylessd/pki/ca.key']) expect([local, ignoredBy(ignore, local)]).toEqual([local, true]);
  });

  describe('HEALTHCHECK', () => {
    const healthcheck = args(runtime, 'HEALTHCHECK')[0]!;
    const command = JSON.parse(healthcheck.slice(healthcheck.indexOf('CMD ') + 4)) as string[];
    const script = command[2]!;
    /** Exit status of the check against `port`; asynchronous, so the server in this process can answer. */
    const run = (port: number) =>
      new Promise<number | null>((resolve) => {
        const child = execFile(process.execPath, ['-e', script.replace(':2406/', `:${port}/`)], { timeout: 20_000 });
        child.once('exit', (code) => resolve(code));
      });

    test('asks /healthz on the default metrics port with node, since the slim image has no curl', () => {
      expect(command.slice(0, 2)).toEqual(['node', '-e']);
      expect(script).toContain(`http://127.0.0.1:${metricsSchema.parse({}).port}/healthz`);
    });

    test('succeeds against a real metrics server and fails once it is gone', async () => {
      const server = new MetricsServer(new Metrics(), () => []);
      const { port } = await server.start('127.0.0.1', 0);
      try {
        expect(await run(port)).toBe(0);
      } finally {
        await server.stop();
      }
      expect(await run(port)).toBe(1);
    });
  });
});
