-- codegen-lsp for Neovim 0.10+: starts `codegen-lsp serve` per project root,
-- asks it for textDocument/inlineCompletion while you type in insert mode and
-- shows the answer as ghost text (ghost.lua). On Neovim 0.12+ the built-in
-- vim.lsp.inline_completion can show it instead (builtin_display = true).

local ghost = require("codegen_lsp.ghost")

local M = {}

M.defaults = {
  -- Command that runs the server; nil: <root>/.venv/bin/codegen-lsp when it
  -- exists, else `codegen-lsp` on PATH.
  cmd = nil,
  -- Server settings (keys as in the README: model, device, quantization, ...),
  -- sent as initializationOptions and as workspace/configuration `codegen-lsp`.
  settings = {},
  -- Files that mark a project root; the server starts once per root.
  root_markers = { ".codegen-lsp.toml", "pyproject.toml", ".git" },
  filetypes = nil, -- nil: every file-backed buffer
  auto_trigger = true, -- ask after each change in insert mode
  debounce_ms = 30, -- client side; the server debounces too (debounce_ms setting)
  builtin_display = false, -- Neovim 0.12+: let vim.lsp.inline_completion show suggestions
  keys = {
    accept = "<M-l>",
    accept_word = "<M-w>",
    accept_line = "<M-j>",
    dismiss = "<C-]>",
    request = "<M-\\>",
  },
}

M.config = vim.deepcopy(M.defaults)
M.enabled = true
local NAME = "codegen_lsp"
local INLINE = "textDocument/inlineCompletion"
-- The server's names (lsp_server/methods.py; tests/test_protocol_names.py checks them).
local SECTION = "codegen-lsp"
local STATS = "codegen/stats"
local MODEL_STATUS = "codegen/modelStatus"

-- Per client, for :CodegenLspStatus: the latest $/progress value, server message and
-- MODEL_STATUS ({ model, status = "ready" | "failed", message }).
local progress, messages, model_status = {}, {}, {}
local pending = { timer = nil, client = nil, id = nil } -- the request in flight

-- Neovim 0.11 made client methods take self (client:request); 0.10 did not.
local function call(client, method, ...)
  if vim.fn.has("nvim-0.11") == 1 then
    return client[method](client, ...)
  end
  return client[method](...)
end

local function byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return character
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false) -- 0.11
  if ok then
    return col
  end
  return vim.str_byteindex(line, character, encoding == "utf-16") -- 0.10
end

function M.client(buf)
  return vim.lsp.get_clients({ bufnr = buf or 0, name = NAME })[1]
end

local function default_cmd(root)
  local venv = root .. "/.venv/bin/codegen-lsp"
  if vim.fn.executable(venv) == 1 then
    return { venv, "serve" }
  end
  return { "codegen-lsp", "serve" }
end

-- Server start ---------------------------------------------------------------

function M.start(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local root = vim.fs.root(buf, M.config.root_markers) or vim.fn.getcwd()
  local cmd = M.config.cmd or default_cmd(root)
  if vim.fn.executable(cmd[1]) == 0 then
    vim.notify_once(
      ("codegen-lsp: server command not found: %s (set `cmd` in setup, or `pip install -e .` into the project's .venv)"):format(cmd[1]),
      vim.log.levels.ERROR
    )
    return nil
  end
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.textDocument.inlineCompletion = { dynamicRegistration = false }
  return vim.lsp.start({
    name = NAME,
    cmd = cmd,
    root_dir = root,
    settings = { [SECTION] = M.config.settings },
    init_options = M.config.settings,
    capabilities = capabilities,
    handlers = {
      ["window/showMessage"] = function(err, result, ctx)
        messages[ctx.client_id] = result.message
        return vim.lsp.handlers["window/showMessage"](err, result, ctx)
      end,
      [MODEL_STATUS] = function(_, result, ctx)
        model_status[ctx.client_id] = result
      end,
    },
    on_attach = function(client, bufnr)
      if M.config.builtin_display and vim.lsp.inline_completion then
        vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
      end
    end,
  }, { bufnr = buf })
end

-- Requests ---------------------------------------------------------------------

local function cancel_pending()
  if pending.timer then
    pending.timer:stop()
    pending.timer:close()
    pending.timer = nil
  end
  if pending.client and pending.id then
    pcall(call, pending.client, "cancel_request", pending.id) -- the client may have stopped
  end
  pending.client, pending.id = nil, nil
end

--- The text to show at the cursor from one InlineCompletionItem, or nil when
--- the item does not apply here (its range starts elsewhere, or disagrees with the line).
local function text_at_cursor(item, line, row, col, encoding)
  local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
  if type(text) ~= "string" then
    return nil
  end
  if item.range then
    local start = item.range.start
    if start.line ~= row then
      return nil
    end
    local typed = line:sub(byte_col(line, start.character, encoding) + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
  end
  return text
end

--- Ask the server for a suggestion at the cursor now (trigger: 1 invoked, 2 automatic).
function M.request(trigger)
  cancel_pending()
  local buf = vim.api.nvim_get_current_buf()
  local client = M.client(buf)
  if not (M.enabled and client) then
    return
  end
  local win = vim.api.nvim_get_current_win()
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = trigger or 1 }
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local cursor = vim.api.nvim_win_get_cursor(win)
  local ok, id
  ok, id = call(client, "request", INLINE, params, function(err, result)
    if pending.id == id then
      pending.client, pending.id = nil, nil
    end
    if err or not result then
      return
    end
    -- Drop an answer to a question that no longer stands.
    local now = vim.api.nvim_win_get_cursor(0)
    if vim.api.nvim_get_current_buf() ~= buf or vim.api.nvim_buf_get_changedtick(buf) ~= tick
      or now[1] ~= cursor[1] or now[2] ~= cursor[2] or not vim.startswith(vim.fn.mode(), "i") then
      return
    end
    local items = result.items or result
    local row, col = cursor[1] - 1, cursor[2]
    local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
    local text = items[1] and text_at_cursor(items[1], line, row, col, client.offset_encoding)
    ghost.show(buf, row, col, text or "")
  end, buf)
  if ok then
    pending.client, pending.id = client, id
  end
end

local function schedule_request()
  cancel_pending()
  pending.timer = vim.uv.new_timer()
  pending.timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(function()
    if pending.timer then
      pending.timer:close()
      pending.timer = nil
    end
    if vim.startswith(vim.fn.mode(), "i") then
      M.request(2)
    end
  end))
end

-- Keys ---------------------------------------------------------------------------

function M.map_keys(buf)
  local keys = M.config.keys
  local function map(lhs, fn, desc)
    if lhs then
      vim.keymap.set("i", lhs, fn, { buffer = buf, silent = true, desc = "codegen-lsp: " .. desc })
    end
  end
  local builtin = M.config.builtin_display and vim.lsp.inline_completion
  local function accept(kind)
    return function()
      if builtin and kind == "all" then
        vim.lsp.inline_completion.get()
      else
        ghost.accept(kind)
      end
    end
  end
  map(keys.accept, accept("all"), "accept suggestion")
  map(keys.accept_word, accept("word"), "accept next word")
  map(keys.accept_line, accept("line"), "accept line")
  map(keys.dismiss, function()
    cancel_pending()
    ghost.clear()
  end, "dismiss")
  map(keys.request, function()
    M.request(1)
  end, "suggest now")
end

-- Commands -----------------------------------------------------------------------

--- What :CodegenLspStatus prints, as lines.
function M.status_lines()
  local lines = { ("codegen-lsp: %s"):format(M.enabled and "enabled" or "disabled") }
  local clients = vim.lsp.get_clients({ name = NAME })
  if #clients == 0 then
    table.insert(lines, "no server running")
  end
  for _, client in ipairs(clients) do
    local settings = client.config.settings[SECTION] or {}
    table.insert(lines, ("server %d: %s (root %s)"):format(client.id, table.concat(client.config.cmd, " "), client.config.root_dir))
    table.insert(lines, ("  model: %s"):format(settings.model and settings.model ~= "" and settings.model or "(default)"))
    local p = progress[client.id]
    if p then
      local pct = p.percentage and (" %d%%"):format(p.percentage) or ""
      table.insert(lines, ("  loading: %s%s%s"):format(p.message or p.title or "", pct, p.kind == "end" and " (done)" or ""))
    end
    local status = model_status[client.id]
    if status then
      table.insert(lines, ("  model status: %s%s"):format(status.status, status.status == "failed" and (" (" .. status.message .. ")") or ""))
    end
    if messages[client.id] then
      table.insert(lines, "  message: " .. messages[client.id])
    end
    local response = call(client, "request_sync", STATS, vim.empty_dict(), 2000)
    local stats = response and response.result
    if stats then
      table.insert(lines, ("  stats: %d requests, %d prompt tokens (%d reused, %d prefilled), %d generated"):format(
        stats.requests, stats.prompt_tokens, stats.reused_tokens, stats.prefilled_tokens, stats.generated_tokens))
      if stats.models and #stats.models > 0 then
        table.insert(lines, "  loaded: " .. table.concat(stats.models, ", "))
      end
      local last = stats.last or {}
      if last.total_ms then
        table.insert(lines, ("  last: %d prompt tokens (%d reused), %d generated, first token %.0f ms, total %.0f ms"):format(
          last.prompt_tokens, last.reused_tokens, last.generated_tokens, last.time_to_first_token_ms, last.total_ms))
      end
    else
      table.insert(lines, "  stats: no answer")
    end
  end
  return lines
end

function M.toggle()
  M.enabled = not M.enabled
  if not M.enabled then
    cancel_pending()
    ghost.clear()
  end
  vim.notify("codegen-lsp " .. (M.enabled and "enabled" or "disabled"))
end

-- Setup ----------------------------------------------------------------------------

local function wanted(buf)
  if vim.bo[buf].buftype ~= "" or vim.api.nvim_buf_get_name(buf) == "" then
    return false
  end
  local fts = M.config.filetypes
  return fts == nil or vim.tbl_contains(fts, vim.bo[buf].filetype)
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  local group = vim.api.nvim_create_augroup("codegen_lsp", { clear = true })
  local function on(events, callback)
    vim.api.nvim_create_autocmd(events, { group = group, callback = callback })
  end
  on({ "BufReadPost", "BufNewFile", "FileType" }, function(ev)
    if wanted(ev.buf) and not M.client(ev.buf) then
      M.start(ev.buf)
    end
  end)
  on("LspAttach", function(ev)
    local client = vim.lsp.get_client_by_id(ev.data.client_id)
    if client and client.name == NAME then
      M.map_keys(ev.buf)
    end
  end)
  on("LspProgress", function(ev)
    local value = ev.data and ev.data.params and ev.data.params.value
    if type(value) == "table" then
      local previous = progress[ev.data.client_id] or {}
      progress[ev.data.client_id] = vim.tbl_extend("force", previous, value)
    end
  end)
  on("TextChangedI", function(ev)
    local builtin = M.config.builtin_display and vim.lsp.inline_completion
    if not ghost.sync() and M.enabled and M.config.auto_trigger and not builtin and M.client(ev.buf) then
      schedule_request()
    end
  end)
  on("CursorMovedI", function()
    ghost.sync()
  end)
  on({ "InsertLeave", "BufLeave" }, function()
    cancel_pending()
    ghost.clear()
  end)
  vim.api.nvim_create_user_command("CodegenLspStatus", function()
    vim.api.nvim_echo({ { table.concat(M.status_lines(), "\n") } }, true, {})
  end, { desc = "codegen-lsp: model, loading progress and codegen/stats" })
  vim.api.nvim_create_user_command("CodegenLspToggle", M.toggle, { desc = "codegen-lsp: turn suggestions on or off" })
  -- Buffers already open when setup runs.
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and wanted(buf) and not M.client(buf) then
      M.start(buf)
    end
  end
end

return M
