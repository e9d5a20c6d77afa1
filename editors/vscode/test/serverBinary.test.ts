import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BinaryLookup, describeMissingBinary, findServerBinary } from '../src/serverBinary';

function lookup(executables: string[], overrides: Partial<BinaryLookup> = {}): BinaryLookup & { checked: string[] } {
  const checked: string[] = [];
  return {
    configuredPath: null,
    extensionPath: '/ext',
    envPath: '/usr/local/bin:/usr/bin',
    platform: 'linux',
    arch: 'x64',
    homeDir: '/home/dev',
    workspaceFolder: '/work/app',
    isExecutableFile: (candidate) => {
      checked.push(candidate);
      return executables.includes(candidate);
    },
    checked,
    ...overrides,
  };
}

describe('findServerBinary', () => {
  it('prefers the setting over everything else', () => {
    const result = findServerBinary(lookup(['/opt/podloop', '/ext/server/podloop', '/usr/bin/podloop'], { configuredPath: '/opt/podloop' }));
    assert.deepEqual(result, { kind: 'found', path: '/opt/podloop', source: 'setting' });
  });

  it('expands ~ and resolves a relative setting against the workspace', () => {
    assert.deepEqual(findServerBinary(lookup(['/home/dev/bin/podloop'], { configuredPath: '~/bin/podloop' })), {
      kind: 'found',
      path: '/home/dev/bin/podloop',
      source: 'setting',
    });
    assert.deepEqual(findServerBinary(lookup(['/work/app/target/debug/podloop'], { configuredPath: './target/debug/podloop' })), {
      kind: 'found',
      path: '/work/app/target/debug/podloop',
      source: 'setting',
    });
  });

  it('does not fall back when the setting points nowhere', () => {
    const result = findServerBinary(lookup(['/usr/bin/podloop'], { configuredPath: '/typo/podloop' }));
    assert.deepEqual(result, { kind: 'bad-setting', path: '/typo/podloop' });
    assert.match(describeMissingBinary(result as never), /podloop\.server\.path.*\/typo\/podloop.*not an executable/);
  });

  it('treats a blank setting as unset', () => {
    const result = findServerBinary(lookup(['/usr/bin/podloop'], { configuredPath: '   ' }));
    assert.deepEqual(result, { kind: 'found', path: '/usr/bin/podloop', source: 'path' });
  });

  it('uses the binary shipped in the extension before PATH, platform-specific first', () => {
    assert.deepEqual(findServerBinary(lookup(['/ext/server/linux-x64/podloop', '/ext/server/podloop', '/usr/bin/podloop'])), {
      kind: 'found',
      path: '/ext/server/linux-x64/podloop',
      source: 'bundled',
    });
    assert.deepEqual(findServerBinary(lookup(['/ext/server/podloop', '/usr/bin/podloop'])), {
      kind: 'found',
      path: '/ext/server/podloop',
      source: 'bundled',
    });
  });

  it('searches PATH in order and skips relative and empty entries', () => {
    const probe = lookup(['/usr/bin/podloop', 'bin/podloop', '/usr/local/bin/podloop'], { envPath: ':bin:/usr/bin:/usr/local/bin' });
    assert.deepEqual(findServerBinary(probe), { kind: 'found', path: '/usr/bin/podloop', source: 'path' });
    assert.ok(!probe.checked.includes('bin/podloop'));
    assert.ok(!probe.checked.includes('podloop'));
  });

  it('reports everything it searched when nothing is found', () => {
    const result = findServerBinary(lookup([]));
    assert.deepEqual(result, {
      kind: 'not-found',
      searched: ['/ext/server/linux-x64/podloop', '/ext/server/podloop', '/usr/local/bin/podloop', '/usr/bin/podloop'],
    });
    assert.match(describeMissingBinary(result as never), /not found.*cargo install/);
  });

  it('handles an unset PATH', () => {
    assert.equal(findServerBinary(lookup([], { envPath: undefined })).kind, 'not-found');
  });

  it('uses Windows separators and .exe on win32', () => {
    const result = findServerBinary(
      lookup(['C:\\tools\\podloop.exe'], { platform: 'win32', extensionPath: 'C:\\ext', envPath: 'C:\\Windows;C:\\tools' }),
    );
    assert.deepEqual(result, { kind: 'found', path: 'C:\\tools\\podloop.exe', source: 'path' });
  });
});
