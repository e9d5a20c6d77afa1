// Where the `podloop` binary comes from: the setting, then a binary shipped
// inside the extension, then PATH. Pure apart from the injected file check,
// so every branch is unit-tested.

import * as path from 'path';

export interface BinaryLookup {
  /** `podloop.server.path`; empty or null means "not set". */
  configuredPath: string | null | undefined;
  extensionPath: string;
  /** The `PATH` environment variable of the extension host. */
  envPath: string | undefined;
  platform: NodeJS.Platform;
  arch: string;
  homeDir: string;
  /** First workspace folder: a relative setting is resolved against it. */
  workspaceFolder: string | undefined;
  isExecutableFile(candidate: string): boolean;
}

export type BinarySource = 'setting' | 'bundled' | 'path';

export type BinaryResult =
  | { kind: 'found'; path: string; source: BinarySource }
  /** The setting names a file that is not there: never fall back silently. */
  | { kind: 'bad-setting'; path: string }
  | { kind: 'not-found'; searched: string[] };

export function findServerBinary(lookup: BinaryLookup): BinaryResult {
  const paths = lookup.platform === 'win32' ? path.win32 : path.posix;
  const exe = lookup.platform === 'win32' ? 'podloop.exe' : 'podloop';

  const configured = lookup.configuredPath?.trim();
  if (configured) {
    const resolved = resolveSetting(configured, lookup, paths);
    return lookup.isExecutableFile(resolved)
      ? { kind: 'found', path: resolved, source: 'setting' }
      : { kind: 'bad-setting', path: resolved };
  }

  const searched: string[] = [];
  const bundled = [
    paths.join(lookup.extensionPath, 'server', `${lookup.platform}-${lookup.arch}`, exe),
    paths.join(lookup.extensionPath, 'server', exe),
  ];
  for (const candidate of bundled) {
    searched.push(candidate);
    if (lookup.isExecutableFile(candidate)) {
      return { kind: 'found', path: candidate, source: 'bundled' };
    }
  }

  const delimiter = lookup.platform === 'win32' ? ';' : ':';
  for (const dir of (lookup.envPath ?? '').split(delimiter)) {
    // An empty PATH entry means the current directory: never run a binary
    // from whatever folder the editor happened to start in.
    if (dir === '' || !paths.isAbsolute(dir)) {
      continue;
    }
    const candidate = paths.join(dir, exe);
    searched.push(candidate);
    if (lookup.isExecutableFile(candidate)) {
      return { kind: 'found', path: candidate, source: 'path' };
    }
  }
  return { kind: 'not-found', searched };
}

function resolveSetting(configured: string, lookup: BinaryLookup, paths: typeof path.posix): string {
  let value = configured;
  if (value === '~' || value.startsWith('~/') || value.startsWith('~\\')) {
    value = paths.join(lookup.homeDir, value.slice(1));
  }
  if (!paths.isAbsolute(value) && lookup.workspaceFolder !== undefined) {
    value = paths.join(lookup.workspaceFolder, value);
  }
  return paths.normalize(value);
}

export const INSTALL_HINT =
  'Install it with `cargo install --locked --path server` from a podloop checkout (or download a release), ' +
  'then put it on PATH or set `podloop.server.path`.';

export function describeMissingBinary(result: Exclude<BinaryResult, { kind: 'found' }>): string {
  if (result.kind === 'bad-setting') {
    return `podloop: \`podloop.server.path\` is set to ${result.path}, which is not an executable file: fix the setting or clear it to use the podloop on PATH.`;
  }
  return `podloop: the \`podloop\` language server was not found (looked in the extension and on PATH). ${INSTALL_HINT}`;
}
