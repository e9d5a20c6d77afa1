// End-to-end test of the extension's own behaviour in a real VS Code
// (code-server + Playwright + Chromium), against a scripted server
// (fake-podloop.mjs) that records what the extension sends:
//
// - `podloop.server.path` pointing nowhere ⇒ an error with "How to install",
//   "Set path" and "Show logs", and "server stopped" in the status bar;
// - fixing the setting restarts the server; the settings arrive as
//   initializationOptions;
// - the status bar menu runs Sync all (workspace/executeCommand) and
//   Pause, after which the menu offers Resume;
// - a failing command shows an error notification whose "Show logs" opens
//   the podloop output channel;
// - changing `podloop.namespace` sends workspace/didChangeConfiguration,
//   keeping the pause state.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  checkPrerequisites,
  log,
  mainProgram,
  notification,
  runCommand,
  statusItem,
  waitFor,
  waitForStatus,
} from './harness.mjs';

const fakeServer = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-podloop.mjs');

function recorded(file) {
  if (!fs.existsSync(file)) {
    return [];
  }
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line));
}

async function pickFromMenu(page, label) {
  // Out of the way of the item's hover, which would take the click.
  await page.mouse.move(640, 300);
  await page.keyboard.press('Escape');
  await statusItem(page).click();
  await page.locator('.quick-input-widget').waitFor({ state: 'visible', timeout: 10_000 });
  const row = page.locator('.quick-input-list .monaco-list-row', { hasText: label }).first();
  await row.waitFor({ timeout: 10_000 });
  const rows = await page.locator('.quick-input-list .monaco-list-row').allInnerTexts();
  await row.click();
  return rows;
}

await mainProgram('commands', async (run) => {
  checkPrerequisites(['codeServer', 'chromium']);
  const workspace = path.join(run.root, 'workspace');
  fs.mkdirSync(workspace);
  fs.writeFileSync(path.join(workspace, 'podloop.toml'), '[[sync]]\nlocal = "."\nremote = "/app"\nselector = "app=api"\n');
  const record = path.join(run.root, 'fake-podloop.jsonl');
  const missing = path.join(run.root, 'no-such-dir', 'podloop');
  const page = await run.startCodeServer({
    workspace,
    settings: { 'podloop.context': 'kind-dev', 'podloop.logLevel': 'debug' },
    machineSettings: { 'podloop.server.path': missing },
    env: { FAKE_PODLOOP_RECORD: record },
  });

  // 1. No binary: a visible error that says what to do, and a red status bar.
  const missingToast = notification(page, 'podloop.server.path');
  await missingToast.waitFor({ timeout: 60_000 });
  const buttons = await missingToast.locator('.monaco-button').allInnerTexts();
  for (const expected of ['How to install', 'Set path', 'Show logs']) {
    if (!buttons.includes(expected)) {
      throw new Error(`the missing-binary error lacks a "${expected}" button: ${JSON.stringify(buttons)}`);
    }
  }
  await waitForStatus(page, 'the stopped server', (label) => label.startsWith('podloop: server stopped'));
  if (!/\berror-kind\b/.test((await statusItem(page).getAttribute('class')) ?? '')) {
    throw new Error('the stopped server is not shown with the error background');
  }
  log('missing binary: error notification with install help, status bar "server stopped"');

  // 2. Fixing the setting restarts the server with the settings as initializationOptions.
  await run.updateSettings({ 'podloop.server.path': fakeServer }, 'machine');
  await waitForStatus(page, 'the scripted server', (label) => label === 'podloop ok idle: api-7d8f4 · 14 ms');
  const initialize = recorded(record).find((message) => message.method === 'initialize');
  const options = initialize?.params?.initializationOptions;
  if (options?.context !== 'kind-dev' || options?.logLevel !== 'debug' || options?.namespace !== null) {
    throw new Error(`unexpected initializationOptions: ${JSON.stringify(options)}`);
  }
  log(`server started after the setting changed; initializationOptions ${JSON.stringify(options)}`);

  // 3. The menu runs Sync all through workspace/executeCommand.
  const menu = await pickFromMenu(page, 'Sync all');
  const expectedMenu = ['Sync all', 'Reload', 'Pause', 'Show status', 'Show logs', 'Restart server'];
  if (!expectedMenu.every((entry, index) => menu[index]?.includes(entry))) {
    throw new Error(`unexpected menu: ${JSON.stringify(menu)}`);
  }
  await waitFor('workspace/executeCommand podloop.syncAll', () =>
    recorded(record).some((m) => m.method === 'workspace/executeCommand' && m.params.command === 'podloop.syncAll'),
  );
  await page.locator('#workbench\\.parts\\.statusbar', { hasText: 'sent 3 files to 1 target' }).waitFor({ timeout: 10_000 });
  log('menu → Sync all reached the server; the result shows in the status bar');

  // 4. Pause from the menu; the server's paused status shows, and the menu offers Resume.
  await pickFromMenu(page, 'Pause');
  await waitForStatus(page, 'the paused state', (label) => label === 'podloop ok paused: paused');
  await statusItem(page).click();
  await page.locator('.quick-input-list .monaco-list-row', { hasText: 'Resume' }).first().waitFor({ timeout: 10_000 });
  await page.keyboard.press('Escape');
  log('menu → Pause: status bar shows paused, menu offers Resume');

  // 5. A failing command is an error notification whose "Show logs" opens the output channel.
  await runCommand(page, 'podloop: Run reload in every target');
  const failure = notification(page, 'run reload failed');
  await failure.waitFor({ timeout: 15_000 });
  if (!(await failure.innerText()).includes('reload exited with 3: boom')) {
    throw new Error(`the failure notification does not carry the server's error: ${await failure.innerText()}`);
  }
  await failure.locator('.monaco-button', { hasText: 'Show logs' }).click();
  await page.locator('.part.panel .monaco-editor', { hasText: 'starting' }).first().waitFor({ timeout: 15_000 });
  log('failing command: error notification; Show logs opened the podloop output');

  // 6. A live setting goes to the server without a restart, with the pause state.
  await run.updateSettings({ 'podloop.namespace': 'team-a' });
  const change = await waitFor('workspace/didChangeConfiguration', () =>
    recorded(record).find((m) => m.method === 'workspace/didChangeConfiguration' && m.params.settings?.namespace === 'team-a'),
  );
  const settings = change.params.settings;
  if (settings.context !== 'kind-dev' || settings.paused !== true) {
    throw new Error(`unexpected didChangeConfiguration settings: ${JSON.stringify(settings)}`);
  }
  if (recorded(record).filter((m) => m.method === 'initialize').length !== 1) {
    throw new Error('a live setting restarted the server');
  }
  log(`namespace change sent as didChangeConfiguration ${JSON.stringify(settings)}`);
});
