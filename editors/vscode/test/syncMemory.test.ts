import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { PodloopStatus, TargetStatus } from '../src/protocol';
import { LastSyncMemory } from '../src/syncMemory';

function target(pod: string, lastSync: TargetStatus['lastSync']): TargetStatus {
  return { mapping: 'api', namespace: 'default', pod, container: 'api', state: 'synced', lastSync, error: null };
}

function status(...targets: TargetStatus[]): PodloopStatus {
  return { health: 'ok', state: 'idle', quiescent: true, message: '', pending: 0, targets };
}

const real = { files: 1, bytes: 63, ms: 20, at: '2025-11-24T21:08:26.032Z' };
const noOp = { files: 0, bytes: 0, ms: 0, at: '2025-11-24T21:08:26.100Z' };

describe('LastSyncMemory', () => {
  it('keeps the last real batch when a no-op check follows it', () => {
    const memory = new LastSyncMemory();
    memory.apply(status(target('api-1', real)));
    assert.deepEqual(memory.apply(status(target('api-1', noOp))).targets[0].lastSync, real);
  });

  it('passes a no-op through when nothing real is known', () => {
    const memory = new LastSyncMemory();
    assert.deepEqual(memory.apply(status(target('api-1', noOp))).targets[0].lastSync, noOp);
  });

  it('takes a newer real batch, and a delete-only batch is real', () => {
    const memory = new LastSyncMemory();
    memory.apply(status(target('api-1', real)));
    const deleteOnly = { files: 0, bytes: 0, ms: 9, at: '2025-11-24T21:09:00Z' };
    assert.deepEqual(memory.apply(status(target('api-1', deleteOnly))).targets[0].lastSync, deleteOnly);
  });

  it('does not carry a batch over to a replacement pod', () => {
    const memory = new LastSyncMemory();
    memory.apply(status(target('api-1', real)));
    memory.apply(status(target('api-2', null)));
    assert.deepEqual(memory.apply(status(target('api-1', noOp))).targets[0].lastSync, noOp);
  });
});
