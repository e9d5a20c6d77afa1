local config = require('podloop.config')

describe('defaults', function()
  it('start `podloop lsp` for folders with podloop.toml', function()
    local cfg, err, unknown = config.resolve(nil)
    eq(nil, err)
    eq({ 'podloop', 'lsp' }, cfg.cmd)
    eq({ 'podloop.toml' }, cfg.root_markers)
    eq(true, cfg.autostart)
    eq(true, cfg.notify)
    eq({}, unknown)
  end)
end)

describe('merging', function()
  it('replaces lists whole instead of splicing them', function()
    local cfg = config.resolve({ cmd = { '/opt/podloop' } })
    eq({ '/opt/podloop' }, cfg.cmd)
  end)

  it('merges nested tables key by key', function()
    local cfg = config.resolve({ statusline = { icons = { ok = 'OK' }, prefix = '' } })
    eq('OK', cfg.statusline.icons.ok)
    eq('✗', cfg.statusline.icons.error, 'untouched sibling keeps its default')
    eq('', cfg.statusline.prefix)
    eq(true, cfg.statusline.show_pod)
  end)

  it('passes init_options to the server', function()
    local cfg = config.resolve({ init_options = { namespace = 'dev', paused = true, logLevel = 'debug' } })
    eq({ namespace = 'dev', paused = true, logLevel = 'debug' }, cfg.init_options)
  end)

  it('does not let one call leak into the defaults of the next', function()
    config.resolve({ statusline = { icons = { ok = 'X' } } })
    eq('✓', config.resolve({}).statusline.icons.ok)
  end)
end)

describe('unknown keys', function()
  it('are collected with their full path and otherwise ignored', function()
    local cfg, err, unknown = config.resolve({ colour = 'red', statusline = { bogus = 1 }, cmd = { 'podloop', 'lsp' } })
    eq(nil, err)
    eq({ 'colour', 'statusline.bogus' }, unknown)
    eq(nil, cfg.colour)
  end)

  it('are warned about once per session by setup()', function()
    config._reset_warnings()
    local podloop = require('podloop')
    local seen = capture_notify(function()
      eq(true, podloop.setup({ autostart = false, typo_option = true }))
      eq(true, podloop.setup({ autostart = false, typo_option = true }))
    end)
    eq(1, #seen, 'notifications')
    eq(vim.log.levels.WARN, seen[1].level)
    contains(seen[1].message, '`typo_option`')
  end)

  it('a new unknown key after that is still reported', function()
    local podloop = require('podloop')
    local seen = capture_notify(function()
      podloop.setup({ autostart = false, typo_option = true, other_typo = 1 })
    end)
    eq(1, #seen)
    contains(seen[1].message, '`other_typo`')
    eq(nil, seen[1].message:find('typo_option', 1, true), 'already reported key is not repeated')
  end)
end)

describe('bad types', function()
  local cases = {
    { { cmd = 'podloop lsp' }, '`cmd` must be a non-empty list of strings', 'got string' },
    { { cmd = {} }, '`cmd` must be a non-empty list of strings', 'got table' },
    { { cmd = { 'podloop', 3 } }, '`cmd` must be a non-empty list of strings', nil },
    { { notify = 'yes' }, '`notify` must be a boolean', 'got string' },
    { { log_lines = 0 }, '`log_lines` must be a positive whole number', nil },
    { { on_attach = true }, '`on_attach` must be a function', nil },
    { { filetypes = 'lua' }, '`filetypes` must be a list of filetypes', nil },
    { { statusline = 'short' }, '`statusline` must be a table', 'got string' },
    { { statusline = { icons = { ok = 1 } } }, '`statusline.icons.ok` must be a string', 'got number' },
    { { init_options = { logLevel = 'loud' } }, '`init_options.logLevel` must be one of', nil },
    { { init_options = { paused = 'no' } }, '`init_options.paused` must be a boolean', nil },
  }
  for _, case in ipairs(cases) do
    it('rejects ' .. vim.inspect(case[1], { newline = ' ', indent = '' }), function()
      local cfg, err = config.resolve(case[1])
      eq(nil, cfg)
      contains(err, case[2])
      if case[3] then
        contains(err, case[3])
      end
    end)
  end

  it('rejects a non-table', function()
    local cfg, err = config.resolve('podloop')
    eq(nil, cfg)
    contains(err, 'setup() expects a table of options (got string)')
  end)

  it('setup() shows the error and keeps the previous config', function()
    local podloop = require('podloop')
    capture_notify(function()
      podloop.setup({ autostart = false, cmd = { '/first/podloop', 'lsp' } })
    end)
    local ok
    local seen = capture_notify(function()
      ok = podloop.setup({ cmd = 42 })
    end)
    eq(false, ok)
    eq(1, #seen)
    eq(vim.log.levels.ERROR, seen[1].level)
    contains(seen[1].message, "`cmd` must be a non-empty list of strings")
    contains(seen[1].message, "(got number: 42)")
    eq({ '/first/podloop', 'lsp' }, podloop.get_config().cmd)
  end)
end)
