// End-to-end: the packaged extension in a real VS Code (code-server 4.100.3,
// driven by Playwright with Debian's Chromium), against kubesim and the real
// `podloop` binary.
//
// open the workspace → open a mapped file → type → Ctrl+S
//   ⇒ the pod holds exactly the saved bytes (read back with the real kubectl)
//   ⇒ the status bar names the pod and the batch time; its hover lists the target
// edit the file inside the pod (kubectl exec) → type → Ctrl+S
//   ⇒ a warning squiggle, and the pod keeps its copy (on_conflict = "skip")
// Ctrl+. → Enter on "podloop: overwrite the container's copy…"
//   ⇒ the pod holds the local file, the warning is gone
// delete the pod → type → Ctrl+S
//   ⇒ the status bar shows the problem (icon, colour, message, "1 pending"),
//     and the server's message is a notification with "Show logs"
//
// Every wait polls a condition with a deadline; every process started here is
// stopped by its process group id at the end, also on failure.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import {
  appendLineAndSave,
  bins,
  checkPrerequisites,
  execFileAsync,
  screenshotsDir,
  log,
  mainProgram,
  notification,
  openFile,
  statusItem,
  waitFor,
  waitForStatus,
} from './harness.mjs';

const POD = 'api-7d8f4';
const CONTAINER = 'api';
const REMOTE_FILE = '/app/src/app.py';
const ORIGINAL = "print('hello from the pod')\n";

async function kubectl(kubeconfig, ...args) {
  const { stdout } = await execFileAsync(bins.kubectl, ['--kubeconfig', kubeconfig, ...args], {
    timeout: 20_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

async function startKubesim(run) {
  const simDir = path.join(run.root, 'sim');
  fs.mkdirSync(simDir);
  const podsFile = path.join(run.root, 'pods.json');
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
  run.start('kubesim', bins.kubesim, ['serve', '--dir', simDir, '--pods', podsFile]);
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

function writeWorkspace(run) {
  const workspace = path.join(run.root, 'workspace');
  fs.mkdirSync(path.join(workspace, 'src'), { recursive: true });
  fs.writeFileSync(
    path.join(workspace, 'podloop.toml'),
    [
      'namespace = "default"',
      // The container's own edits are kept until the user picks the quick fix.
      'on_conflict = "skip"',
      '',
      '[[sync]]',
      'name = "api"',
      'local = "src"',
      'remote = "/app/src"',
      'selector = "app=api"',
      `container = "${CONTAINER}"`,
      '',
    ].join('\n'),
  );
  fs.writeFileSync(path.join(workspace, 'src', 'app.py'), ORIGINAL);
  return workspace;
}

await mainProgram('sync', async (run) => {
  checkPrerequisites(['podloop', 'kubesim', 'codeServer', 'chromium', 'kubectl']);
  const kubeconfig = await startKubesim(run);
  const workspace = writeWorkspace(run);
  const localFile = path.join(workspace, 'src', 'app.py');
  const page = await run.startCodeServer({
    workspace,
    settings: { 'podloop.logLevel': 'debug' },
    machineSettings: { 'podloop.server.path': bins.podloop },
    // The extension host, and so the server it starts, inherits this.
    env: { KUBECONFIG: kubeconfig },
  });

  const before = await waitForStatus(page, 'a healthy target', (label) => label.startsWith('podloop ok') && label.includes(POD), {
    timeoutMs: 60_000,
  });
  log(`status before the save: ${before}`);

  await openFile(page, 'app.py');
  log('app.py is open');
  const nonce = randomBytes(4).toString('hex');
  const savedAt = await appendLineAndSave(page, `print('saved in VS Code ${nonce}')`);
  const synced = await waitForStatus(
    page,
    'the sync',
    (label) => label !== before && new RegExp(`^podloop ok idle: ${POD} · \\d+(\\.\\d+)? (ms|s)$`).test(label),
    { intervalMs: 20 },
  );
  log(`status bar showed the sync ${Date.now() - savedAt} ms after Ctrl+S (±20 ms polling): ${synced}`);
  const onDisk = fs.readFileSync(localFile, 'utf8');
  if (!onDisk.includes(nonce)) {
    throw new Error(`the editor did not write the typed text to disk:\n${onDisk}`);
  }
  // Delivered before the status said so: no waiting here.
  const inPod = await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'cat', REMOTE_FILE);
  if (inPod !== onDisk) {
    throw new Error(`the pod does not hold the saved bytes:\n--- local\n${onDisk}\n--- pod\n${inPod}`);
  }
  log(`the pod holds exactly the saved bytes (${Buffer.byteLength(onDisk)} bytes)`);
  const item = statusItem(page);
  const syncedText = (await item.innerText()).trim();
  log(`status after the save: ${synced} (visible text "${syncedText}")`);
  if (!syncedText.startsWith(POD) || !/ · \d+(\.\d+)? (ms|s)$/.test(syncedText)) {
    throw new Error(`the visible status bar text does not name the pod and the batch time: "${syncedText}"`);
  }
  if ((await item.locator('.codicon-check').count()) !== 1) {
    throw new Error('the status bar item does not show the check icon after a successful sync');
  }

  // The hover lists every target with its state and the last batch.
  await item.hover();
  const hovers = page.locator('.workbench-hover:visible');
  const hoverText = await waitFor(
    'the status bar hover to list the synced target and its last batch',
    async () => {
      // Opacity 1: the fade-in is over, so the screenshot below shows the hover crisp.
      const shown = await hovers.evaluateAll((elements) =>
        elements.map((element) => ({ text: element.innerText, opaque: getComputedStyle(element).opacity === '1' })),
      );
      return shown.find(
        ({ text, opaque }) => opaque && text.includes(POD) && /\bsynced\b/.test(text) && /1 file, \d+ B in \d+/.test(text),
      )?.text;
    },
    { timeoutMs: 10_000 },
  );
  log(`hover: ${hoverText.replace(/\s+/g, ' ').slice(0, 200)}`);
  fs.mkdirSync(screenshotsDir, { recursive: true });
  await page.screenshot({ path: path.join(screenshotsDir, 'status-bar.png') });
  log(`screenshot: ${path.join(screenshotsDir, 'status-bar.png')}`);
  await page.mouse.move(640, 300);

  // Someone edits the file inside the pod; the next save is a conflict,
  // left alone under on_conflict = "skip", with a quick fix on the warning.
  await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'sh', '-c', `echo edited in the pod > ${REMOTE_FILE}`);
  await appendLineAndSave(page, `print('saved over an edit in the pod ${nonce}')`);
  const squiggle = page.locator('.editor-instance .squiggly-warning').first();
  await squiggle.waitFor({ timeout: 15_000 });
  if ((await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'cat', REMOTE_FILE)) !== 'edited in the pod\n') {
    throw new Error('on_conflict = "skip" did not keep the pod\'s copy');
  }
  log('conflict: warning shown, the pod kept its copy');
  await page.keyboard.press('Control+Home');
  await page.keyboard.press('Control+.');
  const fix = page.locator('.action-widget .monaco-list-row', { hasText: "podloop: overwrite the container's copy" });
  await fix.first().waitFor({ timeout: 15_000 });
  // The light bulb's menu opens with its preferred fix (ours) selected.
  await page.keyboard.press('Enter');
  const overwritten = fs.readFileSync(localFile, 'utf8');
  await waitFor('the quick fix to send the local file over the pod\'s copy', async () => {
    return (await kubectl(kubeconfig, 'exec', POD, '-c', CONTAINER, '--', 'cat', REMOTE_FILE)) === overwritten;
  });
  await waitFor('the conflict warning to go', async () => (await page.locator('.editor-instance .squiggly-warning').count()) === 0, {
    timeoutMs: 15_000,
  });
  log('quick fix: the pod holds the local file, the warning is gone');

  // Break the target: the pod goes away, and the next save cannot be delivered.
  await kubectl(kubeconfig, 'delete', 'pod', POD, '--wait=true', '--timeout=20s');
  log(`deleted pod ${POD}`);
  await appendLineAndSave(page, `print('saved after the pod was deleted ${nonce}')`);
  // The server decides how bad a vanished pod is (today: `warning`, the save
  // kept pending); the extension must show it as a problem, never as healthy.
  const broken = await waitForStatus(page, 'the problem state', (label) => /^podloop (error|warning) /.test(label));
  const health = broken.split(' ')[1];
  const brokenText = (await item.innerText()).trim();
  log(`status after deleting the pod: ${broken} (visible text "${brokenText}")`);
  if ((await item.locator(`.codicon-${health}`).count()) !== 1 || (await item.locator('.codicon-check').count()) !== 0) {
    throw new Error(`the status bar item does not show the ${health} icon after the pod was deleted`);
  }
  if (!new RegExp(`\\b${health}-kind\\b`).test((await item.getAttribute('class')) ?? '')) {
    throw new Error(`the status bar item does not use the ${health} background after the pod was deleted`);
  }
  if (!/\b1 pending\b/.test(brokenText)) {
    throw new Error(`the status bar does not say that the save is pending: "${brokenText}"`);
  }
  // The server's message about it is a notification with a way to the logs.
  const toast = notification(page, 'app=api');
  await toast.waitFor({ timeout: 15_000 });
  if ((await toast.locator('.monaco-button', { hasText: 'Show logs' }).count()) !== 1) {
    throw new Error(`the server's message has no "Show logs" button: ${await toast.innerText()}`);
  }
  log(`notification: ${(await toast.innerText()).replace(/\s+/g, ' ')}`);
  await page.screenshot({ path: path.join(screenshotsDir, 'error-state.png') });
  log(`screenshot: ${path.join(screenshotsDir, 'error-state.png')}`);
});
