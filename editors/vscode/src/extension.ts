// The codegen-lsp extension: starts `codegen-lsp serve` over stdio with
// vscode-languageclient 11, which registers inline completion (ghost text)
// by itself. This file adds the server command, the settings, a status bar
// item for model loading and two commands (restart, show stats).

import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
} from "vscode-languageclient/node";
import * as readline from "node:readline";
import {
  LogLevel,
  MODEL_STATUS,
  ModelState,
  ModelStatus,
  SECTION,
  STATS_METHOD,
  Stats,
  formatStats,
  resolveServerCommand,
  serverLogLine,
  serverSettings,
  statusText,
} from "./config";

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;

/** The server keys the user set for this scope (defaults left to the server, so project files still apply). */
export function editorSettings(scope?: vscode.Uri): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION, scope);
  return serverSettings((key) => {
    const values = config.inspect(key);
    return values?.workspaceFolderValue ?? values?.workspaceValue ?? values?.globalValue;
  });
}

function setStatus(state: ModelState): void {
  statusItem.text = statusText(state);
  statusItem.tooltip =
    state.kind === "ready" ? `codegen-lsp: ${state.model}\nClick for stats` :
    state.kind === "failed" ? `codegen-lsp: ${state.message}` : "codegen-lsp";
  statusItem.show();
}

function createClient(): LanguageClient {
  const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  const configured = vscode.workspace.getConfiguration(SECTION).get<string[]>("serverCommand");
  const { command, args } = resolveServerCommand(configured, folders);
  output.appendLine(`starting: ${[command, ...args].join(" ")}`);
  // stdio without `transport`: TransportKind.stdio would append `--stdio` to the arguments.
  const serverOptions: ServerOptions = { command, args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: editorSettings(),
    outputChannel: output,
    // The server logs to stderr at its own levels: show INFO as info, not as [error].
    stdioOptions: {
      stdout: (input, channel) => readline.createInterface({ input, terminal: false }).on("line", (l) => channel.info(l)),
      stderr: (input, channel) => {
        let level: LogLevel = "info";
        readline.createInterface({ input, terminal: false }).on("line", (line) => {
          const parsed = serverLogLine(line, level);
          level = parsed.level;
          channel[level](parsed.text);
        });
      },
    },
    middleware: {
      workspace: {
        // Answer workspace/configuration with the server's keys only (serverCommand is ours).
        configuration: (params) =>
          params.items.map((item) =>
            item.section === SECTION ? editorSettings(item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined) : null,
          ),
      },
    },
  };
  return new LanguageClient("codegen-lsp", "codegen-lsp", serverOptions, clientOptions);
}

/** Model loading arrives as work-done progress the server creates, its outcome as MODEL_STATUS. */
function watchModel(lc: LanguageClient): void {
  lc.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    lc.onProgress(WorkDoneProgress.type, token, (value) => {
      if (value.kind !== "end") {
        setStatus({ kind: "loading", message: value.message, percentage: value.percentage });
      }
    });
  });
  lc.onNotification(MODEL_STATUS, (params: ModelStatus) => {
    if (params.status === "failed") {
      setStatus({ kind: "failed", message: params.message });
    } else {
      void refreshModel(lc, params.model);
    }
  });
}

async function refreshModel(lc: LanguageClient, fallback: string): Promise<void> {
  try {
    const stats = await lc.sendRequest<Stats>(STATS_METHOD, {});
    const models = stats.models ?? [];
    setStatus({ kind: "ready", model: models.length > 0 ? models.join(", ") : fallback });
    // The tooltip says which model each folder uses and where that setting came from.
    const folders = formatStats(stats).split("\n").filter((line) => line.startsWith("model: "));
    if (folders.length > 0) {
      statusItem.tooltip = `codegen-lsp\n${folders.join("\n")}\nClick for stats`;
    }
  } catch {
    setStatus({ kind: "ready", model: fallback });
  }
}

export async function startServer(): Promise<void> {
  setStatus({ kind: "starting" });
  client = createClient();
  client.onDidChangeState((event) => {
    if (event.newState === State.Stopped) {
      setStatus({ kind: "stopped" });
    }
  });
  watchModel(client); // before start: the first load may end before start() returns
  try {
    await client.start();
  } catch (error) {
    const message = `cannot start the server (${error}). Set "codegen-lsp.serverCommand", or install the package: pip install -e . in the workspace .venv`;
    setStatus({ kind: "failed", message });
    void vscode.window.showErrorMessage(`codegen-lsp: ${message}`);
    return;
  }
}

export async function stopServer(): Promise<void> {
  const running = client;
  client = undefined;
  if (running && running.state === State.Running) {
    await running.stop();
  }
}

export async function showStats(): Promise<string | undefined> {
  if (!client || client.state !== State.Running) {
    void vscode.window.showWarningMessage("codegen-lsp: the server is not running");
    return undefined;
  }
  const stats = await client.sendRequest<Stats>(STATS_METHOD, {});
  const text = formatStats(stats);
  output.appendLine(`codegen/stats: ${JSON.stringify(stats)}`);
  void vscode.window.showInformationMessage(`codegen-lsp: ${text.replace(/\n/g, "; ")}`);
  return text;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("codegen-lsp", { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "codegen-lsp.showStats";
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("codegen-lsp.restart", async () => {
      await stopServer();
      await startServer();
    }),
    vscode.commands.registerCommand("codegen-lsp.showStats", showStats),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      if (event.affectsConfiguration(`${SECTION}.serverCommand`)) {
        await stopServer();
        await startServer();
      } else if (client?.state === State.Running) {
        // The server pulls the section again (workspace/configuration) for every folder.
        await client.sendNotification("workspace/didChangeConfiguration", { settings: { [SECTION]: editorSettings() } });
      }
    }),
  );
  await startServer();
}

export async function deactivate(): Promise<void> {
  await stopServer();
}
