// VS Code glue: starts `podloop lsp`, draws the status bar from
// `podloop/status`, and forwards the palette commands. The decisions (what to
// show, which binary, which settings) live in the pure modules next to this
// one, where they are unit-tested.

import * as fs from 'fs';
import * as os from 'os';
import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  DynamicFeature,
  ErrorAction,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  MessageType,
  ServerOptions as ProcessOptions,
  ShowMessageNotification,
  State,
  StaticFeature,
  TransportKind,
} from 'vscode-languageclient/node';

import { MenuAction, menuItems } from './menu';
import { PodloopStatus, STATUS_NOTIFICATION, ServerCommand, describeSyncAll, parseStatus } from './protocol';
import { CrashBudget } from './restartPolicy';
import { LastSyncMemory } from './syncMemory';
import { INSTALL_HINT, describeMissingBinary, findServerBinary } from './serverBinary';
import { LIVE_SETTINGS, RESTART_SETTINGS, serverOptions } from './settings';
import { ClientPhase, renderStatus } from './statusView';

const SHOW_LOGS = 'Show logs';

/**
 * The extension registers the `podloop.*` palette commands itself, with
 * progress and error reporting. The client's generic executeCommand feature
 * would register the same ids from the server's capabilities and fail with
 * "command already exists", so it is left out.
 */
class PodloopLanguageClient extends LanguageClient {
  override registerFeature(feature: StaticFeature | DynamicFeature<unknown>): void {
    const method = (feature as Partial<DynamicFeature<unknown>>).registrationType?.method;
    if (method === ExecuteCommandRequest.method) {
      return;
    }
    super.registerFeature(feature);
  }
}

class Controller implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private phase: ClientPhase = { kind: 'starting' };
  private lastStatus: PodloopStatus | undefined;
  /** Re-sent on a restart so a paused session stays paused. */
  private paused: boolean | undefined;
  private readonly budget = new CrashBudget();
  private readonly lastSyncs = new LastSyncMemory();
  private readonly statusItem: vscode.StatusBarItem;
  readonly output: vscode.OutputChannel;
  /** Serialises start/stop so a double-clicked "Restart server" cannot start two servers. */
  private lifecycle: Promise<void> = Promise.resolve();

  constructor(private readonly context: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel('podloop');
    this.statusItem = vscode.window.createStatusBarItem('podloop.status', vscode.StatusBarAlignment.Left, 0);
    this.statusItem.name = 'podloop';
    this.statusItem.command = 'podloop.showMenu';
    this.render();
    this.statusItem.show();
  }

  start(): Promise<void> {
    return this.serialised(() => this.startNow());
  }

  restart(): Promise<void> {
    return this.serialised(async () => {
      this.log('restarting the server');
      await this.stopNow();
      this.budget.reset();
      await this.startNow();
    });
  }

  private serialised(step: () => Promise<void>): Promise<void> {
    const next = this.lifecycle.then(step, step);
    this.lifecycle = next.catch(() => undefined);
    return next;
  }

  private async startNow(): Promise<void> {
    if (this.client !== undefined) {
      return;
    }
    this.setPhase({ kind: 'starting' });
    const config = vscode.workspace.getConfiguration('podloop');
    const binary = findServerBinary({
      configuredPath: config.get<string | null>('server.path'),
      extensionPath: this.context.extensionPath,
      envPath: process.env.PATH,
      platform: process.platform,
      arch: process.arch,
      homeDir: os.homedir(),
      workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
      isExecutableFile,
    });
    if (binary.kind !== 'found') {
      this.log(`podloop.server.path: ${JSON.stringify(config.inspect('server.path'))}`);
      const message = describeMissingBinary(binary);
      this.log(message);
      if (binary.kind === 'not-found') {
        this.log(`searched: ${binary.searched.join(', ')}`);
      }
      this.setPhase({ kind: 'stopped', reason: message });
      void this.offerInstall(message);
      return;
    }
    this.log(`starting ${binary.path} lsp (from the ${binary.source})`);

    const processOptions: ProcessOptions = {
      command: binary.path,
      args: ['lsp'],
      transport: TransportKind.stdio,
    };
    const clientOptions: LanguageClientOptions = {
      // Any file may be mapped into a pod, whatever its language; the server
      // ignores saves outside its mappings.
      documentSelector: [{ scheme: 'file' }],
      outputChannel: this.output,
      // A function, so a restart after a crash sends the settings and pause state of that moment.
      initializationOptions: () => serverOptions((key) => vscode.workspace.getConfiguration('podloop').get(key), this.paused),
      errorHandler: {
        error: (_error, _message, count) => ({
          action: (count ?? 0) <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
        }),
        closed: () => {
          if (this.budget.recordCrash() === 'restart') {
            this.log('the server exited unexpectedly: restarting it');
            return { action: CloseAction.Restart, handled: true };
          }
          const reason = 'the server exited 5 times in 3 minutes and will not be restarted';
          this.setPhase({ kind: 'stopped', reason });
          void this.showError(`podloop: ${reason}.`, 'Restart server').then((choice) => {
            if (choice === 'Restart server') {
              void this.restart();
            }
          });
          return { action: CloseAction.DoNotRestart, handled: true };
        },
      },
    };

    const client = new PodloopLanguageClient('podloop', 'podloop', processOptions, clientOptions);
    client.onNotification(STATUS_NOTIFICATION, (raw: unknown) => this.onStatus(raw));
    // Replaces the client's default handler: server errors get a "Show logs"
    // button instead of a bare toast.
    client.onNotification(ShowMessageNotification.type, (params) => {
      switch (params.type) {
        case MessageType.Error:
          void this.showError(params.message);
          break;
        case MessageType.Warning:
          void vscode.window.showWarningMessage(params.message, SHOW_LOGS).then((choice) => this.maybeShowLogs(choice));
          break;
        default:
          void vscode.window.showInformationMessage(params.message);
      }
    });
    client.onDidChangeState((event) => {
      if (this.client !== client) {
        return;
      }
      if (event.newState === State.Starting) {
        this.setPhase({ kind: 'starting' });
      } else if (event.newState === State.Running) {
        this.setPhase({ kind: 'running' });
        void this.refreshStatus(client);
      } else if (event.newState === State.Stopped && this.phase.kind !== 'stopped') {
        this.setPhase({ kind: 'stopped', reason: 'the server exited' });
      }
    });
    this.client = client;
    try {
      await client.start();
    } catch (error) {
      const reason = `could not start ${binary.path}: ${errorMessage(error)}`;
      this.log(reason);
      this.setPhase({ kind: 'stopped', reason });
      this.client = undefined;
      void client.dispose().catch(() => undefined);
      void this.showError(`podloop: ${reason}`);
    }
  }

  private async stopNow(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client === undefined) {
      return;
    }
    try {
      await client.stop(3000);
    } catch (error) {
      this.log(`stopping the server: ${errorMessage(error)}`);
    }
    await client.dispose().catch(() => undefined);
  }

  /**
   * The server sends a status only when it changes; asking once after start
   * fills the status bar even if the first notification raced the handler.
   */
  private async refreshStatus(client: LanguageClient): Promise<void> {
    try {
      const raw = await client.sendRequest(ExecuteCommandRequest.type, { command: ServerCommand.status, arguments: [] });
      if (this.client === client && this.phase.kind === 'running' && this.phase.status === undefined) {
        this.onStatus(raw);
      }
    } catch (error) {
      this.log(`asking for the initial status: ${errorMessage(error)}`);
    }
  }

  private onStatus(raw: unknown): void {
    const parsed = parseStatus(raw);
    if (parsed === undefined) {
      this.log(`ignored a malformed ${STATUS_NOTIFICATION}: ${JSON.stringify(raw)}`);
      return;
    }
    const status = this.lastSyncs.apply(parsed);
    this.lastStatus = status;
    this.paused = status.state === 'paused';
    this.setPhase({ kind: 'running', status });
  }

  private setPhase(phase: ClientPhase): void {
    this.phase = phase;
    this.render();
  }

  private render(): void {
    const view = renderStatus(this.phase);
    this.statusItem.text = view.text;
    const tooltip = new vscode.MarkdownString(view.tooltip, true);
    tooltip.isTrusted = false;
    this.statusItem.tooltip = tooltip;
    this.statusItem.backgroundColor =
      view.background === undefined ? undefined : new vscode.ThemeColor(`statusBarItem.${view.background}Background`);
    this.statusItem.accessibilityInformation = { label: view.accessibilityLabel };
  }

  /** Runs a server command, starting the server first if needed; failures become visible errors. */
  async runServerCommand(command: string, title: string, args: unknown[] = []): Promise<unknown> {
    if (this.client === undefined) {
      await this.start();
    }
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      void this.showError(`podloop: cannot ${title}: the server is not running.`, 'Restart server').then((choice) => {
        if (choice === 'Restart server') {
          void this.restart();
        }
      });
      return undefined;
    }
    try {
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Window, title: `podloop: ${title}` },
        () => client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args }),
      );
    } catch (error) {
      void this.showError(`podloop: ${title} failed: ${errorMessage(error)}`);
      return undefined;
    }
  }

  async syncAll(): Promise<void> {
    const report = await this.runServerCommand(ServerCommand.syncAll, 'sync all mapped files');
    if (report !== undefined) {
      vscode.window.setStatusBarMessage(`podloop: ${describeSyncAll(report)}`, 5000);
    }
  }

  async showStatus(): Promise<void> {
    const raw = (await this.runServerCommand(ServerCommand.status, 'show status')) ?? this.lastStatus;
    if (raw === undefined) {
      return;
    }
    const document = await vscode.workspace.openTextDocument({ language: 'json', content: JSON.stringify(raw, null, 2) });
    await vscode.window.showTextDocument(document, { preview: true });
  }

  async showMenu(): Promise<void> {
    type Pick = vscode.QuickPickItem & { action: MenuAction };
    const items: Pick[] = menuItems(this.lastStatus).map((item) => ({ ...item }));
    const picked = await vscode.window.showQuickPick(items, { title: 'podloop', placeHolder: 'Choose an action' });
    if (picked !== undefined) {
      await vscode.commands.executeCommand(`podloop.${picked.action}`);
    }
  }

  sendSettings(): void {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return;
    }
    const config = vscode.workspace.getConfiguration('podloop');
    void client
      // The pause state rides along: a settings change must not resume a paused session.
      .sendNotification(DidChangeConfigurationNotification.type, { settings: serverOptions((key) => config.get(key), this.paused) })
      .catch((error: unknown) => this.log(`sending settings: ${errorMessage(error)}`));
  }

  showError(message: string, ...actions: string[]): Thenable<string | undefined> {
    return vscode.window.showErrorMessage(message, ...actions, SHOW_LOGS).then((choice) => {
      this.maybeShowLogs(choice);
      return choice;
    });
  }

  private maybeShowLogs(choice: string | undefined): void {
    if (choice === SHOW_LOGS) {
      this.output.show(true);
    }
  }

  private async offerInstall(message: string): Promise<void> {
    const choice = await vscode.window.showErrorMessage(message, 'How to install', 'Set path', SHOW_LOGS);
    if (choice === 'How to install') {
      const readme = vscode.Uri.joinPath(this.context.extensionUri, 'README.md');
      await vscode.commands.executeCommand('markdown.showPreview', readme).then(undefined, () =>
        vscode.window.showInformationMessage(INSTALL_HINT, { modal: true }),
      );
    } else if (choice === 'Set path') {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'podloop.server.path');
    } else {
      this.maybeShowLogs(choice);
    }
  }

  log(line: string): void {
    this.output.appendLine(`[extension ${new Date().toISOString()}] ${line}`);
  }

  async dispose(): Promise<void> {
    await this.stopNow();
    this.statusItem.dispose();
    this.output.dispose();
  }
}

function isExecutableFile(candidate: string): boolean {
  try {
    if (!fs.statSync(candidate).isFile()) {
      return false;
    }
    if (process.platform !== 'win32') {
      fs.accessSync(candidate, fs.constants.X_OK);
    }
    return true;
  } catch {
    return false;
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

let controller: Controller | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const active = new Controller(context);
  controller = active;
  const register = (id: string, run: () => unknown): void => {
    context.subscriptions.push(vscode.commands.registerCommand(id, run));
  };
  register('podloop.syncAll', () => active.syncAll());
  register('podloop.reload', () => active.runServerCommand(ServerCommand.reload, 'run reload'));
  register('podloop.pause', () => active.runServerCommand(ServerCommand.pause, 'pause'));
  register('podloop.resume', () => active.runServerCommand(ServerCommand.resume, 'resume'));
  // The quick fix the server offers on a conflict diagnostic runs this id
  // with the file's URI.
  context.subscriptions.push(
    vscode.commands.registerCommand(ServerCommand.overwrite, (uri: unknown) =>
      active.runServerCommand(ServerCommand.overwrite, "overwrite the container's copy", [uri]),
    ),
  );
  register('podloop.showStatus', () => active.showStatus());
  register('podloop.showLogs', () => active.output.show(true));
  register('podloop.restartServer', () => active.restart());
  register('podloop.showMenu', () => active.showMenu());
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (RESTART_SETTINGS.some((key) => event.affectsConfiguration(key))) {
        void active.restart();
      } else if (LIVE_SETTINGS.some((key) => event.affectsConfiguration(key))) {
        active.sendSettings();
      }
    }),
  );
  await active.start();
}

export async function deactivate(): Promise<void> {
  await controller?.dispose();
  controller = undefined;
}
