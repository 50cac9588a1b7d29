import { z } from 'zod';

/**
 * The fields every backend's config begins with: its `type`, which picks the backend, and the
 * instance `name` that KeyInfo.backend and the metrics show.
 */
export function backendFields<T extends string>(type: T, defaultName: string) {
  return {
    type: z.literal(type),
    name: z.string().min(1).default(defaultName).describe('Name of this backend instance, shown in KeyInfo.backend and metrics.'),
  };
}

/** `timeout_ms` of a backend: the deadline of one operation; `description` says what passing it does there. */
export function timeoutField(description: string) {
  return z.number().int().min(1).max(600_000).default(5000).describe(description);
}
