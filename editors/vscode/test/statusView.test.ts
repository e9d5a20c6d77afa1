import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { PodloopStatus, TargetStatus } from '../src/protocol';
import {
  escapeIcons,
  escapeMarkdown,
  formatAgo,
  formatBytes,
  formatMs,
  latestSync,
  podsLabel,
  renderStatus,
  renderTooltip,
  timestamp,
} from '../src/statusView';

const NOW = new Date('2025-11-24T20:00:00Z');

function target(overrides: Partial<TargetStatus> = {}): TargetStatus {
  return {
    mapping: 'api',
    namespace: 'default',
    pod: 'api-7d8f4',
    container: 'api',
    state: 'synced',
    lastSync: { files: 1, bytes: 120, ms: 14, at: '2025-11-24T19:59:58Z' },
    error: null,
    ...overrides,
  };
}

function status(overrides: Partial<PodloopStatus> = {}): PodloopStatus {
  return { health: 'ok', state: 'idle', quiescent: true, message: '', pending: 0, targets: [target()], ...overrides };
}

describe('renderStatus', () => {
  it('shows the pod and the last batch time after a sync', () => {
    const view = renderStatus({ kind: 'running', status: status() }, NOW);
    assert.equal(view.text, '$(check) api-7d8f4 · 14 ms');
    assert.equal(view.background, undefined);
    assert.equal(view.accessibilityLabel, 'podloop ok idle: api-7d8f4 · 14 ms');
  });

  it('spins while syncing and counts pending files', () => {
    const view = renderStatus({ kind: 'running', status: status({ state: 'syncing', quiescent: false, pending: 3 }) }, NOW);
    assert.equal(view.text, '$(sync~spin) api-7d8f4 · syncing 3');
  });

  it('uses the most recent batch over several pods', () => {
    const targets = [
      target({ pod: 'api-1', lastSync: { files: 2, bytes: 1, ms: 90, at: '2025-11-24T19:00:00Z' } }),
      target({ pod: 'api-2', lastSync: { files: 2, bytes: 1, ms: 21, at: '2025-11-24T19:59:00Z' } }),
      target({ pod: 'api-3', lastSync: null }),
    ];
    assert.equal(renderStatus({ kind: 'running', status: status({ targets }) }, NOW).text, '$(check) api-1 +2 · 21 ms');
  });

  it('names the problem in the error colour when no pod is left', () => {
    const view = renderStatus(
      {
        kind: 'running',
        status: status({ health: 'error', message: 'no pods match app=api in default', targets: [], pending: 1 }),
      },
      NOW,
    );
    assert.equal(view.text, '$(error) no pods match app=api in default · 1 pending');
    assert.equal(view.background, 'error');
  });

  it('shows the error message, not a healthy-looking pod name, when every target failed', () => {
    const view = renderStatus(
      {
        kind: 'running',
        status: status({
          health: 'error',
          message: 'pod api-7d8f4 is gone',
          targets: [target({ state: 'error', error: 'pod deleted' })],
        }),
      },
      NOW,
    );
    assert.equal(view.text, '$(error) pod api-7d8f4 is gone');
    assert.equal(view.background, 'error');
  });

  it('keeps naming the pods in a warning when some targets are fine', () => {
    const targets = [target({ pod: 'api-1' }), target({ pod: 'api-2', state: 'error', error: 'tar: permission denied' })];
    const view = renderStatus({ kind: 'running', status: status({ health: 'warning', message: 'x', targets }) }, NOW);
    assert.equal(view.text, '$(warning) api-1 +1');
    assert.equal(view.background, 'warning');
  });

  it('says paused and how much waits', () => {
    const view = renderStatus({ kind: 'running', status: status({ state: 'paused', pending: 2, quiescent: false }) }, NOW);
    assert.equal(view.text, '$(debug-pause) paused · 2 pending');
    assert.equal(view.background, undefined);
  });

  it('shows a disconnected cluster in warning colour at least', () => {
    const view = renderStatus(
      { kind: 'running', status: status({ state: 'disconnected', health: 'ok', message: 'cluster unreachable' }) },
      NOW,
    );
    assert.equal(view.text, '$(debug-disconnect) cluster unreachable');
    assert.equal(view.background, 'warning');
  });

  it('shortens a long message to keep the status bar usable', () => {
    const message = `no pods match ${'x'.repeat(200)}`;
    const view = renderStatus({ kind: 'running', status: status({ health: 'error', message, targets: [] }) }, NOW);
    assert.ok(view.text.length < 60, view.text);
    assert.ok(view.text.endsWith('…'));
  });

  it('does not let a pod name render as an icon', () => {
    const view = renderStatus({ kind: 'running', status: status({ targets: [target({ pod: '$(bug)evil' })] }) }, NOW);
    assert.equal(view.text, '$(check) \\$(bug)evil · 14 ms');
  });

  it('covers the client phases', () => {
    assert.equal(renderStatus({ kind: 'starting' }).text, '$(loading~spin) podloop');
    assert.equal(renderStatus({ kind: 'running' }).accessibilityLabel, 'podloop: connecting');
    const stopped = renderStatus({ kind: 'stopped', reason: 'binary not found' });
    assert.equal(stopped.text, '$(error) podloop: server stopped');
    assert.equal(stopped.background, 'error');
    assert.match(stopped.tooltip, /binary not found/);
  });
});

describe('renderTooltip', () => {
  it('lists every target with its state, last sync and error', () => {
    const tooltip = renderTooltip(
      status({
        health: 'warning',
        message: 'one target failed',
        pending: 1,
        targets: [
          target(),
          target({ mapping: 'web', pod: 'web-1', container: 'nginx', state: 'error', lastSync: null, error: 'exit 2:\ntar: /app: Permission denied' }),
        ],
      }),
      NOW,
    );
    const rows = tooltip.split('\n').filter((line) => line.startsWith('| '));
    assert.equal(rows.length, 3, tooltip);
    assert.match(rows[1], /^\| api \| default\/api\\-7d8f4 \| api \| synced \| 1 file, 120 B in 14 ms, just now \| {2}\|$/);
    assert.match(rows[2], /web\\-1 \| nginx \| error \| — \| exit 2: tar: \/app: Permission denied \|$/);
    assert.match(tooltip, /1 changed file not yet delivered/);
    assert.match(tooltip, /one target failed/);
  });

  it('says when there is no target', () => {
    assert.match(renderTooltip(status({ targets: [] }), NOW), /No targets/);
  });

  it('escapes table pipes and markdown from the server', () => {
    const tooltip = renderTooltip(status({ targets: [target({ error: 'a | b *c* [x](http://e)' })] }), NOW);
    assert.ok(tooltip.includes('a \\| b \\*c\\* \\[x\\]\\(http://e\\)'), tooltip);
  });
});

describe('helpers', () => {
  it('labels pods without duplicates', () => {
    assert.equal(podsLabel([]), '');
    assert.equal(podsLabel([target(), target({ container: 'sidecar' })]), 'api-7d8f4');
    assert.equal(podsLabel([target({ pod: 'a' }), target({ pod: 'b' }), target({ pod: 'c' })]), 'a +2');
  });

  it('reads timestamps in every shape the server may send', () => {
    const ms = Date.parse('2025-11-24T19:59:58Z');
    assert.equal(timestamp('2025-11-24T19:59:58Z'), ms);
    assert.equal(timestamp(ms), ms);
    assert.equal(timestamp(ms / 1000), ms);
    assert.equal(timestamp('yesterday-ish'), undefined);
    assert.equal(timestamp(0), undefined);
  });

  it('prefers a dated sync over an undated one', () => {
    const dated = target({ lastSync: { files: 1, bytes: 1, ms: 5, at: '2025-11-24T19:00:00Z' } });
    const undated = target({ lastSync: { files: 1, bytes: 1, ms: 99, at: 'garbage' } });
    assert.equal(latestSync([undated, dated])?.ms, 5);
    assert.equal(latestSync([]), undefined);
  });

  it('formats durations, sizes and ages', () => {
    assert.equal(formatMs(14.4), '14 ms');
    assert.equal(formatMs(1234), '1.23 s');
    assert.equal(formatMs(65_000), '65.0 s');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(5 * 1024 * 1024), '5.0 MiB');
    assert.equal(formatAgo('2025-11-24T19:59:30Z', NOW), '30 s ago');
    assert.equal(formatAgo('2025-11-24T19:30:00Z', NOW), '30 min ago');
    assert.equal(formatAgo('2025-11-24T20:00:02Z', NOW), 'just now');
  });

  it('escapes', () => {
    assert.equal(escapeMarkdown('a_b|c'), 'a\\_b\\|c');
    assert.equal(escapeIcons('x $(bug) y'), 'x \\$(bug) y');
  });
});
