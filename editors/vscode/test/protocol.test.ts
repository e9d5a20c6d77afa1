import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { describeSyncAll, parseStatus } from '../src/protocol';

describe('parseStatus', () => {
  it('reads the documented payload', () => {
    const status = parseStatus({
      health: 'ok',
      state: 'idle',
      quiescent: true,
      message: 'synced',
      pending: 0,
      targets: [
        {
          mapping: 'api',
          namespace: 'default',
          pod: 'api-1',
          container: 'api',
          state: 'synced',
          lastSync: { files: 2, bytes: 10, ms: 7, at: '2025-11-24T20:00:00Z' },
          error: null,
        },
      ],
    });
    assert.deepEqual(status?.targets[0].lastSync, { files: 2, bytes: 10, ms: 7, at: '2025-11-24T20:00:00Z' });
    assert.equal(status?.quiescent, true);
  });

  it('rejects payloads without a known health or state', () => {
    assert.equal(parseStatus(null), undefined);
    assert.equal(parseStatus('ok'), undefined);
    assert.equal(parseStatus({ health: 'fine', state: 'idle' }), undefined);
    assert.equal(parseStatus({ health: 'ok', state: 'sleeping' }), undefined);
  });

  it('tolerates missing optional parts', () => {
    const status = parseStatus({ health: 'error', state: 'disconnected', targets: [null, { pod: 'p', state: '??', error: '' }] });
    assert.deepEqual(status, {
      health: 'error',
      state: 'disconnected',
      quiescent: false,
      message: '',
      pending: 0,
      targets: [{ mapping: '', namespace: '', pod: 'p', container: '', state: 'waiting', lastSync: null, error: null }],
    });
  });
});

describe('describeSyncAll', () => {
  it('summarises the report', () => {
    assert.equal(describeSyncAll({ filesSent: 3, filesDeleted: 0, targets: 1, failures: [] }), 'sent 3 files to 1 target');
    assert.equal(
      describeSyncAll({ filesSent: 1, filesDeleted: 2, targets: 2, failures: ['api-1: tar exited 2'] }),
      'sent 1 file, deleted 2 to 2 targets; 1 failure',
    );
  });

  it('falls back when the shape is unknown', () => {
    assert.equal(describeSyncAll(null), 'sync all done');
    assert.equal(describeSyncAll({ files: 3 }), 'sync all done');
  });
});
