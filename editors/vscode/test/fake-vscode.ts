// Stand-ins for the `vscode` module and vscode-languageclient/node, installed
// with Module._load before the extension is required. They record what the
// extension asks for, so the tests check its wiring, not VS Code.

import Module from "node:module";

type Handler = (...args: any[]) => any;

export const settings: Record<string, unknown> = {}; // workspace-level values of section codegen-lsp
export const messages: { level: string; text: string }[] = [];
export const commands = new Map<string, Handler>();
export const configListeners: Handler[] = [];
export const statusItems: { text: string; tooltip?: string; command?: string; visible: boolean }[] = [];
export const clients: FakeClient[] = [];
export let failNextStart = false;
export function setFailNextStart(value: boolean): void {
  failNextStart = value;
}

/** Forget everything recorded, so that each test starts from a fresh VS Code. */
export function reset(): void {
  for (const key of Object.keys(settings)) delete settings[key];
  messages.length = 0;
  commands.clear();
  configListeners.length = 0;
  statusItems.length = 0;
  clients.length = 0;
  failNextStart = false;
}

export const vscode = {
  StatusBarAlignment: { Left: 1, Right: 2 },
  Uri: { parse: (value: string) => ({ toString: () => value, fsPath: value.replace(/^file:\/\//, "") }) },
  workspace: {
    workspaceFolders: [{ uri: { fsPath: "/nonexistent-workspace" } }],
    getConfiguration: (_section: string, _scope?: unknown) => ({
      get: (key: string) => settings[key],
      inspect: (key: string) => (key in settings ? { key, workspaceValue: settings[key] } : { key }),
    }),
    onDidChangeConfiguration: (listener: Handler) => {
      configListeners.push(listener);
      return { dispose() {} };
    },
  },
  window: {
    createOutputChannel: () => ({ appendLine() {}, dispose() {} }),
    createStatusBarItem: () => {
      const item = { text: "", visible: false, show() { item.visible = true; }, dispose() {} } as any;
      statusItems.push(item);
      return item;
    },
    showErrorMessage: (text: string) => messages.push({ level: "error", text }),
    showWarningMessage: (text: string) => messages.push({ level: "warning", text }),
    showInformationMessage: (text: string) => messages.push({ level: "info", text }),
  },
  commands: {
    registerCommand: (name: string, handler: Handler) => {
      commands.set(name, handler);
      return { dispose() {} };
    },
  },
};

export const State = { Stopped: 1, Starting: 3, Running: 2 };

export class FakeClient {
  state = State.Stopped;
  requestHandlers = new Map<string, Handler>();
  progressHandlers = new Map<string | number, Handler>();
  notificationHandlers = new Map<string, Handler>();
  notifications: { method: string; params: unknown }[] = [];
  stats = { requests: 2, prompt_tokens: 10, reused_tokens: 4, prefilled_tokens: 6, generated_tokens: 12, models: ["/models/tiny"], last: {} };
  constructor(public id: string, public name: string, public serverOptions: any, public clientOptions: any) {
    clients.push(this);
  }
  async start() {
    if (failNextStart) {
      failNextStart = false;
      throw new Error("spawn codegen-lsp ENOENT");
    }
    this.state = State.Running;
  }
  async stop() {
    this.state = State.Stopped;
  }
  onDidChangeState() {
    return { dispose() {} };
  }
  onRequest(type: { method: string }, handler: Handler) {
    this.requestHandlers.set(type.method, handler);
    return { dispose() {} };
  }
  onNotification(method: string, handler: Handler) {
    this.notificationHandlers.set(method, handler);
    return { dispose() {} };
  }
  onProgress(_type: unknown, token: string | number, handler: Handler) {
    this.progressHandlers.set(token, handler);
    return { dispose() {} };
  }
  async sendRequest(method: string) {
    if (method !== "codegen/stats") throw new Error(`unexpected request ${method}`);
    return this.stats;
  }
  async sendNotification(method: string, params: unknown) {
    this.notifications.push({ method, params });
  }
}

const languageclient = {
  LanguageClient: FakeClient,
  State,
  TransportKind: { stdio: 0 },
  WorkDoneProgress: { type: { method: "$/progress" } },
  WorkDoneProgressCreateRequest: { type: { method: "window/workDoneProgress/create" } },
};

const original = (Module as any)._load;
(Module as any)._load = function (request: string, ...rest: unknown[]) {
  if (request === "vscode") return vscode;
  if (request === "vscode-languageclient/node") return languageclient;
  return original.call(this, request, ...rest);
};
