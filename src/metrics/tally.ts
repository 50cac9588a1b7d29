import type { Registry } from 'prom-client';

type LabelValues = Readonly<Record<string, string | number>>;

interface MetricValue {
  readonly labels: LabelValues;
  readonly value: number;
  readonly metricName?: string;
}

/**
 * Metrics observed on every request, made cheap: a labelled child is found once by a
 * precomputed key and an observation is a few additions into plain numbers (prom-client
 * hashes the label object and validates it on every observation). They register with a
 * prom-client Registry through its metric interface (name, help, type, get()), so the
 * exposition is the same text prom-client writes for its own counters and histograms.
 */
abstract class Tally<C> {
  readonly aggregator = 'sum';
  protected readonly children = new Map<string, { readonly labels: LabelValues; readonly child: C }>();

  constructor(
    readonly name: string,
    readonly help: string,
    registers: readonly Registry[],
  ) {
    for (const registry of registers) registry.registerMetric(this as never);
  }

  /** The child for `key` (one string per label set, made by the caller), if there is one yet. */
  find(key: string): C | undefined {
    return this.children.get(key)?.child;
  }

  /** A new child for `key` with `labels`: the label object is built only when a label set is first seen. */
  add(key: string, labels: LabelValues): C {
    const child = this.make();
    this.children.set(key, { labels, child });
    return child;
  }

  reset(): void {
    this.children.clear();
  }

  protected abstract make(): C;
}

export class TallyCounterChild {
  value = 0;
  inc(by = 1): void {
    this.value += by;
  }
}

export class TallyCounter extends Tally<TallyCounterChild> {
  readonly type = 'counter';

  protected make(): TallyCounterChild {
    return new TallyCounterChild();
  }

  async get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const values: MetricValue[] = [];
    for (const { labels, child } of this.children.values()) values.push({ labels, value: child.value });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

export class TallyHistogramChild {
  /** counts[i]: observations in (bounds[i-1], bounds[i]]; the last one: above every bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const { bounds } = this;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i] += 1;
    this.sum += value;
    this.count += 1;
  }
}

export class TallyHistogram extends Tally<TallyHistogramChild> {
  readonly type = 'histogram';

  constructor(name: string, help: string, private readonly buckets: readonly number[], registers: readonly Registry[]) {
    super(name, help, registers);
  }

  protected make(): TallyHistogramChild {
    return new TallyHistogramChild(this.buckets);
  }

  async get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const values: MetricValue[] = [];
    for (const { labels, child } of this.children.values()) {
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += child.counts[i]!;
        values.push({ labels: { ...labels, le: bound }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { ...labels, le: '+Inf' }, value: child.count, metricName: `${this.name}_bucket` });
      values.push({ labels, value: child.sum, metricName: `${this.name}_sum` });
      values.push({ labels, value: child.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}
