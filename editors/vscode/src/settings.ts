// The settings the server understands, as sent in initializationOptions and
// workspace/didChangeConfiguration (see docs/lsp-extensions.md).

/** `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `podloop=debug,kube=warn`. */
export type LogLevel = string;

export interface ServerOptions {
  context: string | null;
  namespace: string | null;
  logLevel: LogLevel;
  /** Carried over a server restart, so "Restart server" does not silently resume syncing. */
  paused?: boolean;
}

/** Reads `podloop.*` through a getter so it works with VS Code's configuration or a plain object. */
export function serverOptions(get: (key: string) => unknown, paused?: boolean): ServerOptions {
  const options: ServerOptions = {
    // An empty string is what the settings UI leaves after clearing a field:
    // it means "no override", not "the context named ''".
    context: nonEmpty(get('context')),
    namespace: nonEmpty(get('namespace')),
    // The server validates filters and reports a bad one; the extension only fills the default.
    logLevel: nonEmpty(get('logLevel')) ?? 'info',
  };
  if (paused !== undefined) {
    options.paused = paused;
  }
  return options;
}

/** Settings whose change needs a new server process rather than a notification. */
export const RESTART_SETTINGS = ['podloop.server.path'] as const;
/** Settings forwarded with workspace/didChangeConfiguration. */
export const LIVE_SETTINGS = ['podloop.context', 'podloop.namespace', 'podloop.logLevel'] as const;

function nonEmpty(value: unknown): string | null {
  return typeof value === 'string' && value.trim() !== '' ? value.trim() : null;
}
