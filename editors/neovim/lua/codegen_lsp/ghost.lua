-- Ghost text: one suggestion shown at the cursor, shortened while typed
-- characters match it, partly or wholly accepted.
--
-- The first line is an inline extmark at the cursor (Neovim 0.10+), further
-- lines are virt_lines below it. Nothing here talks to the server.

local M = {}

M.ns = vim.api.nvim_create_namespace("codegen_lsp_ghost")
M.hl = "CodegenLspGhost"
M.fallback_hl = "CodegenLspGhostDefault"

--- The ghost's look. CodegenLspGhost is a link (override it with `:hi link` or
--- nvim_set_hl) to CodegenLspGhostDefault: Comment's colours, plus a grey
--- terminal colour where the colour scheme gives Comment none (Neovim 0.11's
--- default scheme has only a true-colour one, so 256- and 16-colour terminals
--- showed the ghost exactly like typed code), and italic. Set again on :colorscheme.
function M.define_highlights()
  local comment = vim.api.nvim_get_hl(0, { name = "Comment", link = false })
  local hl = { fg = comment.fg, bg = comment.bg, ctermfg = comment.ctermfg, ctermbg = comment.ctermbg,
    italic = true, cterm = { italic = true } }
  if hl.ctermfg == nil then
    -- grey in a 256-colour terminal, "bright black" (dark grey) in a 16-colour one
    hl.ctermfg = ((vim.env.TERM or ""):find("256") or vim.env.COLORTERM) and 244 or 8
  end
  vim.api.nvim_set_hl(0, M.fallback_hl, hl)
  vim.api.nvim_set_hl(0, M.hl, { link = M.fallback_hl, default = true })
end
M.define_highlights()
vim.api.nvim_create_autocmd("ColorScheme", {
  group = vim.api.nvim_create_augroup("codegen_lsp_ghost", { clear = true }),
  callback = M.define_highlights,
})

-- The suggestion on screen, or nil. anchor_col is where the suggestion started
-- (0-based byte column); text is what remains to be inserted at col.
---@class codegen_lsp.Ghost
---@field buf integer
---@field row integer 0-based
---@field anchor_col integer 0-based byte column where the suggestion began
---@field col integer 0-based byte column where the remaining text goes
---@field full string the suggestion as the server gave it (from anchor_col)
---@field text string what remains to be inserted at col
M.current = nil

local function display(line, buf)
  -- Tabs in virtual text would show as ^I.
  return (line:gsub("\t", string.rep(" ", vim.bo[buf].tabstop)))
end

local function render(g)
  vim.api.nvim_buf_clear_namespace(g.buf, M.ns, 0, -1)
  local lines = vim.split(g.text, "\n", { plain = true })
  local opts = { hl_mode = "combine", right_gravity = false }
  if lines[1] ~= "" then
    opts.virt_text = { { display(lines[1], g.buf), M.hl } }
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { display(lines[i], g.buf), M.hl } })
    end
  end
  vim.api.nvim_buf_set_extmark(g.buf, M.ns, g.row, g.col, opts)
end

function M.clear()
  local g = M.current
  M.current = nil
  if g and vim.api.nvim_buf_is_valid(g.buf) then
    vim.api.nvim_buf_clear_namespace(g.buf, M.ns, 0, -1)
  end
end

--- Show text at (row, col) of buf; an empty text clears.
function M.show(buf, row, col, text)
  M.clear()
  if buf == 0 then
    buf = vim.api.nvim_get_current_buf()
  end
  if text == "" then
    return
  end
  M.current = { buf = buf, row = row, anchor_col = col, col = col, full = text, text = text }
  render(M.current)
end

--- After a change or cursor move: keep the ghost (shortened) when the text
--- typed since it appeared matches its start and the cursor sits right after
--- that text; otherwise clear it. Returns whether a ghost is still shown.
function M.sync()
  local g = M.current
  if not g then
    return false
  end
  local buf = vim.api.nvim_get_current_buf()
  local cursor = vim.api.nvim_win_get_cursor(0)
  local row, col = cursor[1] - 1, cursor[2]
  if buf ~= g.buf or row ~= g.row or col < g.anchor_col then
    M.clear()
    return false
  end
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  local typed = line:sub(g.anchor_col + 1, col)
  if g.full:sub(1, #typed) ~= typed or #typed >= #g.full then
    M.clear()
    return false
  end
  if col ~= g.col then
    g.col, g.text = col, g.full:sub(#typed + 1)
    render(g)
  end
  return true
end

-- How much of the remaining text each accept key takes.
M.parts = {
  all = function(text)
    return text
  end,
  word = function(text)
    return text:match("^\n[ \t]*") -- a line break with the next line's indent
      or text:match("^[ \t]*[%w_]+")
      or text:match("^[ \t]*[^%w_%s]+")
      or text:match("^[ \t]+")
      or text
  end,
  line = function(text)
    if text:sub(1, 1) == "\n" then
      return "\n" .. text:sub(2):match("^[^\n]*")
    end
    return text:match("^[^\n]*")
  end,
}

--- Insert part of the ghost (kind: "all" | "word" | "line") at the cursor and
--- keep the rest shown. Returns the inserted text, or nil when there was none.
function M.accept(kind)
  local g = M.current
  if not g or not M.sync() then
    return nil
  end
  local part = M.parts[kind](g.text)
  local lines = vim.split(part, "\n", { plain = true })
  vim.api.nvim_buf_set_text(g.buf, g.row, g.col, g.row, g.col, lines)
  local row = g.row + #lines - 1
  local col = (#lines == 1 and g.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  local rest = g.text:sub(#part + 1)
  if rest == "" then
    M.clear()
  else
    M.show(g.buf, row, col, rest)
  end
  return part
end

--- The ghost as displayed: {first line, further lines...}, read back from the extmark.
function M.displayed(buf)
  local marks = vim.api.nvim_buf_get_extmarks(buf or 0, M.ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local details = marks[1][4]
  local lines = { details.virt_text and details.virt_text[1][1] or "" }
  for _, virt_line in ipairs(details.virt_lines or {}) do
    table.insert(lines, virt_line[1][1])
  end
  return lines
end

return M
