-- A small spec runner: `nvim --headless -l tests/run.lua tests/*_spec.lua`.
-- Each spec file calls it(name, fn); a test fails when fn raises. Specs drive
-- a second Neovim (child) over RPC, so keys go through real input handling
-- and autocommands fire as they do for a user.

local here = debug.getinfo(1, "S").source:sub(2):match("(.*)/tests/run.lua$") or "."
PLUGIN_DIR = vim.fn.fnamemodify(here, ":p"):gsub("/$", "")

local tests = {}
function it(name, fn)
  table.insert(tests, { name = name, fn = fn })
end

function eq(expected, actual, what)
  if not vim.deep_equal(expected, actual) then
    error(("%s: expected %s, got %s"):format(what or "value", vim.inspect(expected), vim.inspect(actual)), 2)
  end
end

function wait_for(what, timeout_ms, fn)
  local value
  local ok = vim.wait(timeout_ms, function()
    value = fn()
    return value ~= nil and value ~= false
  end, 20)
  if not ok then
    error(("timed out after %d ms waiting for %s"):format(timeout_ms, what), 2)
  end
  return value
end

local children = {} -- the children a spec file started: stopped after it

--- A fresh Neovim driven over RPC, with the plugin on its runtimepath.
function child_nvim()
  local chan = vim.fn.jobstart({ vim.v.progpath, "--embed", "--headless", "--clean", "-n" }, { rpc = true })
  assert(chan > 0, "cannot start a child nvim")
  local child = { chan = chan }
  function child.lua(code, ...)
    return vim.rpcrequest(chan, "nvim_exec_lua", code, { ... })
  end
  function child.input(keys)
    return vim.rpcrequest(chan, "nvim_input", keys)
  end
  function child.cmd(command)
    return vim.rpcrequest(chan, "nvim_exec2", command, { output = true }).output
  end
  -- Typed keys are queued: wait until the child has consumed them.
  function child.settle()
    wait_for("typeahead consumed", 5000, function()
      return not vim.rpcrequest(chan, "nvim_get_mode").blocking and child.lua("return vim.fn.getchar(1) == 0")
    end)
  end
  -- Its language servers first (they would outlive it), then the child.
  function child.stop()
    pcall(child.lua, "vim.lsp.stop_client(vim.lsp.get_clients())")
    vim.fn.jobstop(chan)
  end
  child.lua("vim.opt.runtimepath:prepend(...)", PLUGIN_DIR)
  table.insert(children, child)
  return child
end

local failures, skipped = 0, 0
function skip(reason)
  error({ skip = reason })
end

for _, file in ipairs(_G.arg) do
  tests = {}
  dofile(file)
  for _, t in ipairs(tests) do
    local start = vim.uv.hrtime()
    local ok, err = xpcall(t.fn, function(e)
      return type(e) == "table" and e or debug.traceback(tostring(e), 2)
    end)
    local ms = (vim.uv.hrtime() - start) / 1e6
    if ok then
      io.write(("ok    %s: %s (%.0f ms)\n"):format(vim.fn.fnamemodify(file, ":t"), t.name, ms))
    elseif type(err) == "table" and err.skip then
      skipped = skipped + 1
      io.write(("skip  %s: %s (%s)\n"):format(vim.fn.fnamemodify(file, ":t"), t.name, err.skip))
    else
      failures = failures + 1
      io.write(("FAIL  %s: %s\n%s\n"):format(vim.fn.fnamemodify(file, ":t"), t.name, tostring(err)))
    end
  end
  if _G.after_file then
    pcall(_G.after_file)
    _G.after_file = nil
  end
  for _, child in ipairs(children) do
    child.stop()
  end
  children = {}
end
io.write(("%d failed, %d skipped\n"):format(failures, skipped))
io.flush()
os.exit(failures > 0 and 1 or 0)
