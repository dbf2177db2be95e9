// Plain functions with no `vscode` import: which server to start, the settings
// it gets, and how its figures read. Unit-tested directly (test/config.test.ts).

import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

// The names the server uses on the wire (../../lsp_server/methods.py; tests/test_protocol_names.py checks them).
export const SECTION = "codegen-lsp";
export const STATS_METHOD = "codegen/stats";
export const MODEL_STATUS = "codegen/modelStatus";

/** The params of MODEL_STATUS, sent when a model load ends. */
export interface ModelStatus {
  model: string;
  status: "ready" | "failed";
  message: string;
}

/** The server's settings keys (../../lsp_server/settings.py); the extension sends exactly these. */
export const SERVER_KEYS = [
  "model", "device", "dtype", "quantization", "compile", "max_new_tokens",
  "max_prompt_tokens", "fim", "debounce_ms", "cache_memory_mb", "multiline",
  "backend", "endpoint", "remote_model", "api_key_env", "request_timeout_ms", "languages",
  "ramble_stop", "speculative",
] as const;

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";
const PYTHON_LEVELS: Record<string, LogLevel> = {
  DEBUG: "debug", INFO: "info", WARNING: "warn", ERROR: "error", CRITICAL: "error",
};

/**
 * The level of one line the server wrote to stderr (`2026-11-29 10:00:00,123 INFO name: text`,
 * Python's logging), and the text to log without the time and level (the output channel adds
 * its own). A line without a level (a traceback's) keeps the level of the line before it.
 */
export function serverLogLine(line: string, previous: LogLevel = "info"): { level: LogLevel; text: string } {
  const match = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$/.exec(line);
  if (!match) {
    return { level: previous, text: line };
  }
  return { level: PYTHON_LEVELS[match[1]], text: match[2] };
}

export interface ServerCommand {
  command: string;
  args: string[];
}

/** The editor settings the server reads: only keys the user set (so project files still win over defaults). */
export function serverSettings(inspect: (key: string) => unknown): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const value = inspect(key);
    if (value !== undefined) {
      settings[key] = value;
    }
  }
  return settings;
}

/** A folder's .venv interpreter when it can import the server package. */
export function venvPython(folder: string, canImport: (python: string) => boolean = importsServer): string | undefined {
  for (const relative of [".venv/bin/python", ".venv/Scripts/python.exe"]) {
    const python = path.join(folder, relative);
    if (fs.existsSync(python) && canImport(python)) {
      return python;
    }
  }
  return undefined;
}

function importsServer(python: string): boolean {
  try {
    execFileSync(python, ["-c", "import lsp_server.cli"], { stdio: "ignore", timeout: 20000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * The command that runs the server: the configured one when set, else the
 * first workspace folder's .venv interpreter that has the package, else
 * `codegen-lsp serve` from PATH.
 */
export function resolveServerCommand(
  configured: string[] | undefined,
  folders: string[],
  findPython: (folder: string) => string | undefined = (folder) => venvPython(folder),
): ServerCommand {
  if (configured && configured.length > 0) {
    return { command: configured[0], args: configured.slice(1) };
  }
  for (const folder of folders) {
    const python = findPython(folder);
    if (python) {
      return { command: python, args: ["-m", "lsp_server", "serve"] };
    }
  }
  return { command: "codegen-lsp", args: ["serve"] };
}

/** The fields of codegen/stats the extension shows (DESIGN.md: contracts). */
export interface Stats {
  requests: number;
  prompt_tokens: number;
  reused_tokens: number;
  prefilled_tokens: number;
  generated_tokens: number;
  models?: string[];
  /** Per workspace folder: the model the server uses, where that setting came from, its state. */
  folders?: { root: string | null; model: string; model_source: string; state: string; error: string | null; languages?: string[] | null }[];
  last?: {
    prompt_tokens?: number;
    reused_tokens?: number;
    generated_tokens?: number;
    time_to_first_token_ms?: number;
    total_ms?: number;
    model?: string;
  };
}

export function formatStats(stats: Stats): string {
  const lines = [
    `${stats.requests} requests: ${stats.prompt_tokens} prompt tokens ` +
      `(${stats.reused_tokens} reused, ${stats.prefilled_tokens} prefilled), ${stats.generated_tokens} generated`,
  ];
  if (stats.models && stats.models.length > 0) {
    lines.push(`loaded: ${stats.models.join(", ")}`);
  }
  for (const folder of stats.folders ?? []) {
    const languages = folder.languages ? `, languages: ${folder.languages.join(", ")}` : "";
    const where = folder.root ? ` [${folder.root}]` : "";
    lines.push(`model: ${folder.model} (from ${folder.model_source}): ${folder.state}${languages}${where}` +
      (folder.error ? ` - ${folder.error}` : ""));
  }
  const last = stats.last;
  if (last && last.total_ms !== undefined) {
    lines.push(
      `last: ${last.prompt_tokens} prompt tokens (${last.reused_tokens} reused), ${last.generated_tokens} generated, ` +
        `first token ${Math.round(last.time_to_first_token_ms ?? 0)} ms, total ${Math.round(last.total_ms)} ms`,
    );
  }
  return lines.join("\n");
}

/** Status bar text for the model's state. */
export type ModelState =
  | { kind: "starting" }
  | { kind: "loading"; message?: string; percentage?: number }
  | { kind: "ready"; model: string }
  | { kind: "failed"; message: string }
  | { kind: "stopped" };

export function statusText(state: ModelState): string {
  switch (state.kind) {
    case "starting":
      return "$(loading~spin) codegen-lsp";
    case "loading": {
      const pct = state.percentage !== undefined ? ` ${Math.round(state.percentage)}%` : "";
      return `$(loading~spin) codegen-lsp: ${state.message ?? "loading"}${pct}`;
    }
    case "ready":
      return `$(sparkle) ${shortModelName(state.model)}`;
    case "failed":
      return "$(error) codegen-lsp";
    case "stopped":
      return "$(circle-slash) codegen-lsp";
  }
}

/** "Salesforce/codegen-350M-mono" stays; "/home/me/models/santacoder" becomes "santacoder". */
export function shortModelName(model: string): string {
  if (model.startsWith("/") || model.startsWith(".") || /^[A-Za-z]:[\\/]/.test(model)) {
    return path.basename(model.replace(/[\\/]+$/, "")) || model;
  }
  return model;
}
