import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { menuItems } from '../src/menu';

describe('menuItems', () => {
  it('offers Pause while syncing is on and Resume while paused', () => {
    const running = menuItems({ health: 'ok', state: 'idle', quiescent: true, message: '', pending: 0, targets: [] });
    assert.deepEqual(
      running.map((item) => item.action),
      ['syncAll', 'reload', 'pause', 'showStatus', 'showLogs', 'restartServer'],
    );
    const paused = menuItems({ health: 'ok', state: 'paused', quiescent: false, message: '', pending: 1, targets: [] });
    assert.ok(paused.some((item) => item.action === 'resume'));
    assert.ok(!paused.some((item) => item.action === 'pause'));
  });

  it('works before the first status arrives', () => {
    assert.equal(menuItems(undefined).length, 6);
  });
});
