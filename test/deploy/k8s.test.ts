import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { validateConfig } from '../../src/config/load';
import { parseDockerfile } from './dockerfile';

// Schemas: kubernetes-models (the Kubernetes OpenAPI definitions compiled to JSON Schema
// validators) and @kubernetes-models/prometheus-operator for the ServiceMonitor, both pinned
// devDependencies: nothing is fetched at test time.
/* eslint-disable @typescript-eslint/no-require-imports */
const MODELS: Record<string, () => new (data: object) => { validate(): void }> = {
  'v1/ConfigMap': () => require('kubernetes-models/v1/ConfigMap').ConfigMap,
  'v1/Secret': () => require('kubernetes-models/v1/Secret').Secret,
  'v1/Service': () => require('kubernetes-models/v1/Service').Service,
  'apps/v1/Deployment': () => require('kubernetes-models/apps/v1/Deployment').Deployment,
  'policy/v1/PodDisruptionBudget': () => require('kubernetes-models/policy/v1/PodDisruptionBudget').PodDisruptionBudget,
  'monitoring.coreos.com/v1/ServiceMonitor': () => require('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor').ServiceMonitor,
};

const root = join(__dirname, '..', '..');
const dir = join(root, 'deploy', 'k8s');

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

function manifests(file: string): Manifest[] {
  return parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]!.message}`);
    return doc.toJS() as Manifest;
  });
}

const files = readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
const all = files.flatMap((file) => manifests(file).map((m) => ({ file, m })));
const one = (kind: string, name?: string) => {
  const found = all.filter(({ m }) => m.kind === kind && (name === undefined || m.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!.m as any; // eslint-disable-line @typescript-eslint/no-explicit-any
};

/** What kubernetes-models says about a manifest: undefined when valid. */
function schemaProblem(m: Manifest): string | undefined {
  const Model = MODELS[`${m.apiVersion}/${m.kind}`];
  if (!Model) return `no schema for ${m.apiVersion} ${m.kind}`;
  try {
    new (Model())(m).validate();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

describe('deploy/k8s', () => {
  test.each(all.map(({ file, m }) => [`${file}: ${m.kind} ${m.metadata.name}`, m] as const))('%s is valid against the Kubernetes schema', (_name, m) => {
    expect(schemaProblem(m)).toBeUndefined();
  });

  test('the validator is not a rubber stamp: a wrong type and a missing field are caught', () => {
    const deployment = structuredClone(one('Deployment'));
    deployment.spec.template.spec.containers[0].ports[0].containerPort = 'twenty-four-o-eight';
    expect(schemaProblem(deployment)).toMatch(/containerPort must be integer/);
    const monitor = structuredClone(one('ServiceMonitor'));
    delete monitor.spec.selector;
    expect(schemaProblem(monitor)).toMatch(/selector/);
  });

  test('kustomization.yaml lists every manifest except the example Secrets', () => {
    const resources = manifests('kustomization.yaml')[0]!.resources as string[];
    expect(resources.sort()).toEqual(files.filter((f) => f !== 'secrets.example.yaml').sort());
  });

  const deployment = one('Deployment');
  const pod = deployment.spec.template.spec;
  const container = pod.containers[0];
  const podLabels = deployment.spec.template.metadata.labels;
  const selects = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => podLabels[k] === v);

  test('the hardened security context: non-root as the image user, no privilege escalation, no capabilities, read-only root, seccomp', () => {
    const user = parseDockerfile(readFileSync(join(root, 'Dockerfile'), 'utf8')).at(-1)!.instructions.find((i) => i.keyword === 'USER')!.args;
    expect(user).toBe(`${pod.securityContext.runAsUser}:${pod.securityContext.runAsGroup}`);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(container.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, privileged: false, capabilities: { drop: ['ALL'] } });
    expect(pod.automountServiceAccountToken).toBe(false);
    // Secret files are group-readable by the pod's group only: keylessd does not warn about them.
    expect(pod.securityContext.fsGroup).toBe(pod.securityContext.runAsGroup);
    for (const volume of pod.volumes.filter((v: { secret?: unknown }) => v.secret)) expect(volume.secret.defaultMode).toBe(0o440);
  });

  test('probes: liveness and startup on /healthz, readiness on /readyz, on the metrics port', () => {
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(container.startupProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'metrics' });
  });

  test('the ConfigMap holds a keylessd.yaml the daemon accepts, and everything it names is mounted', () => {
    const config = validateConfig(parseAllDocuments(one('ConfigMap').data['keylessd.yaml'])[0]!.toJS(), [], '/etc/keylessd');
    const port = (name: string) => container.ports.find((p: { name: string }) => p.name === name).containerPort;
    expect([config.listen.port, config.compat.port, config.metrics.port]).toEqual([port('keyless'), port('compat'), port('metrics')]);
    expect([config.listen.host, config.compat.host, config.metrics.host]).toEqual(['0.0.0.0', '0.0.0.0', '0.0.0.0']);
    const mountOf = (path: string) => container.volumeMounts.find((m: { mountPath: string }) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
    expect(container.args.slice(0, 2)).toEqual(['--config', mountOf('/etc/keylessd/keylessd.yaml').mountPath]);
    const pki = pod.volumes.find((v: { name: string }) => v.name === mountOf(config.tls.cert).name).secret;
    const examplePki = { stringData: all.find(({ m }) => m.kind === 'Secret' && m.metadata.name === pki.secretName)!.m.stringData as Record<string, string> };
    for (const path of [config.tls.cert, config.tls.key, config.tls.client_ca, config.tls.crl!]) {
      expect(mountOf(path)).toMatchObject({ readOnly: true });
      expect(Object.keys(examplePki.stringData)).toContain(path.split('/').pop());
    }
    const keysDir = (config.backends[0] as { dir: string }).dir;
    expect(pod.volumes.find((v: { name: string }) => v.name === mountOf(keysDir).name).secret.secretName).toBe('keylessd-keys');
    // The root file system is read-only: the audit log needs a writable volume.
    const audit = mountOf(config.audit.path!);
    expect(audit.readOnly).toBeUndefined();
    expect(pod.volumes.find((v: { name: string }) => v.name === audit.name).emptyDir).toBeDefined();
  });

  test('Services, the PodDisruptionBudget and the ServiceMonitor select what they should', () => {
    const service = one('Service', 'keylessd');
    const metrics = one('Service', 'keylessd-metrics');
    const names = container.ports.map((p: { name: string }) => p.name);
    for (const s of [service, metrics]) {
      expect(selects(s.spec.selector)).toBe(true);
      for (const p of s.spec.ports) expect(names).toContain(p.targetPort);
    }
    expect(service.spec.ports.map((p: { targetPort: string }) => p.targetPort)).not.toContain('metrics');
    expect(selects(one('PodDisruptionBudget').spec.selector.matchLabels)).toBe(true);
    const monitor = one('ServiceMonitor');
    expect(Object.entries(monitor.spec.selector.matchLabels).every(([k, v]) => metrics.metadata.labels[k] === v)).toBe(true);
    expect(Object.entries(monitor.spec.selector.matchLabels).every(([k, v]) => service.metadata.labels[k] === v)).toBe(false);
    expect(monitor.spec.endpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics' });
  });

  test('a drain outlives the daemon shutdown deadline, and a rollout never goes below the replica count', () => {
    const deadlineMs = Number(container.args[container.args.indexOf('--shutdown-deadline-ms') + 1]);
    const preStopSeconds = Number(container.lifecycle.preStop.exec.command[1]);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(preStopSeconds + deadlineMs / 1000);
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    expect(one('PodDisruptionBudget').spec.maxUnavailable).toBeLessThan(deployment.spec.replicas);
  });
});
