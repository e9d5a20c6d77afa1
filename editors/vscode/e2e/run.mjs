// End-to-end test of the packaged extension in a real VS Code: code-server
// 4.100.3 driven by Playwright with Debian's Chromium, against kubesim and the
// real `podloop` binary.
//
// open the workspace → open a mapped file → type → Ctrl+S
//   ⇒ the pod holds exactly the saved bytes (read back with the real kubectl)
//   ⇒ the status bar names the pod and the batch time; its hover lists the target
// delete the pod → type → Ctrl+S
//   ⇒ the status bar turns to the error state
//
// Every wait polls a condition with a deadline; every process started here is
// stopped by its PID (process group) at the end, also on failure.

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const execFileAsync = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const extensionDir = path.resolve(here, '..');
const repo = path.resolve(extensionDir, '../..');
const targetDir = path.resolve(repo, process.env.CARGO_TARGET_DIR ?? 'target');

const bins = {
  podloop: process.env.PODLOOP_BIN ?? path.join(targetDir, 'debug', 'podloop'),
  kubesim: process.env.KUBESIM_BIN ?? path.join(targetDir, 'debug', 'kubesim'),
  codeServer:
    process.env.CODE_SERVER_BIN ??
    path.join(os.homedir(), '.cache', 'podloop', 'code-server-4.100.3', 'node_modules', '.bin', 'code-server'),
  chromium: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
  kubectl: process.env.KUBECTL_BIN ?? '/usr/bin/kubectl',
};
const vsix = path.join(extensionDir, 'podloop.vsix');
const imagesDir = path.join(extensionDir, 'images');

const POD = 'api-7d8f4';
const CONTAINER = 'api';
const REMOTE_FILE = '/app/src/app.py';
const ORIGINAL = "print('hello from the pod')\n";

const children = [];
let failureDir;

function log(message) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 23)}] ${message}`);
}

async function waitFor(description, probe, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
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

/** Starts a process in its own process group, logging to a file, so it and its children stop together. */
function start(name, command, args, options = {}) {
  const logPath = path.join(failureDir, `${name}.log`);
  const out = fs.openSync(logPath, 'a');
  const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const entry = { name, child, logPath, exited: false };
  child.on('exit', () => {
    entry.exited = true;
  });
  children.push(entry);
  log(`started ${name} (pid ${child.pid})`);
  return entry;
}

async function stopAll() {
  for (const entry of children.reverse()) {
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
        // Already gone between the check and the kill.
      }
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

function checkPrerequisites() {
  const missing = Object.entries(bins)
    .filter(([, file]) => !fs.existsSync(file))
    .map(([name, file]) => `${name} (${file})`);
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

async function kubectl(kubeconfig, ...args) {
  const { stdout } = await execFileAsync(bins.kubectl, ['--kubeconfig', kubeconfig, ...args], {
    timeout: 20_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

async function startKubesim(root) {
  const simDir = path.join(root, 'sim');
  fs.mkdirSync(simDir);
  const podsFile = path.join(root, 'pods.json');
  fs.writeFileSync(
    podsFile,
    JSON.stringify([
      {
        name: POD,
        namespace: 'default',
        labels: { app: 'api' },
        containers: [{ name: CONTAINER, image: 'busybox', files: { [REMOTE_FILE]: ORIGINAL } }],
      },
    ]),
  );
  start('kubesim', bins.kubesim, ['serve', '--dir', simDir, '--pods', podsFile]);
  const kubeconfig = path.join(simDir, 'kubeconfig');
  await waitFor('kubesim to serve the pod', async () => {
    if (!fs.existsSync(kubeconfig)) {
      return false;
    }
    return (await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'cat', REMOTE_FILE)) === ORIGINAL;
  });
  log('kubesim serves the pod');
  return kubeconfig;
}

function writeWorkspace(root) {
  const workspace = path.join(root, 'workspace');
  fs.mkdirSync(path.join(workspace, 'src'), { recursive: true });
  fs.writeFileSync(
    path.join(workspace, 'podloop.toml'),
    ['[[sync]]', 'name = "api"', 'local = "src"', 'remote = "/app/src"', 'selector = "app=api"', `container = "${CONTAINER}"`, ''].join('\n'),
  );
  fs.writeFileSync(path.join(workspace, 'src', 'app.py'), ORIGINAL);
  return workspace;
}

async function startCodeServer(root, kubeconfig, workspace) {
  const userDataDir = path.join(root, 'user-data');
  const extensionsDir = path.join(root, 'extensions');
  fs.mkdirSync(path.join(userDataDir, 'User'), { recursive: true });
  fs.writeFileSync(
    path.join(userDataDir, 'User', 'settings.json'),
    JSON.stringify(
      {
        'workbench.startupEditor': 'none',
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
        'podloop.server.path': bins.podloop,
        'podloop.logLevel': 'debug',
      },
      null,
      2,
    ),
  );
  const port = await freePort();
  const config = path.join(root, 'code-server.yaml');
  fs.writeFileSync(config, `bind-addr: 127.0.0.1:${port}\nauth: none\ncert: false\n`);
  const common = ['--config', config, '--user-data-dir', userDataDir, '--extensions-dir', extensionsDir];

  const { stdout } = await execFileAsync(bins.codeServer, [...common, '--install-extension', vsix], { timeout: 120_000 });
  if (!/successfully installed/i.test(stdout)) {
    throw new Error(`installing ${vsix} into code-server did not succeed:\n${stdout}`);
  }
  log('extension installed into code-server');

  const env = { ...process.env, KUBECONFIG: kubeconfig };
  start(
    'code-server',
    bins.codeServer,
    [...common, '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', workspace],
    { env },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor('code-server /healthz', async () => (await fetch(`${url}/healthz`)).ok);
  log(`code-server answers on ${url}`);
  return { url, userDataDir };
}

function statusItem(page) {
  // The item's accessibility label is the extension's plain-text rendering
  // (see statusView.ts); the text itself also carries codicons.
  return page.locator('#workbench\\.parts\\.statusbar .statusbar-item').filter({
    has: page.locator('[aria-label^="podloop"]'),
  });
}

async function statusLabel(page) {
  return page.locator('#workbench\\.parts\\.statusbar [aria-label^="podloop"]').first().getAttribute('aria-label', { timeout: 1000 });
}

async function appendLineAndSave(page, text) {
  const editor = page.locator('.editor-instance .monaco-editor').first();
  await editor.locator('.view-lines').click();
  await page.keyboard.press('Control+End');
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
  await page.keyboard.press('Control+S');
  // The tab's dirty dot disappears once the file is on disk.
  await waitFor('the editor to finish saving', async () => (await page.locator('.tab.active.dirty').count()) === 0, {
    timeoutMs: 15_000,
  });
}

async function run() {
  checkPrerequisites();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'podloop-vscode-e2e-'));
  failureDir = root;
  log(`working in ${root}`);
  const kubeconfig = await startKubesim(root);
  const workspace = writeWorkspace(root);
  const localFile = path.join(workspace, 'src', 'app.py');
  const { url } = await startCodeServer(root, kubeconfig, workspace);

  const browser = await chromium.launchPersistentContext(path.join(root, 'chromium'), {
    executablePath: bins.chromium,
    headless: true,
    viewport: { width: 1280, height: 760 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  try {
    await page.goto(`${url}/?folder=${encodeURIComponent(workspace)}`);
    await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
    log('workbench loaded');

    const ready = await waitFor('the podloop status bar item to report a healthy target', async () => {
      const label = await statusLabel(page);
      return label !== null && label.startsWith('podloop ok') && label.includes(POD) ? label : false;
    }, { timeoutMs: 60_000, intervalMs: 200 });
    log(`status before the save: ${ready}`);

    await page.keyboard.press('Control+P');
    const quickOpen = page.locator('.quick-input-widget input');
    await quickOpen.waitFor({ timeout: 15_000 });
    await quickOpen.fill('app.py');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'app.py' }).first().waitFor({ timeout: 15_000 });
    await page.keyboard.press('Enter');
    await page.locator('.tab.active', { hasText: 'app.py' }).waitFor({ timeout: 15_000 });
    log('app.py is open');

    const nonce = randomBytes(4).toString('hex');
    const savedAt = Date.now();
    await appendLineAndSave(page, `print('saved in VS Code ${nonce}')`);
    const onDisk = fs.readFileSync(localFile, 'utf8');
    if (!onDisk.includes(nonce)) {
      throw new Error(`the editor did not write the typed text to disk:\n${onDisk}`);
    }
    const inPod = await waitFor('the saved file to arrive in the pod', async () => {
      const content = await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'cat', REMOTE_FILE);
      return content === onDisk ? content : false;
    }, { timeoutMs: 30_000, intervalMs: 200 });
    log(`the pod holds the saved bytes (${Buffer.byteLength(inPod)} bytes) ${Date.now() - savedAt} ms after Ctrl+S`);

    const synced = await waitFor('the status bar to show the sync', async () => {
      const label = await statusLabel(page);
      return label !== null && new RegExp(`^podloop ok idle: ${POD} · \\d+(\\.\\d+)? (ms|s)$`).test(label) ? label : false;
    }, { timeoutMs: 15_000 });
    const syncedText = await statusItem(page).first().innerText();
    log(`status after the save: ${synced} (text "${syncedText.trim()}")`);
    if (!syncedText.includes(POD) || !/\d+ (ms|s)/.test(syncedText)) {
      throw new Error(`the visible status bar text does not name the pod and the batch time: "${syncedText}"`);
    }
    if ((await statusItem(page).first().locator('.codicon-check').count()) !== 1) {
      throw new Error('the status bar item does not show the check icon after a successful sync');
    }

    // The hover lists every target with its state and the last batch.
    await statusItem(page).first().hover();
    const hover = page.locator('.monaco-hover, .workbench-hover').filter({ hasText: 'synced' }).first();
    await hover.waitFor({ timeout: 10_000 });
    const hoverText = await hover.innerText();
    if (!hoverText.includes(POD) || !/1 file/.test(hoverText)) {
      throw new Error(`the status bar hover does not list the synced target: ${hoverText}`);
    }
    fs.mkdirSync(imagesDir, { recursive: true });
    await page.screenshot({ path: path.join(imagesDir, 'status-bar.png') });
    log('screenshot: images/status-bar.png');
    await page.mouse.move(640, 300);

    // Break the target: the pod goes away, and a save cannot be delivered.
    await kubectl(kubeconfig, 'delete', 'pod', POD, '--wait=true', '--timeout=20s');
    log(`deleted pod ${POD}`);
    await appendLineAndSave(page, `print('saved after the pod was deleted ${nonce}')`);
    const broken = await waitFor('the status bar to show the error state', async () => {
      const label = await statusLabel(page);
      return label !== null && label.startsWith('podloop error') ? label : false;
    }, { timeoutMs: 30_000, intervalMs: 200 });
    const brokenItem = statusItem(page).first();
    const brokenText = (await brokenItem.innerText()).trim();
    log(`status after deleting the pod: ${broken} (text "${brokenText}")`);
    if ((await brokenItem.locator('.codicon-error, .codicon-debug-disconnect').count()) !== 1) {
      throw new Error('the status bar item does not show an error icon after the pod was deleted');
    }
    if (!/error-kind/.test((await brokenItem.getAttribute('class')) ?? '')) {
      throw new Error('the status bar item does not use the error background after the pod was deleted');
    }
    await page.screenshot({ path: path.join(imagesDir, 'error-state.png') });
    log('screenshot: images/error-state.png');
  } catch (error) {
    await page.screenshot({ path: path.join(root, 'failure.png') }).catch(() => undefined);
    throw error;
  } finally {
    await browser.close().catch(() => undefined);
  }
  return root;
}

function dumpLogs(root) {
  if (!root || !fs.existsSync(root)) {
    return;
  }
  const logs = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory() && entry.name !== 'chromium' && entry.name !== 'extensions') {
        walk(full);
      } else if (entry.isFile() && (/podloop.*\.log$/i.test(entry.name) || /^(kubesim|code-server)\.log$/.test(entry.name) || /exthost\.log$/.test(entry.name))) {
        logs.push(full);
      }
    }
  };
  walk(root);
  for (const file of logs) {
    const text = fs.readFileSync(file, 'utf8');
    console.error(`----- ${file} (last 4000 chars) -----\n${text.slice(-4000)}`);
  }
  console.error(`(screenshot of the failure, if any: ${path.join(root, 'failure.png')})`);
}

let root;
let failed = false;
const interrupted = () => {
  void stopAll().then(() => process.exit(130));
};
process.once('SIGINT', interrupted);
process.once('SIGTERM', interrupted);
try {
  root = await run();
  log('PASS');
} catch (error) {
  failed = true;
  root = failureDir;
  console.error(`[e2e] FAIL: ${error.stack ?? error}`);
} finally {
  await stopAll();
}
if (failed) {
  dumpLogs(root);
  process.exit(1);
}
if (root && !process.env.KEEP_E2E_TMP) {
  fs.rmSync(root, { recursive: true, force: true });
}
