// The real server over stdio, spoken to with vscode-languageserver-protocol
// (the library under vscode-languageclient), the way VS Code would: it must
// advertise inline completion, report model loading as progress, pull the
// `codegen-lsp` section and answer inline completion at the cursor.
//
// Needs CODEGEN_LSP_CMD (the codegen-lsp executable) and CODEGEN_LSP_TEST_MODEL
// (a tiny checkpoint directory); tests/test_editors.py sets both.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import {
  ConfigurationRequest,
  DidOpenTextDocumentNotification,
  InitializeRequest,
  InitializedNotification,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  ShutdownRequest,
  ExitNotification,
  StreamMessageReader,
  StreamMessageWriter,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  createProtocolConnection,
} from "vscode-languageserver-protocol/node";
import { MODEL_STATUS, ModelStatus, SECTION, STATS_METHOD } from "../src/config";

const serverCmd = process.env.CODEGEN_LSP_CMD;
const model = process.env.CODEGEN_LSP_TEST_MODEL;

test("inline completion from the real server", { skip: !(serverCmd && model) && "CODEGEN_LSP_CMD / CODEGEN_LSP_TEST_MODEL not set", timeout: 90000 }, async () => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), "codegen-lsp-vscode-"));
  const file = path.join(folder, "main.py");
  const text = "def add(a, b):\n    return a";
  fs.writeFileSync(file, text);
  const server = spawn(serverCmd!, ["serve"], { stdio: ["pipe", "pipe", "inherit"] });
  const connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));

  const pulled: unknown[] = [];
  connection.onRequest(ConfigurationRequest.type, (params) => {
    pulled.push(...params.items.map((item) => item.section));
    return params.items.map((item) => (item.section === SECTION ? { max_new_tokens: 6 } : null));
  });
  const progress: string[] = [];
  let loaded!: () => void;
  const modelLoaded = new Promise<void>((resolve) => (loaded = resolve));
  connection.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    connection.onProgress(WorkDoneProgress.type, token, (value) => {
      progress.push(value.kind);
      if (value.kind === "end") loaded();
    });
  });
  let statusOf!: (status: ModelStatus) => void;
  const modelStatus = new Promise<ModelStatus>((resolve) => (statusOf = resolve));
  connection.onNotification(MODEL_STATUS, (params: ModelStatus) => statusOf(params));
  connection.listen();

  try {
    const init = await connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      rootUri: pathToFileURL(folder).href,
      workspaceFolders: [{ uri: pathToFileURL(folder).href, name: "w" }],
      capabilities: {
        window: { workDoneProgress: true },
        workspace: { configuration: true },
        textDocument: { inlineCompletion: { dynamicRegistration: false } },
      },
      initializationOptions: { model, debounce_ms: 0, multiline: "never", ramble_stop: "off" },
    });
    assert.ok(init.capabilities.inlineCompletionProvider, "inlineCompletionProvider advertised");
    await connection.sendNotification(InitializedNotification.type, {});
    const uri = pathToFileURL(file).href;
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: "python", version: 1, text },
    });
    await modelLoaded;
    assert.deepEqual(progress, ["begin", "report", "report", "end"]);  // the load's percentage, 10 then 70
    assert.deepEqual(await modelStatus, { model, status: "ready", message: (await modelStatus).message });
    assert.ok(pulled.includes(SECTION), "the server pulled section codegen-lsp");

    const position = { line: 1, character: 12 };
    const result = await connection.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri },
      position,
      context: { triggerKind: InlineCompletionTriggerKind.Invoked },
    });
    const items = Array.isArray(result) ? result : result!.items;
    assert.equal(items.length, 1);
    const insert = items[0].insertText;
    assert.equal(typeof insert, "string");
    assert.ok((insert as string).length > 0, "a non-empty suggestion");
    assert.deepEqual(items[0].range, { start: position, end: position });

    const stats = await connection.sendRequest<{ requests: number; last: { generated_tokens: number } }>(STATS_METHOD, {});
    assert.equal(stats.requests, 1);
    assert.ok(stats.last.generated_tokens >= 1 && stats.last.generated_tokens <= 6, `max_new_tokens pulled: ${stats.last.generated_tokens}`);
    await connection.sendRequest(ShutdownRequest.type);
    await connection.sendNotification(ExitNotification.type);
  } finally {
    connection.dispose();
    server.kill();
    fs.rmSync(folder, { recursive: true });
  }
});
