// Turns what we know about the server into what the status bar shows.
// Pure: no `vscode` import, so every case is covered by unit tests.

import type { LastSync, PodloopStatus, TargetStatus } from './protocol';

/** Where the language client is, independently of what the server reports. */
export type ClientPhase =
  | { kind: 'starting' }
  | { kind: 'running'; status?: PodloopStatus }
  | { kind: 'stopped'; reason: string };

export type Background = 'error' | 'warning' | undefined;

export interface StatusView {
  /** Status bar text with `$(codicon)` references. */
  text: string;
  /** Markdown for the hover. */
  tooltip: string;
  background: Background;
  /** Read by screen readers; also what tests look for, as it has no icons. */
  accessibilityLabel: string;
}

const MAX_MESSAGE_CHARS = 48;

export function renderStatus(phase: ClientPhase, now: Date = new Date()): StatusView {
  switch (phase.kind) {
    case 'starting':
      return {
        text: '$(loading~spin) podloop',
        tooltip: '**podloop**: starting the server…',
        background: undefined,
        accessibilityLabel: 'podloop: starting',
      };
    case 'stopped':
      return {
        text: '$(error) podloop: server stopped',
        tooltip: `**podloop**: the server is not running.\n\n${escapeMarkdown(phase.reason)}\n\nClick for actions (Restart server, Show logs).`,
        background: 'error',
        accessibilityLabel: `podloop: server stopped: ${phase.reason}`,
      };
    case 'running':
      if (phase.status === undefined) {
        return {
          text: '$(loading~spin) podloop',
          tooltip: "**podloop**: waiting for the server's first status…",
          background: undefined,
          accessibilityLabel: 'podloop: connecting',
        };
      }
      return renderServerStatus(phase.status, now);
  }
}

function renderServerStatus(status: PodloopStatus, now: Date): StatusView {
  const pods = podsLabel(status.targets);
  const latest = latestSync(status.targets);
  const pending = status.pending > 0 ? `${status.pending} pending` : '';
  let icon: string;
  let detail: string;
  let background: Background;

  switch (status.state) {
    case 'paused':
      icon = '$(debug-pause)';
      detail = join('paused', pending);
      background = undefined;
      break;
    case 'syncing':
      icon = '$(sync~spin)';
      detail = join(pods, status.pending > 0 ? `syncing ${status.pending}` : 'syncing');
      background = undefined;
      break;
    case 'disconnected':
      icon = '$(debug-disconnect)';
      detail = join(shorten(status.message) || 'disconnected', pending);
      background = status.health === 'ok' ? 'warning' : status.health;
      break;
    case 'idle':
      if (status.health === 'ok') {
        icon = '$(check)';
        detail = join(pods || shorten(status.message) || 'podloop', latest ? formatMs(latest.ms) : '');
        background = undefined;
      } else {
        icon = status.health === 'error' ? '$(error)' : '$(warning)';
        // Without a pod to name, the server's message is the most useful text.
        const subject = pods && status.targets.some((t) => t.state !== 'error') ? pods : '';
        detail = join(subject || shorten(status.message) || status.health, pending);
        background = status.health;
      }
      break;
  }

  const text = `${icon} ${escapeIcons(detail)}`;
  return {
    text,
    tooltip: renderTooltip(status, now),
    background,
    accessibilityLabel: `podloop ${status.health} ${status.state}: ${detail}`,
  };
}

/** `api-7d8f4`, or `api-7d8f4 +2` when a save lands in several pods. */
export function podsLabel(targets: TargetStatus[]): string {
  const pods: string[] = [];
  for (const target of targets) {
    if (target.pod !== '' && !pods.includes(target.pod)) {
      pods.push(target.pod);
    }
  }
  if (pods.length === 0) {
    return '';
  }
  return pods.length === 1 ? pods[0] : `${pods[0]} +${pods.length - 1}`;
}

/** The most recent batch over all targets: its time is what the user just waited for. */
export function latestSync(targets: TargetStatus[]): LastSync | undefined {
  let best: LastSync | undefined;
  let bestAt = -Infinity;
  for (const target of targets) {
    if (!target.lastSync) {
      continue;
    }
    const at = timestamp(target.lastSync.at) ?? -Infinity;
    if (best === undefined || at > bestAt) {
      best = target.lastSync;
      bestAt = at;
    }
  }
  return best;
}

export function formatMs(ms: number): string {
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  const units = ['KiB', 'MiB', 'GiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** Milliseconds since the epoch from an RFC 3339 string, epoch seconds or epoch milliseconds. */
export function timestamp(at: string | number): number | undefined {
  if (typeof at === 'number') {
    if (!Number.isFinite(at) || at <= 0) {
      return undefined;
    }
    // Seconds and milliseconds since 1970 differ by three orders of magnitude:
    // anything below 10^11 would be a millisecond date in early 1973.
    return at < 1e11 ? at * 1000 : at;
  }
  const parsed = Date.parse(at);
  return Number.isNaN(parsed) ? undefined : parsed;
}

export function formatAgo(at: string | number, now: Date): string {
  const ms = timestamp(at);
  if (ms === undefined) {
    return '';
  }
  const seconds = Math.max(0, Math.round((now.getTime() - ms) / 1000));
  if (seconds < 5) {
    return 'just now';
  }
  if (seconds < 90) {
    return `${seconds} s ago`;
  }
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) {
    return `${minutes} min ago`;
  }
  return `${Math.round(minutes / 60)} h ago`;
}

export function renderTooltip(status: PodloopStatus, now: Date): string {
  const lines: string[] = [];
  lines.push(`**podloop** — ${status.health}, ${status.state}`);
  if (status.message !== '') {
    lines.push('', escapeMarkdown(status.message));
  }
  if (status.pending > 0) {
    lines.push('', `${status.pending} changed file${status.pending === 1 ? '' : 's'} not yet delivered`);
  }
  lines.push('');
  if (status.targets.length === 0) {
    lines.push('No targets: no pod matches any mapping yet.');
  } else {
    lines.push('| mapping | pod | container | state | last sync | error |');
    lines.push('|---|---|---|---|---|---|');
    for (const target of status.targets) {
      const pod = target.namespace !== '' ? `${target.namespace}/${target.pod}` : target.pod;
      lines.push(
        `| ${cell(target.mapping)} | ${cell(pod)} | ${cell(target.container)} | ${cell(target.state)} | ${cell(
          describeLastSync(target.lastSync, now),
        )} | ${cell(target.error ?? '')} |`,
      );
    }
  }
  lines.push('', 'Click for actions: Sync all, Reload, Pause/Resume, Show status, Show logs, Restart server.');
  return lines.join('\n');
}

function describeLastSync(lastSync: LastSync | null | undefined, now: Date): string {
  if (!lastSync) {
    return '—';
  }
  const files = `${lastSync.files} file${lastSync.files === 1 ? '' : 's'}`;
  const ago = formatAgo(lastSync.at, now);
  return `${files}, ${formatBytes(lastSync.bytes)} in ${formatMs(lastSync.ms)}${ago ? `, ${ago}` : ''}`;
}

/** Escapes text from the server (pod names, error output) so it renders literally. */
export function escapeMarkdown(text: string): string {
  return text.replace(/[\\`*_{}[\]()#+\-.!|<>~$]/g, (ch) => `\\${ch}`);
}

function cell(text: string): string {
  // A table row must stay on one line.
  return escapeMarkdown(text).replace(/\r?\n/g, ' ');
}

function shorten(message: string): string {
  const oneLine = message.replace(/\s+/g, ' ').trim();
  return oneLine.length > MAX_MESSAGE_CHARS ? `${oneLine.slice(0, MAX_MESSAGE_CHARS - 1)}…` : oneLine;
}

function join(...parts: string[]): string {
  return parts.filter((part) => part !== '').join(' · ');
}

/** Pod names and server messages are data: `$(x)` in them must not render as an icon. */
export function escapeIcons(text: string): string {
  return text.replace(/\$\(/g, '\\$(');
}
