import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import {
  formatStats, resolveServerCommand, serverLogLine, serverSettings, shortModelName, statusText, venvPython,
} from "../src/config";

test("stats name each folder's model, where the setting came from and its state", () => {
  const text = formatStats({
    requests: 0, prompt_tokens: 0, reused_tokens: 0, prefilled_tokens: 0, generated_tokens: 0,
    folders: [
      { root: "/w", model: "the demo model", model_source: "default", state: "ready", error: null, languages: ["python"] },
      { root: "/v", model: "/m", model_source: "project file /v/.codegen-lsp.toml", state: "failed", error: "not found" },
    ],
  });
  assert.equal(text, "0 requests: 0 prompt tokens (0 reused, 0 prefilled), 0 generated\n" +
    "model: the demo model (from default): ready, languages: python [/w]\n" +
    "model: /m (from project file /v/.codegen-lsp.toml): failed [/v] - not found");
});

test("server log lines keep their level in the output channel; a traceback keeps the level before it", () => {
  assert.deepEqual(serverLogLine("2026-11-29 10:00:00,123 INFO codegen-lsp.server: loaded x in 0.2s"),
    { level: "info", text: "codegen-lsp.server: loaded x in 0.2s" });
  assert.equal(serverLogLine("2026-11-29 10:00:00,123 WARNING a: b").level, "warn");
  assert.equal(serverLogLine("2026-11-29 10:00:00,123 ERROR a: b").level, "error");
  assert.equal(serverLogLine("2026-11-29 10:00:00,123 DEBUG a: b").level, "debug");
  assert.deepEqual(serverLogLine('  File "x.py", line 3', "error"), { level: "error", text: '  File "x.py", line 3' });
  assert.equal(serverLogLine("plain text").level, "info");
});

test("the configured command wins, then a folder's .venv interpreter, then codegen-lsp on PATH", () => {
  const none = () => undefined;
  assert.deepEqual(resolveServerCommand(["/opt/cl", "serve", "--x"], ["/w"], none), { command: "/opt/cl", args: ["serve", "--x"] });
  assert.deepEqual(
    resolveServerCommand([], ["/a", "/b"], (f) => (f === "/b" ? "/b/.venv/bin/python" : undefined)),
    { command: "/b/.venv/bin/python", args: ["-m", "lsp_server", "serve"] },
  );
  assert.deepEqual(resolveServerCommand(undefined, ["/a"], none), { command: "codegen-lsp", args: ["serve"] });
});

test("a .venv counts only when its interpreter imports the server package", () => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), "codegen-lsp-"));
  assert.equal(venvPython(folder, () => true), undefined, "no .venv at all");
  fs.mkdirSync(path.join(folder, ".venv/bin"), { recursive: true });
  fs.writeFileSync(path.join(folder, ".venv/bin/python"), "");
  assert.equal(venvPython(folder, () => false), undefined);
  assert.equal(venvPython(folder, () => true), path.join(folder, ".venv/bin/python"));
  fs.rmSync(folder, { recursive: true });
});

test("only the server's keys that were set are sent", () => {
  const set: Record<string, unknown> = { model: "/m", quantization: "int8", serverCommand: ["x"], debounce_ms: 0 };
  assert.deepEqual(serverSettings((key) => set[key]), { model: "/m", quantization: "int8", debounce_ms: 0 });
});

test("stats and status texts", () => {
  const text = formatStats({
    requests: 3, prompt_tokens: 120, reused_tokens: 80, prefilled_tokens: 40, generated_tokens: 30, models: ["/m/tiny"],
    last: { prompt_tokens: 41, reused_tokens: 39, generated_tokens: 6, time_to_first_token_ms: 12.4, total_ms: 60.6 },
  });
  assert.equal(
    text,
    "3 requests: 120 prompt tokens (80 reused, 40 prefilled), 30 generated\nloaded: /m/tiny\n" +
      "last: 41 prompt tokens (39 reused), 6 generated, first token 12 ms, total 61 ms",
  );
  assert.equal(formatStats({ requests: 0, prompt_tokens: 0, reused_tokens: 0, prefilled_tokens: 0, generated_tokens: 0, last: {} }),
    "0 requests: 0 prompt tokens (0 reused, 0 prefilled), 0 generated");
  assert.equal(statusText({ kind: "loading", message: "loading santacoder", percentage: 42.4 }), "$(loading~spin) codegen-lsp: loading santacoder 42%");
  assert.equal(statusText({ kind: "ready", model: "/home/me/models/santacoder/" }), "$(sparkle) santacoder");
  assert.equal(shortModelName("Salesforce/codegen-350M-mono"), "Salesforce/codegen-350M-mono");
});
