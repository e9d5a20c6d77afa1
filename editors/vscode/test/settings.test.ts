import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { serverOptions } from '../src/settings';

function getter(values: Record<string, unknown>): (key: string) => unknown {
  return (key) => values[key];
}

describe('serverOptions', () => {
  it('passes context, namespace and log level through', () => {
    assert.deepEqual(serverOptions(getter({ context: 'dev', namespace: 'team-a', logLevel: 'debug' })), {
      context: 'dev',
      namespace: 'team-a',
      logLevel: 'debug',
    });
  });

  it('turns cleared fields into "no override"', () => {
    assert.deepEqual(serverOptions(getter({ context: '', namespace: '  ', logLevel: undefined })), {
      context: null,
      namespace: null,
      logLevel: 'info',
    });
  });

  it('passes a tracing filter through and defaults a blank log level', () => {
    assert.equal(serverOptions(getter({ logLevel: 'podloop=debug,kube=warn' })).logLevel, 'podloop=debug,kube=warn');
    assert.equal(serverOptions(getter({ logLevel: ' ' })).logLevel, 'info');
    assert.equal(serverOptions(getter({ logLevel: 3 })).logLevel, 'info');
  });

  it('carries the pause state only when known', () => {
    assert.equal(serverOptions(getter({}), true).paused, true);
    assert.equal(serverOptions(getter({}), false).paused, false);
    assert.ok(!('paused' in serverOptions(getter({}))));
  });
});
