/**
 * Latencies in whole microseconds, counted in a fixed array: exact to 1 µs up to 10 s,
 * no allocation per sample, however long the run.
 */
export class LatencyHistogram {
  private readonly counts = new Uint32Array(10_000_001);
  private total = 0;

  record(microseconds: number): void {
    this.counts[Math.min(Math.max(0, Math.round(microseconds)), this.counts.length - 1)]! += 1;
    this.total += 1;
  }

  get count(): number {
    return this.total;
  }

  /** The latency (µs) below which `fraction` of the samples fall. */
  percentile(fraction: number): number {
    const target = Math.max(1, Math.ceil(this.total * fraction));
    let seen = 0;
    for (let us = 0; us < this.counts.length; us++) {
      seen += this.counts[us]!;
      if (seen >= target) return us;
    }
    return 0;
  }
}
