-- Options for require('podloop').setup(): defaults, merging and validation.
--
-- Pure functions only (no side effects besides the remembered set of unknown
-- keys), so the unit tests can exercise every rule without a server.

local M = {}

local function is_list_of_strings(value, allow_empty)
  if type(value) ~= 'table' then
    return false
  end
  local count = 0
  for key, item in pairs(value) do
    if type(key) ~= 'number' or type(item) ~= 'string' or item == '' then
      return false
    end
    count = count + 1
  end
  if count ~= #value then
    return false
  end
  return allow_empty or count > 0
end

-- Each entry: the expected shape, how to describe it in an error, and for
-- nested tables their own schema. `optional` keys default to nil.
local schema = {
  cmd = { check = function(v) return is_list_of_strings(v, false) end, expect = 'a non-empty list of strings, e.g. { "podloop", "lsp" }' },
  root_markers = { check = function(v) return is_list_of_strings(v, false) end, expect = 'a non-empty list of file names, e.g. { "podloop.toml" }' },
  filetypes = { optional = true, check = function(v) return is_list_of_strings(v, true) end, expect = 'a list of filetypes, or nil for every file under a podloop root' },
  autostart = { check = function(v) return type(v) == 'boolean' end, expect = 'a boolean' },
  notify = { check = function(v) return type(v) == 'boolean' end, expect = 'a boolean' },
  log_lines = {
    check = function(v) return type(v) == 'number' and v >= 1 and math.floor(v) == v end,
    expect = 'a positive whole number',
  },
  on_attach = { optional = true, check = function(v) return type(v) == 'function' end, expect = 'a function(client, bufnr)' },
  capabilities = { optional = true, check = function(v) return type(v) == 'table' end, expect = 'a table of LSP client capabilities' },
  init_options = {
    nested = {
      context = { optional = true, check = function(v) return type(v) == 'string' end, expect = 'a kubeconfig context name' },
      namespace = { optional = true, check = function(v) return type(v) == 'string' end, expect = 'a namespace name' },
      logLevel = {
        optional = true,
        check = function(v)
          return v == 'error' or v == 'warn' or v == 'info' or v == 'debug' or v == 'trace'
        end,
        expect = 'one of "error", "warn", "info", "debug", "trace"',
      },
      paused = { optional = true, check = function(v) return type(v) == 'boolean' end, expect = 'a boolean' },
    },
  },
  statusline = {
    nested = {
      prefix = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
      show_pod = { check = function(v) return type(v) == 'boolean' end, expect = 'a boolean' },
      max_message = {
        check = function(v) return type(v) == 'number' and v >= 1 and math.floor(v) == v end,
        expect = 'a positive whole number',
      },
      spinner = { check = function(v) return is_list_of_strings(v, false) end, expect = 'a non-empty list of strings' },
      icons = {
        nested = {
          ok = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
          warning = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
          error = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
          paused = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
          disconnected = { check = function(v) return type(v) == 'string' end, expect = 'a string' },
        },
      },
    },
  },
}

function M.defaults()
  return {
    cmd = { 'podloop', 'lsp' },
    root_markers = { 'podloop.toml' },
    filetypes = nil,
    autostart = true,
    notify = true,
    log_lines = 1000,
    on_attach = nil,
    capabilities = nil,
    init_options = {},
    statusline = {
      prefix = 'podloop',
      show_pod = true,
      max_message = 40,
      spinner = { '⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏' },
      icons = { ok = '✓', warning = '!', error = '✗', paused = '⏸', disconnected = '⊘' },
    },
  }
end

-- Merges `user` onto `base` following `rules`. Lists are replaced whole (a
-- user's `cmd` must not be spliced into the default one); only tables with a
-- nested schema are merged key by key.
local function merge(base, user, rules, prefix, unknown)
  for key, value in pairs(user) do
    local path = prefix .. tostring(key)
    local rule = type(key) == 'string' and rules[key] or nil
    if not rule then
      table.insert(unknown, path)
    elseif rule.nested then
      if type(value) ~= 'table' then
        return ('podloop: option `%s` must be a table (got %s)'):format(path, type(value))
      end
      base[key] = base[key] or {}
      local err = merge(base[key], value, rule.nested, path .. '.', unknown)
      if err then
        return err
      end
    elseif not rule.check(value) then
      return ('podloop: option `%s` must be %s (got %s: %s)'):format(path, rule.expect, type(value), vim.inspect(value))
    else
      base[key] = value
    end
  end
  return nil
end

--- Merge `opts` onto the defaults.
--- Returns the resolved config and the sorted list of unknown keys, or nil and
--- an error message naming the offending option and what it must be.
function M.resolve(opts)
  if opts == nil then
    opts = {}
  end
  if type(opts) ~= 'table' then
    return nil, ('podloop: setup() expects a table of options (got %s)'):format(type(opts))
  end
  local resolved = M.defaults()
  local unknown = {}
  local err = merge(resolved, opts, schema, '', unknown)
  if err then
    return nil, err
  end
  table.sort(unknown)
  return resolved, nil, unknown
end

-- Unknown keys already reported this session: calling setup() again with the
-- same typo must not nag a second time.
local already_warned = {}

--- The unknown keys not warned about before; marks them as warned.
function M.take_new_unknown(unknown)
  local fresh = {}
  for _, key in ipairs(unknown) do
    if not already_warned[key] then
      already_warned[key] = true
      table.insert(fresh, key)
    end
  end
  return fresh
end

function M.unknown_keys_message(keys)
  return ('podloop: ignoring unknown option%s %s (editors/neovim/README.md lists the options)'):format(
    #keys == 1 and '' or 's',
    '`' .. table.concat(keys, '`, `') .. '`'
  )
end

-- For tests: forget which keys were already reported.
function M._reset_warnings()
  already_warned = {}
end

return M
