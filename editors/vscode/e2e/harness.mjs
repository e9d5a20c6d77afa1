// Shared pieces of the end-to-end tests: processes stopped by PID, waits that
// poll a condition with a deadline, code-server with the packaged extension,
// and Chromium through Playwright.

import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

export const execFileAsync = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
export const extensionDir = path.resolve(here, '..');
const repo = path.resolve(extensionDir, '../..');
const targetDir = path.resolve(repo, process.env.CARGO_TARGET_DIR ?? 'target');

export const bins = {
  podloop: process.env.PODLOOP_BIN ?? path.join(targetDir, 'debug', 'podloop'),
  kubesim: process.env.KUBESIM_BIN ?? path.join(targetDir, 'debug', 'kubesim'),
  codeServer:
    process.env.CODE_SERVER_BIN ??
    path.join(os.homedir(), '.cache', 'podloop', 'code-server-4.100.3', 'node_modules', '.bin', 'code-server'),
  chromium: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
  kubectl: process.env.KUBECTL_BIN ?? '/usr/bin/kubectl',
};
export const vsix = path.join(extensionDir, 'podloop.vsix');
/**
 * Where the screenshots go: the README's `images/` only when asked
 * (PODLOOP_UPDATE_SCREENSHOTS=1), so that an ordinary run, in CI or not,
 * leaves the checkout clean; otherwise `out/screenshots/` (ignored by git).
 */
export const updateScreenshots = process.env.PODLOOP_UPDATE_SCREENSHOTS === '1';
export const screenshotsDir = updateScreenshots
  ? path.join(extensionDir, 'images')
  : path.join(extensionDir, 'out', 'screenshots');

export function log(message) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 23)}] ${message}`);
}

/** Polls `probe` until it returns something other than undefined/false/null, or throws at the deadline. */
export async function waitFor(description, probe, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false && value !== null) {
        return value;
      }
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

export function checkPrerequisites(names) {
  const missing = names.filter((name) => !fs.existsSync(bins[name])).map((name) => `${name} (${bins[name]})`);
  if (!fs.existsSync(vsix)) {
    missing.push(`the packaged extension (${vsix}): run \`npm run package\``);
  }
  if (missing.length > 0) {
    throw new Error(
      `missing: ${missing.join(', ')}. Run scripts/install-vscode-test-deps.sh and \`cargo build -p podloop -p kubesim\`, ` +
        'or point PODLOOP_BIN, KUBESIM_BIN, CODE_SERVER_BIN, CHROMIUM_BIN, KUBECTL_BIN at them.',
    );
  }
}

/** One test run: a temporary folder, the processes it started, and their logs. */
export class Run {
  constructor(name) {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), `podloop-vscode-${name}-`));
    this.children = [];
    log(`working in ${this.root}`);
  }

  /** Starts a process in its own process group, so it and its children stop together. */
  start(name, command, args, options = {}) {
    const out = fs.openSync(path.join(this.root, `${name}.log`), 'a');
    const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const entry = { name, child, exited: false };
    child.on('exit', () => {
      entry.exited = true;
    });
    this.children.push(entry);
    log(`started ${name} (pid ${child.pid})`);
    return entry;
  }

  async stopAll() {
    for (const entry of this.children.reverse()) {
      if (entry.exited) {
        continue;
      }
      try {
        process.kill(-entry.child.pid, 'SIGTERM');
      } catch {
        continue;
      }
      try {
        await waitFor(`${entry.name} to exit`, () => entry.exited, { timeoutMs: 10_000 });
      } catch {
        try {
          process.kill(-entry.child.pid, 'SIGKILL');
        } catch {
          // Gone between the check and the kill.
        }
      }
    }
    this.children = [];
  }

  /** Installs the .vsix into an isolated code-server and starts it on `workspace`. */
  /**
   * `settings` go to the user settings; `machineSettings` to the remote
   * machine's (code-server's extension host is "remote"), which is the only
   * place VS Code reads machine-scoped settings such as `podloop.server.path`
   * from once the window runs.
   */
  async startCodeServer({ workspace, settings = {}, machineSettings = {}, env = {} }) {
    const userDataDir = path.join(this.root, 'user-data');
    const extensionsDir = path.join(this.root, 'extensions');
    fs.mkdirSync(path.join(userDataDir, 'User'), { recursive: true });
    fs.mkdirSync(path.join(userDataDir, 'Machine'), { recursive: true });
    this.settingsFiles = {
      user: { path: path.join(userDataDir, 'User', 'settings.json'), command: 'Preferences: Open User Settings (JSON)' },
      machine: { path: path.join(userDataDir, 'Machine', 'settings.json'), command: 'Preferences: Open Remote Settings (JSON)' },
    };
    this.settingsFiles.machine.values = { ...machineSettings };
    this.settingsFiles.user.values = {
      'workbench.startupEditor': 'none',
      'workbench.colorTheme': 'Default Dark Modern',
      'security.workspace.trust.enabled': false,
      'extensions.autoUpdate': false,
      'extensions.autoCheckUpdates': false,
      'update.mode': 'none',
      'telemetry.telemetryLevel': 'off',
      'workbench.tips.enabled': false,
      'workbench.enableExperiments': false,
      // Typed text must reach the disk exactly as typed.
      'editor.autoIndent': 'none',
      'editor.autoClosingBrackets': 'never',
      'editor.autoClosingQuotes': 'never',
      'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
      'editor.suggestOnTriggerCharacters': false,
      'editor.formatOnSave': false,
      'files.autoSave': 'off',
      'files.insertFinalNewline': false,
      ...settings,
    };
    for (const file of Object.values(this.settingsFiles)) {
      fs.writeFileSync(file.path, JSON.stringify(file.values, null, 2));
    }
    const port = await freePort();
    const config = path.join(this.root, 'code-server.yaml');
    fs.writeFileSync(config, `bind-addr: 127.0.0.1:${port}\nauth: none\ncert: false\n`);
    const common = ['--config', config, '--user-data-dir', userDataDir, '--extensions-dir', extensionsDir];

    const { stdout } = await execFileAsync(bins.codeServer, [...common, '--install-extension', vsix], { timeout: 120_000 });
    if (!/successfully installed/i.test(stdout)) {
      throw new Error(`installing ${vsix} into code-server did not succeed:\n${stdout}`);
    }
    log('extension installed into code-server');
    this.start(
      'code-server',
      bins.codeServer,
      [...common, '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', workspace],
      { env: { ...process.env, ...env } },
    );
    const url = `http://127.0.0.1:${port}`;
    await waitFor('code-server /healthz', async () => (await fetch(`${url}/healthz`)).ok);
    log(`code-server answers on ${url}`);

    this.browser = await chromium.launchPersistentContext(path.join(this.root, 'chromium'), {
      executablePath: bins.chromium,
      headless: true,
      viewport: { width: 1280, height: 760 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const page = this.browser.pages()[0] ?? (await this.browser.newPage());
    await page.goto(`${url}/?folder=${encodeURIComponent(workspace)}`);
    await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
    log('workbench loaded');
    this.page = page;
    return page;
  }

  /**
   * Changes settings the way a user does: in the settings.json editor.
   * (Writing the file behind code-server's back is not noticed reliably.)
   * `scope` is 'user' or 'machine' (the remote settings).
   */
  async updateSettings(changes, scope = 'user') {
    const file = this.settingsFiles[scope];
    Object.assign(file.values, changes);
    const page = this.page;
    await runCommand(page, file.command);
    await page.locator('.tab.active', { hasText: 'settings.json' }).waitFor({ timeout: 15_000 });
    await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+A');
    // One line: a newline after `{` lets the JSON editor add a closing brace.
    await page.keyboard.insertText(JSON.stringify(file.values));
    // Whatever the editor auto-closed behind the cursor is not part of the settings.
    await page.keyboard.press('Control+Shift+End');
    await page.keyboard.press('Delete');
    await page.keyboard.press('Control+S');
    await waitFor('settings.json to be saved', async () => (await page.locator('.tab.active.dirty').count()) === 0, {
      timeoutMs: 15_000,
    });
    const saved = JSON.parse(fs.readFileSync(file.path, 'utf8'));
    for (const [key, value] of Object.entries(changes)) {
      if (JSON.stringify(saved[key]) !== JSON.stringify(value)) {
        throw new Error(`${file.path} does not hold ${key} = ${JSON.stringify(value)} after saving`);
      }
    }
  }

  async finish(failed) {
    if (failed && this.page) {
      await this.page.screenshot({ path: path.join(this.root, 'failure.png') }).catch(() => undefined);
    }
    await this.browser?.close().catch(() => undefined);
    await this.stopAll();
    if (failed) {
      dumpLogs(this.root);
    } else if (!process.env.KEEP_E2E_TMP) {
      fs.rmSync(this.root, { recursive: true, force: true });
    }
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function dumpLogs(root) {
  const logs = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory() && entry.name !== 'chromium' && entry.name !== 'extensions') {
        walk(full);
      } else if (
        entry.isFile() &&
        (/podloop.*\.(log|jsonl)$/i.test(entry.name) || /^(kubesim|code-server)\.log$/.test(entry.name) || /exthost\.log$/.test(entry.name))
      ) {
        logs.push(full);
      }
    }
  };
  walk(root);
  for (const file of logs) {
    const text = fs.readFileSync(file, 'utf8');
    console.error(`----- ${file} (last 4000 chars) -----\n${text.slice(-4000)}`);
  }
  console.error(`(screenshot of the failure, if any: ${path.join(root, 'failure.png')}; KEEP_E2E_TMP=1 keeps ${root})`);
}

// --- the workbench ----------------------------------------------------------

// VS Code names the element `<extension id>.<item id>` (package.json's
// publisher.name, then the id given to createStatusBarItem).
const STATUS_ITEM = '#workbench\\.parts\\.statusbar [id="podloop.podloop.podloop.status"]';

/** The podloop status bar item. */
export function statusItem(page) {
  return page.locator(STATUS_ITEM);
}

/** The item's plain-text label (statusView.ts's accessibilityLabel), or null while it is not there. */
export async function statusLabel(page) {
  const item = statusItem(page);
  if ((await item.count()) === 0) {
    return null;
  }
  return item.getAttribute('aria-label', { timeout: 1000 });
}

export async function waitForStatus(page, description, test, options = {}) {
  return waitFor(
    `the status bar to show ${description}`,
    async () => {
      const label = await statusLabel(page);
      return label !== null && test(label) ? label : false;
    },
    { timeoutMs: 30_000, intervalMs: 200, ...options },
  );
}

export async function openFile(page, name) {
  await page.keyboard.press('Control+P');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ timeout: 15_000 });
  await input.fill(name);
  await page.locator('.quick-input-list .monaco-list-row', { hasText: name }).first().waitFor({ timeout: 15_000 });
  await page.keyboard.press('Enter');
  await page.locator('.tab.active', { hasText: name }).waitFor({ timeout: 15_000 });
}

/** Types a line at the end of the active editor and saves; returns when Ctrl+S was pressed. */
export async function appendLineAndSave(page, text) {
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
  await page.keyboard.press('Control+End');
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
  const savedAt = Date.now();
  await page.keyboard.press('Control+S');
  // The tab's dirty marker goes away once the file is on disk.
  await waitFor('the editor to finish saving', async () => (await page.locator('.tab.active.dirty').count()) === 0, {
    timeoutMs: 15_000,
  });
  return savedAt;
}

/** Runs a palette command by its title, the way a user would. */
export async function runCommand(page, title) {
  await page.keyboard.press('Control+Shift+P');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ timeout: 15_000 });
  await input.fill(`>${title}`);
  await page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first().waitFor({ timeout: 15_000 });
  await page.keyboard.press('Enter');
}

export function notification(page, text) {
  return page.locator('.notifications-toasts .notification-toast', { hasText: text }).first();
}

export async function mainProgram(name, body) {
  const run = new Run(name);
  let failed = false;
  const interrupted = () => {
    void run.finish(false).then(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    await body(run);
    log(`PASS ${name}`);
  } catch (error) {
    failed = true;
    console.error(`[e2e] FAIL ${name}: ${error.stack ?? error}`);
  }
  await run.finish(failed);
  process.exitCode = failed ? 1 : 0;
}
