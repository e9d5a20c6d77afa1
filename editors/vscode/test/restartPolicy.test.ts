import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CrashBudget } from '../src/restartPolicy';

describe('CrashBudget', () => {
  it('gives up after too many crashes in the window, and forgets old ones', () => {
    let now = 0;
    const budget = new CrashBudget(2, 1000, () => now);
    assert.equal(budget.recordCrash(), 'restart');
    now = 100;
    assert.equal(budget.recordCrash(), 'restart');
    now = 200;
    assert.equal(budget.recordCrash(), 'give-up');
    now = 1150;
    // The crashes at 0 and 100 are older than the window now.
    assert.equal(budget.recordCrash(), 'restart');
  });

  it('starts afresh after reset', () => {
    const budget = new CrashBudget(1, 1000, () => 0);
    budget.recordCrash();
    assert.equal(budget.recordCrash(), 'give-up');
    budget.reset();
    assert.equal(budget.recordCrash(), 'restart');
  });
});
