-- codegen-lsp for Neovim 0.10+: starts `codegen-lsp serve` per project root,
-- asks it for textDocument/inlineCompletion while you type in insert mode and
-- shows the answer as ghost text (ghost.lua). On Neovim 0.12+ the built-in
-- vim.lsp.inline_completion can show it instead (builtin_display = true).

local ghost = require("codegen_lsp.ghost")

local M = {}

M.defaults = {
  -- Command that runs the server; nil: the first of `codegen-lsp` on PATH, the
  -- .venv of the repository this plugin comes from, the project's .venv.
  cmd = nil,
  -- Server settings (keys as in the README: model, device, quantization, ...),
  -- sent as initializationOptions and as workspace/configuration `codegen-lsp`.
  settings = {},
  -- Files that mark a project root; the server starts once per root.
  root_markers = { ".codegen-lsp.toml", "pyproject.toml", ".git" },
  filetypes = nil, -- nil: every file-backed buffer
  auto_trigger = true, -- ask after each change in insert mode, and on entering it
  -- Client side wait before asking. 0: ask at once; the server debounces (its
  -- debounce_ms setting) and a newer request replaces the one before.
  debounce_ms = 0,
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

-- Per client, for :CodegenLspStatus: the latest $/progress value and MODEL_STATUS
-- ({ model, status = "ready" | "failed", message }).
local progress, model_status = {}, {}
-- Per project root: how its server was found and started, for :CodegenLspStatus.
---@type table<string, {cmd: string[]?, found: string?, tried: string[], state: string, client_id: integer?, error: string?}>
M.servers = {}
-- This file is <repo>/editors/neovim/lua/codegen_lsp/init.lua: the plugin's own repository.
local REPO = (debug.getinfo(1, "S").source:sub(2):match("^(.*)/editors/neovim/lua/codegen_lsp/init%.lua$"))
local pending = { timer = nil, client = nil, id = nil } -- the request in flight
local ask_in_insert_mode -- defined with the requests, below

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

--- The server command when setup gives none: `codegen-lsp` on PATH, then the
--- .venv of the plugin's own repository, then the project's .venv.
--- Returns the command (or nil) and the places tried, in order.
function M.find_cmd(root)
  local candidates = { { "PATH", "codegen-lsp" } }
  if REPO then
    table.insert(candidates, { "the plugin's repository", REPO .. "/.venv/bin/codegen-lsp" })
  end
  table.insert(candidates, { "the project", root .. "/.venv/bin/codegen-lsp" })
  local tried = {}
  for _, c in ipairs(candidates) do
    local path = vim.fn.exepath(c[2])
    table.insert(tried, ("%s (%s)"):format(c[2], c[1]))
    if path ~= "" then
      return { path, "serve" }, tried, c[1]
    end
  end
  return nil, tried, nil
end

-- Server start ---------------------------------------------------------------

function M.start(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local root = vim.fs.root(buf, M.config.root_markers) or vim.fn.getcwd()
  local cmd, tried, found = M.config.cmd, {}, "setup's cmd"
  if not cmd then
    cmd, tried, found = M.find_cmd(root)
  elseif vim.fn.executable(cmd[1]) == 0 then
    tried, cmd = { cmd[1] .. " (setup's cmd)" }, nil
  end
  local server = M.servers[root]
  if not (server and server.cmd and vim.deep_equal(server.cmd, cmd) and (server.state == "starting" or server.state == "running")) then
    server = { cmd = cmd, found = found, tried = tried, state = "not started" }
    M.servers[root] = server
  end
  if not cmd then
    server.state = "not started"
    server.error = "server command not found; tried " .. table.concat(tried, ", ")
    vim.notify_once(("codegen-lsp: %s. Set `cmd` in setup or install the project (make install)"):format(server.error),
      vim.log.levels.WARN)
    return nil
  end
  if server.state ~= "running" then
    server.state = "starting"
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
        if result.type <= vim.lsp.protocol.MessageType.Warning then
          server.error = result.message
        end
        return vim.lsp.handlers["window/showMessage"](err, result, ctx)
      end,
      [MODEL_STATUS] = function(_, result, ctx)
        model_status[ctx.client_id] = result
        -- The model is ready: what was typed while it loaded gets its suggestion now.
        local current = M.client()
        if result.status == "ready" and current and current.id == ctx.client_id then
          ask_in_insert_mode()
        end
      end,
    },
    on_init = function(client)
      server.client_id, server.state = client.id, "running"
    end,
    on_exit = function(code, signal)
      server.state = ("exited (code %s%s)"):format(code, signal ~= 0 and (", signal " .. signal) or "")
      if code ~= 0 then
        server.error = "the server " .. server.state .. "; see :LspLog"
      end
    end,
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
  if M.config.debounce_ms <= 0 then
    M.request(2) -- no timer: the server debounces, and this request replaces the one before
    return
  end
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

--- A suggestion now, when the current buffer is in insert mode and asks by itself.
ask_in_insert_mode = function()
  if vim.startswith(vim.fn.mode(), "i") and M.auto() then
    schedule_request()
  end
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

local function client_for(root, server)
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    if client.id == server.client_id or client.config.root_dir == root then
      return client
    end
  end
end

--- What :CodegenLspStatus prints, as lines: for each project root, how its server was
--- found, its state (starting, loading with progress, running), the model the server uses
--- and where that setting came from, the last error and the latest codegen/stats.
function M.status_lines()
  local lines = { ("codegen-lsp: %s"):format(M.enabled and "enabled" or "disabled") }
  if next(M.servers) == nil then
    table.insert(lines, "no server started (no file opened yet, or its filetype is not in `filetypes`)")
  end
  for root, server in pairs(M.servers) do
    table.insert(lines, ("project %s"):format(root))
    if server.cmd then
      table.insert(lines, ("  server: %s (%s%s)"):format(table.concat(server.cmd, " "), server.found or "",
        #server.tried > 1 and ("; tried " .. table.concat(server.tried, ", ")) or ""))
    end
    local client = client_for(root, server)
    local state = server.state
    local p = client and progress[client.id]
    if p and p.kind ~= "end" then
      state = ("loading %s%s"):format(p.message or p.title or "", p.percentage and (" %d %%"):format(p.percentage) or "")
    end
    table.insert(lines, "  state: " .. state)
    local status = client and model_status[client.id]
    if status then
      table.insert(lines, ("  model status: %s%s"):format(status.status, status.status == "failed" and (" (" .. status.message .. ")") or ""))
    end
    local response = client and client.initialized and call(client, "request_sync", STATS, vim.empty_dict(), 2000)
    local stats = response and response.result
    for _, folder in ipairs(stats and stats.folders or {}) do
      local where = folder.root and folder.root ~= vim.NIL and folder.root ~= root and (" [" .. folder.root .. "]") or ""
      local langs = type(folder.languages) == "table" and (", languages: " .. table.concat(folder.languages, ", ")) or ""
      table.insert(lines, ("  model: %s (from %s): %s%s%s"):format(folder.model, folder.model_source, folder.state, langs, where))
      if type(folder.error) == "string" then
        table.insert(lines, "  model error: " .. folder.error)
      end
    end
    if server.error then
      table.insert(lines, "  last error: " .. server.error)
    end
    if stats then
      table.insert(lines, ("  stats: %d requests, %d prompt tokens (%d reused, %d prefilled), %d generated"):format(
        stats.requests, stats.prompt_tokens, stats.reused_tokens, stats.prefilled_tokens, stats.generated_tokens))
      local last = stats.last or {}
      if last.total_ms then
        table.insert(lines, ("  last: %d prompt tokens (%d reused), %d generated, first token %.0f ms, total %.0f ms"):format(
          last.prompt_tokens, last.reused_tokens, last.generated_tokens, last.time_to_first_token_ms, last.total_ms))
      end
    elseif client and client.initialized then
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

--- Whether suggestions are asked for by themselves in buf (the plugin shows them itself).
function M.auto(buf)
  local builtin = M.config.builtin_display and vim.lsp.inline_completion
  return M.enabled and M.config.auto_trigger and not builtin and M.client(buf or 0) ~= nil
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
      -- Text typed while the server was starting gets its suggestion now.
      if ev.buf == vim.api.nvim_get_current_buf() then
        vim.schedule(ask_in_insert_mode)
      end
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
    if not ghost.sync() and M.auto(ev.buf) then
      schedule_request()
    end
  end)
  on("InsertEnter", function(ev)
    if M.auto(ev.buf) then
      vim.schedule(schedule_request) -- once the cursor has its insert-mode place
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
