import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { validateConfig } from '../../src/config/load';
import { renderConfigReference } from '../../src/config/docs';
import { Metrics } from '../../src/metrics/metrics';

// No Docker engine runs here: these check what can be checked without one.
const root = join(__dirname, '..', '..');
const read = (path: string) => readFileSync(join(root, path), 'utf8');
const compose = parse(read('docker-compose.yml'));

/** Every metric name keylessd exports, with histogram series suffixes. */
async function exportedMetricNames(): Promise<Set<string>> {
  const metrics = new Metrics();
  const names = new Set<string>();
  for (const metric of await metrics.registry.getMetricsAsJSON()) {
    names.add(metric.name);
    if (metric.type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(metric.name + suffix);
  }
  return names;
}

function metricNamesIn(expr: string): string[] {
  return [...expr.matchAll(/\b((?:keyless|nodejs|process)_[a-z0-9_]+)\b/g)].map((m) => m[1]!);
}

test('every file the compose stack references exists', () => {
  const mounts = Object.values(compose.services as Record<string, { volumes?: string[]; build?: string }>).flatMap((service) => [
    ...(service.volumes ?? []).map((v) => v.split(':')[0]!).filter((source) => source.startsWith('./')),
    ...(service.build ? [join(service.build, 'Dockerfile')] : []),
  ]);
  expect(mounts.length).toBeGreaterThan(5);
  for (const path of mounts) expect([path, existsSync(join(root, path))]).toEqual([path, true]);
});

test('the keylessd config of the stack is valid, and its ports and volumes agree with the compose file', () => {
  const config = validateConfig(parse(read('deploy/compose/keylessd.yaml')), [], '/etc/keylessd');
  const keylessd = compose.services.keylessd;
  const published = (keylessd.ports as string[]).map((p) => Number(p.split(':').pop()));
  expect(published).toEqual(expect.arrayContaining([config.listen.port, config.compat.port, config.metrics.port]));
  expect(config.compat.enabled).toBe(true);
  const mountPoints = (keylessd.volumes as string[]).map((v) => v.split(':')[1]!);
  for (const path of [config.tls.cert, config.tls.key, config.tls.client_ca, config.audit.path!]) {
    expect(mountPoints.some((m) => path.startsWith(`${m}/`))).toBe(true);
  }
  const backend = config.backends[0]!;
  expect(backend.type).toBe('pkcs11');
  expect(keylessd.environment.SOFTHSM2_CONF.startsWith('/token/')).toBe(true);
  expect(compose.services['token-init'].environment.SOFTHSM2_CONF).toBe(keylessd.environment.SOFTHSM2_CONF);
  expect(keylessd.depends_on['token-init'].condition).toBe('service_completed_successfully');
});

test('Prometheus scrapes keylessd on its metrics port and loads the alert rules from docs/', () => {
  const prometheus = parse(read('deploy/compose/prometheus.yml'));
  const config = validateConfig(parse(read('deploy/compose/keylessd.yaml')), [], '/etc/keylessd');
  expect(prometheus.scrape_configs[0].static_configs[0].targets).toEqual([`keylessd:${config.metrics.port}`]);
  const rulesMount = (compose.services.prometheus.volumes as string[]).find((v) => v.startsWith('./docs/prometheus-alerts.yml:'))!;
  expect(prometheus.rule_files).toEqual([rulesMount.split(':')[1]]);
});

test('alert rules parse, are complete, and use only metrics keylessd exports', async () => {
  const names = await exportedMetricNames();
  const rules = parse(read('docs/prometheus-alerts.yml')).groups.flatMap((g: { rules: unknown[] }) => g.rules);
  expect(rules.length).toBeGreaterThanOrEqual(5);
  for (const rule of rules as Array<{ alert: string; expr: string; labels: object; annotations: { summary: string } }>) {
    expect(rule.alert && rule.expr && rule.labels && rule.annotations.summary).toBeTruthy();
    for (const name of metricNamesIn(rule.expr)) expect([rule.alert, name, names.has(name)]).toEqual([rule.alert, name, true]);
  }
});

test('the Grafana dashboard parses and queries only metrics keylessd exports', async () => {
  const names = await exportedMetricNames();
  const dashboard = JSON.parse(read('deploy/grafana/dashboards/keylessd.json'));
  const exprs = dashboard.panels.flatMap((p: { targets: Array<{ expr: string }> }) => p.targets.map((t) => t.expr));
  expect(exprs.length).toBeGreaterThan(10);
  for (const expr of exprs) for (const name of metricNamesIn(expr)) expect([name, names.has(name)]).toEqual([name, true]);
  const datasource = parse(read('deploy/grafana/provisioning/datasources/prometheus.yml')).datasources[0];
  expect(dashboard.panels.every((p: { datasource: { uid: string } }) => p.datasource.uid === datasource.uid)).toBe(true);
});

test('the Dockerfile is multi-stage on Node 20 slim, runs as a non-root user, checks /healthz and exposes the compose ports', () => {
  const dockerfile = read('Dockerfile');
  expect(dockerfile.match(/^FROM node:20-bookworm-slim/gm)).toHaveLength(2);
  expect(dockerfile).toMatch(/^USER keylessd$/m);
  expect(dockerfile).toMatch(/^HEALTHCHECK .*\n?.*127\.0\.0\.1:2406\/healthz/m);
  const exposed = /^EXPOSE (.+)$/m.exec(dockerfile)![1]!.split(/\s+/).map(Number);
  const published = (compose.services.keylessd.ports as string[]).map((p) => Number(p.split(':').pop()));
  expect(exposed.sort()).toEqual(published.sort());
  for (const copied of [...dockerfile.matchAll(/^COPY (?!--from)(\S+)/gm)].map((m) => m[1]!)) expect([copied, existsSync(join(root, copied))]).toEqual([copied, true]);
});

test('the systemd unit sandboxes the daemon and reloads with SIGHUP', () => {
  const unit = read('deploy/systemd/keylessd.service');
  for (const directive of ['User=keylessd', 'Restart=on-failure', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ReadWritePaths=/var/lib/keylessd', 'PrivateTmp=yes', 'ProtectHome=yes', 'CapabilityBoundingSet=', 'ExecReload=/bin/kill -HUP $MAINPID', 'KillSignal=SIGTERM']) {
    expect(unit).toContain(directive);
  }
  expect(unit).not.toMatch(/^MemoryDenyWriteExecute=yes/m);
});

test('docs/configuration.md is what the schema generates (run `npm run docs:config` after changing it)', () => {
  expect(read('docs/configuration.md')).toBe(renderConfigReference());
});
