-- Ghost text display, shortening, clearing and the accept keys, with a
-- suggestion put in place by hand (no server): multi-line suggestions are
-- rare from a tiny random model, so they are checked here.

local child

local function setup_child()
  child = child_nvim()
  child.lua([[
    local plugin = require("codegen_lsp")
    plugin.setup({ filetypes = {} }) -- no server in this file
    vim.cmd("edit " .. vim.fn.tempname() .. ".py")
    plugin.map_keys(0)
  ]])
end

-- Enter insert mode at the end of `line` and show `suggestion` there.
local function ghost_after(line, suggestion)
  child.lua("vim.api.nvim_buf_set_lines(0, 0, -1, false, { ... })", line)
  child.input("<Esc>A")
  child.settle()
  child.lua([[
    local row, col = unpack(vim.api.nvim_win_get_cursor(0))
    require("codegen_lsp.ghost").show(0, row - 1, col, ...)
  ]], suggestion)
end

local function displayed()
  return child.lua('return require("codegen_lsp.ghost").displayed(0) or false')
end

local function lines()
  return child.lua("return vim.api.nvim_buf_get_lines(0, 0, -1, false)")
end

it("shows the first line inline at the cursor and the rest as virt_lines", function()
  setup_child()
  ghost_after("def f(x):", "\n    y = x + 1\n    return y")
  eq({ "", "    y = x + 1", "    return y" }, displayed(), "ghost")
  local mark = child.lua([[
    local m = vim.api.nvim_buf_get_extmarks(0, require("codegen_lsp.ghost").ns, 0, -1, { details = true })[1]
    return { m[2], m[3] }
  ]])
  eq({ 0, 9 }, mark, "extmark position (row, col)")
  ghost_after("x = fo", "o(1, 2)")
  eq({ "o(1, 2)" }, displayed(), "ghost")
  eq("inline", child.lua([[
    return vim.api.nvim_buf_get_extmarks(0, require("codegen_lsp.ghost").ns, 0, -1, { details = true })[1][4].virt_text_pos
  ]]), "virt_text_pos")
end)

it("keeps the ghost shortened while typed characters match, clears it on the first that does not", function()
  ghost_after("x = fo", "o(1, 2)")
  child.input("o(")
  child.settle()
  eq({ "x = foo(" }, lines(), "buffer")
  eq({ "1, 2)" }, displayed(), "ghost after typing o(")
  child.input("9")
  child.settle()
  eq(false, displayed(), "ghost after a non-matching character")
end)

it("clears on cursor movement and on leaving insert mode", function()
  ghost_after("x = fo", "o(1, 2)")
  child.input("<Left>")
  child.settle()
  eq(false, displayed(), "ghost after <Left>")
  ghost_after("x = fo", "o(1, 2)")
  child.input("<Esc>")
  child.settle()
  eq(false, displayed(), "ghost after <Esc>")
end)

it("accepts the next word, then the line, then the rest", function()
  ghost_after("def f(x):", "\n    value = x + 1\n    return value")
  child.input("<M-w>")
  child.settle()
  eq({ "def f(x):", "    " }, lines(), "after the first accept-word (line break + indent)")
  eq({ "value = x + 1", "    return value" }, displayed(), "ghost")
  child.input("<M-w>")
  child.settle()
  eq({ "def f(x):", "    value" }, lines(), "after accept-word")
  eq({ " = x + 1", "    return value" }, displayed(), "ghost")
  child.input("<M-j>")
  child.settle()
  eq({ "def f(x):", "    value = x + 1" }, lines(), "after accept-line")
  eq({ "", "    return value" }, displayed(), "ghost")
  child.input("<M-l>")
  child.settle()
  eq({ "def f(x):", "    value = x + 1", "    return value" }, lines(), "after accept-all")
  eq(false, displayed(), "ghost after accept-all")
  eq({ 3, 16 }, child.lua("return vim.api.nvim_win_get_cursor(0)"), "cursor at the end of the insertion")
  eq("i", child.lua("return vim.fn.mode()"), "still in insert mode")
end)

it("typing after a partial accept still shortens; dismiss clears", function()
  ghost_after("print(", "'hello')")
  child.input("<M-w>") -- takes "'"
  child.input("he")
  child.settle()
  eq({ "print('he" }, lines(), "buffer")
  eq({ "llo')" }, displayed(), "ghost")
  child.input("<C-]>")
  child.settle()
  eq(false, displayed(), "ghost after dismiss")
  eq({ "print('he" }, lines(), "buffer unchanged by dismiss")
end)
