-- Headless Lua unit-test runner (no plenary/busted needed):
--   nvim --headless -i NONE -n -u editors/neovim/tests/run.lua
-- Runs every tests/unit/*_spec.lua, prints one line per test and exits with
-- status 1 if any failed (0 otherwise).
local this_file = debug.getinfo(1, 'S').source:sub(2)
local tests_dir = vim.fn.fnamemodify(this_file, ':p:h')
local plugin_root = vim.fn.fnamemodify(tests_dir, ':h')
vim.opt.runtimepath:prepend(plugin_root)
vim.opt.swapfile = false

local results = { passed = 0, failed = 0, lines = {} }
local current_group = ''

local function out(line)
  io.stdout:write(line .. '\n')
end

_G.describe = function(name, body)
  local previous = current_group
  current_group = previous == '' and name or (previous .. ' / ' .. name)
  body()
  current_group = previous
end

_G.it = function(name, body)
  local full = current_group .. ': ' .. name
  local ok, err = xpcall(body, debug.traceback)
  if ok then
    results.passed = results.passed + 1
    out('ok   ' .. full)
  else
    results.failed = results.failed + 1
    out('FAIL ' .. full .. '\n' .. tostring(err))
  end
end

_G.eq = function(expected, actual, what)
  if not vim.deep_equal(expected, actual) then
    error(('%sexpected %s, got %s'):format(what and (what .. ': ') or '', vim.inspect(expected), vim.inspect(actual)), 2)
  end
end

_G.contains = function(haystack, needle, what)
  if type(haystack) ~= 'string' or not haystack:find(needle, 1, true) then
    error(('%sexpected %s to contain %s'):format(what and (what .. ': ') or '', vim.inspect(haystack), vim.inspect(needle)), 2)
  end
end

-- Replaces vim.notify for the duration of `body`; returns what was notified.
_G.capture_notify = function(body)
  local seen = {}
  local original = vim.notify
  vim.notify = function(message, level)
    table.insert(seen, { message = message, level = level })
  end
  local ok, err = pcall(body)
  vim.notify = original
  if not ok then
    error(err, 0)
  end
  return seen
end

-- PODLOOP_LUA_SPEC_DIR lets the Rust wrapper prove the runner fails on a
-- failing spec without planting one in the source tree.
local spec_dir = os.getenv('PODLOOP_LUA_SPEC_DIR') or (tests_dir .. '/unit')
local specs = vim.fn.glob(spec_dir .. '/*_spec.lua', false, true)
table.sort(specs)
for _, spec in ipairs(specs) do
  local chunk, load_err = loadfile(spec)
  if not chunk then
    results.failed = results.failed + 1
    out('FAIL loading ' .. spec .. ': ' .. tostring(load_err))
  else
    current_group = vim.fn.fnamemodify(spec, ':t:r')
    local ok, err = xpcall(chunk, debug.traceback)
    if not ok then
      results.failed = results.failed + 1
      out('FAIL running ' .. spec .. ': ' .. tostring(err))
    end
    current_group = ''
  end
end

out(('%d passed, %d failed'):format(results.passed, results.failed))
if results.failed > 0 or results.passed == 0 then
  vim.cmd('cquit 1')
else
  vim.cmd('qall!')
end
