import { Metrics } from '../../src/metrics/metrics';

/** Series Prometheus makes up itself for every target; a rule may use them. */
const SYNTHETIC_SERIES = ['up'];

/**
 * Every series name keylessd's /metrics can carry: its own metrics and prom-client's default
 * process/nodejs metrics, read from a real registry, with the `_bucket`, `_sum` and `_count`
 * series of histograms and summaries.
 */
export async function exportedSeriesNames(): Promise<Set<string>> {
  const names = new Set<string>(SYNTHETIC_SERIES);
  for (const metric of await new Metrics().registry.getMetricsAsJSON()) {
    names.add(metric.name);
    const type = String(metric.type);
    if (type === 'histogram') ['_bucket', '_sum', '_count'].forEach((suffix) => names.add(metric.name + suffix));
    if (type === 'summary') ['_sum', '_count'].forEach((suffix) => names.add(metric.name + suffix));
  }
  return names;
}

const PROMQL_KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'atan2', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects. Label matchers, label lists, ranges and
 * strings are dropped first; what is left that is not a function call or keyword is a name.
 */
export function metricNamesIn(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  return [...bare.matchAll(/(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()/g)].map((m) => m[1]!).filter((word) => !PROMQL_KEYWORDS.has(word.toLowerCase()));
}
