#!/usr/bin/env node
// A scripted stand-in for `podloop lsp`, for the test of the extension's own
// behaviour (commands, menu, settings, notifications). It records every
// message it receives, one JSON object per line, to $FAKE_PODLOOP_RECORD, and
// answers like the real server's documented protocol (docs/lsp-extensions.md).
// `podloop.reload` fails on purpose, to test how failures are shown.

import fs from 'node:fs';

const record = process.env.FAKE_PODLOOP_RECORD;
let state = 'idle';

function status() {
  return {
    health: 'ok',
    state,
    quiescent: true,
    message: '',
    pending: 0,
    targets: [
      {
        mapping: 'api',
        namespace: 'default',
        pod: 'api-7d8f4',
        container: 'api',
        state: 'synced',
        lastSync: { files: 1, bytes: 120, ms: 14, at: new Date().toISOString() },
        error: null,
      },
    ],
  };
}

function send(message) {
  const body = JSON.stringify({ jsonrpc: '2.0', ...message });
  process.stdout.write(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

function handle(message) {
  if (record) {
    fs.appendFileSync(record, `${JSON.stringify(message)}\n`);
  }
  const reply = (result) => send({ id: message.id, result });
  switch (message.method) {
    case 'initialize':
      return reply({
        capabilities: {
          textDocumentSync: { openClose: true, change: 0, save: { includeText: false } },
          executeCommandProvider: { commands: ['podloop.syncAll', 'podloop.reload', 'podloop.pause', 'podloop.resume', 'podloop.status'] },
        },
        serverInfo: { name: 'fake-podloop' },
      });
    case 'initialized':
      return send({ method: 'podloop/status', params: status() });
    case 'workspace/executeCommand':
      switch (message.params.command) {
        case 'podloop.syncAll':
          return reply({ filesSent: 3, filesDeleted: 0, targets: 1, failures: [] });
        case 'podloop.reload':
          return send({ id: message.id, error: { code: -32603, message: 'reload exited with 3: boom' } });
        case 'podloop.pause':
        case 'podloop.resume':
          state = message.params.command === 'podloop.pause' ? 'paused' : 'idle';
          reply(null);
          return send({ method: 'podloop/status', params: status() });
        default:
          return reply(status());
      }
    case 'shutdown':
      return reply(null);
    case 'exit':
      return process.exit(0);
    default:
      if (message.id !== undefined && message.method !== undefined) {
        reply(null);
      }
  }
}

let buffer = Buffer.alloc(0);
process.stdin.on('data', (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const headerEnd = buffer.indexOf('\r\n\r\n');
    if (headerEnd < 0) {
      return;
    }
    const length = Number(/Content-Length: *(\d+)/i.exec(buffer.subarray(0, headerEnd).toString())?.[1]);
    if (buffer.length < headerEnd + 4 + length) {
      return;
    }
    const body = buffer.subarray(headerEnd + 4, headerEnd + 4 + length).toString();
    buffer = buffer.subarray(headerEnd + 4 + length);
    handle(JSON.parse(body));
  }
});
process.stdin.on('end', () => process.exit(0));
