"""The names the server and its editor clients (editors/vscode, editors/neovim) share on the wire.

tests/test_protocol_names.py checks that both clients spell them as here.
"""

# The settings section: workspace/configuration's `section`, and the key editors may wrap
# initializationOptions and didChangeConfiguration settings in.
SECTION = "codegen-lsp"

# Request, no params: totals since start and the latest completion's figures (DESIGN.md, contracts).
STATS = "codegen/stats"

# Notification from the server when a model load ends:
# {"model": name, "status": "ready" | "failed", "message": what to show}.
MODEL_STATUS = "codegen/modelStatus"
READY, FAILED = "ready", "failed"

CUSTOM_METHODS = (STATS, MODEL_STATUS)
