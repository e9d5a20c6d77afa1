// The server's custom protocol, as documented in docs/lsp-extensions.md.
// Kept free of `vscode` imports so the logic that reads it can be unit-tested
// under plain node.

export type Health = 'ok' | 'warning' | 'error';
export type EngineState = 'idle' | 'syncing' | 'paused' | 'disconnected';
export type TargetState = 'synced' | 'syncing' | 'error' | 'waiting';

export interface LastSync {
  files: number;
  bytes: number;
  ms: number;
  /** When the batch finished: an RFC 3339 string or milliseconds since the epoch. */
  at: string | number;
}

export interface TargetStatus {
  mapping: string;
  namespace: string;
  pod: string;
  container: string;
  state: TargetState;
  lastSync?: LastSync | null;
  error?: string | null;
}

export interface PodloopStatus {
  health: Health;
  state: EngineState;
  quiescent: boolean;
  message: string;
  pending: number;
  targets: TargetStatus[];
}

export const STATUS_NOTIFICATION = 'podloop/status';

/** `workspace/executeCommand` commands the server understands. */
export const ServerCommand = {
  syncAll: 'podloop.syncAll',
  reload: 'podloop.reload',
  pause: 'podloop.pause',
  resume: 'podloop.resume',
  status: 'podloop.status',
  /** `[uri]`: the conflict quick fix (send the file over the container's copy). */
  overwrite: 'podloop.overwrite',
} as const;

/**
 * The server is written by other people and may grow fields or send partial
 * objects while it evolves; a malformed notification must not break the
 * status bar, so anything unexpected is normalised here, once.
 */
export function parseStatus(raw: unknown): PodloopStatus | undefined {
  if (typeof raw !== 'object' || raw === null) {
    return undefined;
  }
  const value = raw as Record<string, unknown>;
  const health = oneOf(value.health, ['ok', 'warning', 'error'] as const);
  const state = oneOf(value.state, ['idle', 'syncing', 'paused', 'disconnected'] as const);
  if (health === undefined || state === undefined) {
    return undefined;
  }
  const targets = Array.isArray(value.targets) ? value.targets.flatMap(parseTarget) : [];
  return {
    health,
    state,
    quiescent: value.quiescent === true,
    message: typeof value.message === 'string' ? value.message : '',
    pending: typeof value.pending === 'number' && Number.isFinite(value.pending) ? value.pending : 0,
    targets,
  };
}

function parseTarget(raw: unknown): TargetStatus[] {
  if (typeof raw !== 'object' || raw === null) {
    return [];
  }
  const value = raw as Record<string, unknown>;
  return [
    {
      mapping: stringOr(value.mapping, ''),
      namespace: stringOr(value.namespace, ''),
      pod: stringOr(value.pod, ''),
      container: stringOr(value.container, ''),
      state: oneOf(value.state, ['synced', 'syncing', 'error', 'waiting'] as const) ?? 'waiting',
      lastSync: parseLastSync(value.lastSync),
      error: typeof value.error === 'string' && value.error !== '' ? value.error : null,
    },
  ];
}

function parseLastSync(raw: unknown): LastSync | null {
  if (typeof raw !== 'object' || raw === null) {
    return null;
  }
  const value = raw as Record<string, unknown>;
  if (typeof value.ms !== 'number') {
    return null;
  }
  return {
    files: typeof value.files === 'number' ? value.files : 0,
    bytes: typeof value.bytes === 'number' ? value.bytes : 0,
    ms: value.ms,
    at: typeof value.at === 'string' || typeof value.at === 'number' ? value.at : 0,
  };
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[]): T | undefined {
  return typeof value === 'string' && (allowed as readonly string[]).includes(value) ? (value as T) : undefined;
}

function stringOr(value: unknown, fallback: string): string {
  return typeof value === 'string' ? value : fallback;
}

/** One line for the `podloop.syncAll` result (`{filesSent, filesDeleted, targets, failures}`). */
export function describeSyncAll(report: unknown): string {
  if (typeof report !== 'object' || report === null) {
    return 'sync all done';
  }
  const value = report as Record<string, unknown>;
  const count = (key: string): number | undefined => (typeof value[key] === 'number' ? (value[key] as number) : undefined);
  const sent = count('filesSent');
  const deleted = count('filesDeleted') ?? 0;
  const targets = count('targets');
  if (sent === undefined || targets === undefined) {
    return 'sync all done';
  }
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  let line = `sent ${plural(sent, 'file')}${deleted > 0 ? `, deleted ${deleted}` : ''} to ${plural(targets, 'target')}`;
  const failures = Array.isArray(value.failures) ? value.failures.length : 0;
  if (failures > 0) {
    line += `; ${plural(failures, 'failure')}`;
  }
  return line;
}
