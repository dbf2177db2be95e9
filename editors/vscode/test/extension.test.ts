import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import * as fake from "./fake-vscode"; // first: installs the fake modules
import * as extension from "../src/extension";

const status = () => fake.statusItems[0];
const lastClient = () => fake.clients[fake.clients.length - 1];

// Each test activates the extension in a fresh fake VS Code, with these settings.
beforeEach(async () => {
  fake.reset();
  Object.assign(fake.settings, { model: "/models/tiny", quantization: "int8", serverCommand: [] });
  await extension.activate({ subscriptions: [] } as any);
});

afterEach(async () => {
  await extension.deactivate();
});

test("activate starts the server from PATH with the settings the user set", () => {
  assert.equal(fake.clients.length, 1);
  const client = lastClient();
  assert.deepEqual(client.serverOptions, { command: "codegen-lsp", args: ["serve"] });
  assert.deepEqual(client.clientOptions.initializationOptions, { model: "/models/tiny", quantization: "int8" });
  assert.deepEqual([...fake.commands.keys()].sort(), ["codegen-lsp.restart", "codegen-lsp.showStats"]);
  assert.equal(status().text, "$(loading~spin) codegen-lsp");
  assert.equal(status().command, "codegen-lsp.showStats");
});

test("workspace/configuration answers the server's keys only", () => {
  const configuration = lastClient().clientOptions.middleware.workspace.configuration;
  const answer = configuration({ items: [{ section: "codegen-lsp", scopeUri: "file:///w" }, { section: "python" }] });
  assert.deepEqual(answer, [{ model: "/models/tiny", quantization: "int8" }, null]);
});

test("loading progress shows in the status bar, then the model codegen/modelStatus names", async () => {
  const client = lastClient();
  client.requestHandlers.get("window/workDoneProgress/create")!({ token: "load/1" });
  const progress = client.progressHandlers.get("load/1")!;
  progress({ kind: "begin", title: "codegen-lsp", message: "loading /models/tiny" });
  assert.equal(status().text, "$(loading~spin) codegen-lsp: loading /models/tiny");
  progress({ kind: "end", message: "loaded /models/tiny in 1.2s" });
  client.notificationHandlers.get("codegen/modelStatus")!({ model: "/models/tiny", status: "ready", message: "loaded" });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(status().text, "$(sparkle) tiny");
});

test("a failed load is read from codegen/modelStatus, whatever the progress message says", () => {
  const client = lastClient();
  client.requestHandlers.get("window/workDoneProgress/create")!({ token: "load/2" });
  client.progressHandlers.get("load/2")!({ kind: "end", message: "loaded? no" });
  client.notificationHandlers.get("codegen/modelStatus")!({ model: "/models/x", status: "failed", message: "cannot load /models/x" });
  assert.equal(status().text, "$(error) codegen-lsp");
  assert.equal(status().tooltip, "codegen-lsp: cannot load /models/x");
});

test("show stats asks codegen/stats and shows it", async () => {
  const text = await fake.commands.get("codegen-lsp.showStats")!();
  assert.equal(text, "2 requests: 10 prompt tokens (4 reused, 6 prefilled), 12 generated\nloaded: /models/tiny");
  assert.match(fake.messages[fake.messages.length - 1].text, /^codegen-lsp: 2 requests/);
});

test("a settings change is pushed to the server; a new server command restarts it", async () => {
  const change = (key: string) => ({ affectsConfiguration: (s: string) => s === "codegen-lsp" || s === `codegen-lsp.${key}` });
  fake.settings.max_new_tokens = 16;
  await fake.configListeners[0](change("max_new_tokens"));
  assert.deepEqual(lastClient().notifications, [
    { method: "workspace/didChangeConfiguration", params: { settings: { "codegen-lsp": { model: "/models/tiny", quantization: "int8", max_new_tokens: 16 } } } },
  ]);
  const first = lastClient();
  fake.settings.serverCommand = ["/opt/venv/bin/codegen-lsp", "serve"];
  await fake.configListeners[0](change("serverCommand"));
  assert.equal(first.state, fake.State.Stopped);
  assert.equal(fake.clients.length, 2);
  assert.deepEqual(lastClient().serverOptions, { command: "/opt/venv/bin/codegen-lsp", args: ["serve"] });
});

test("a server that cannot start is reported with what to do", async () => {
  fake.setFailNextStart(true);
  await fake.commands.get("codegen-lsp.restart")!();
  assert.equal(status().text, "$(error) codegen-lsp");
  const error = fake.messages.filter((m) => m.level === "error").pop()!;
  assert.match(error.text, /ENOENT.*codegen-lsp\.serverCommand/);
});
