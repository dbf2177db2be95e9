-- The README's Neovim snippet, as a new user pastes it (tests/test_editors.py
-- extracts it from README.md and writes it to CODEGEN_LSP_README_INIT, with
-- /path/to/codegen-lsp replaced by this repository): no `cmd`, so the plugin
-- finds the server itself; no model, so the server runs the shipped demo model,
-- whose real suggestion must show as ghost text in a Python file.

local init = os.getenv("CODEGEN_LSP_README_INIT")
local child

it("the README snippet starts the server, reports the demo model and shows its suggestion", function()
  if not init then
    skip("CODEGEN_LSP_README_INIT not set")
  end
  child = child_nvim()
  local root = vim.fn.tempname()
  vim.fn.mkdir(root .. "/.git", "p")
  vim.fn.writefile({ "def fibonacci(n):", "    if n < 2:", "        return n", "    return " }, root .. "/fib.py")
  child.cmd("source " .. init)
  child.cmd("edit " .. root .. "/fib.py")
  -- Typed before the server is up: the suggestion comes once it attaches.
  child.input("GA")
  local status = child.cmd("CodegenLspStatus")
  assert(status:find("state: starting", 1, true) or status:find("state: running", 1, true), status)
  wait_for("the demo model loaded", 60000, function()
    status = child.cmd("CodegenLspStatus")
    return status:find("model: the demo model (from default): ready, languages: python", 1, true)
  end)
  assert(status:find("(PATH", 1, true) or status:find("(the plugin's repository", 1, true), status)
  local ghost = wait_for("ghost text", 30000, function()
    return child.lua('return require("codegen_lsp.ghost").displayed(0) or false')
  end)
  local answer = child.lua([[
    local client = require("codegen_lsp").client(0)
    local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
    params.context = { triggerKind = 1 }
    local response = client:request_sync("textDocument/inlineCompletion", params, 20000, 0)
    local items = response and response.result and response.result.items or {}
    return items[1] and items[1].insertText or ""
  ]])
  assert(answer ~= "", "the demo model suggests nothing after `return `")
  eq(vim.split(answer, "\n"), ghost, "ghost text")
  io.write(("README snippet: the demo model's ghost after `    return `: %q\n"):format(answer))
  -- The ghost's highlight has a terminal colour and italic, for terminals without true colour.
  local hl = child.lua('return vim.api.nvim_get_hl(0, { name = "CodegenLspGhost", link = false })')
  assert(hl.ctermfg and hl.italic and hl.cterm and hl.cterm.italic, vim.inspect(hl))
  eq("CodegenLspGhostDefault", child.lua('return vim.api.nvim_get_hl(0, { name = "CodegenLspGhost" }).link'), "link")
end)
