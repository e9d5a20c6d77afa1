local status = require('podloop.status')
local config = require('podloop.config')

local function target(pod, fields)
  return vim.tbl_extend('force', {
    mapping = 'web',
    namespace = 'default',
    pod = pod,
    container = 'app',
    state = 'synced',
  }, fields or {})
end

local opts = config.defaults().statusline

describe('render', function()
  it('is empty without a status', function()
    eq('', status.render(nil, opts, 0))
  end)

  it('shows health, pod, last batch duration and time when idle', function()
    local at = 1700000000
    local text = status.render({
      health = 'ok',
      state = 'idle',
      quiescent = true,
      pending = 0,
      targets = { target('web-1', { lastSync = { files = 1, bytes = 12, ms = 42, at = at } }) },
    }, opts, 0)
    eq('podloop ✓ web-1 42ms ' .. os.date('%H:%M:%S', at), text)
  end)

  it('accepts milliseconds since the epoch for lastSync.at', function()
    eq(os.date('%H:%M:%S', 1700000000), status.format_clock(1700000000123))
  end)

  it('converts RFC 3339 times to local time', function()
    eq(os.date('%H:%M:%S', 1704164645), status.format_clock('2024-01-02T03:04:05Z'))
    eq(os.date('%H:%M:%S', 1704164645), status.format_clock('2024-01-02T05:04:05.123456+02:00'))
    eq(nil, status.format_clock('yesterday'))
  end)

  it('names one pod and counts the others', function()
    local text = status.render({
      health = 'ok',
      state = 'idle',
      targets = { target('web-1'), target('web-2'), target('web-2', { container = 'sidecar' }) },
    }, opts, 0)
    eq('podloop ✓ web-1 +1', text)
  end)

  it('spins while syncing and shows what is pending', function()
    local syncing = { health = 'ok', state = 'syncing', pending = 3, targets = { target('web-1', { state = 'syncing' }) } }
    eq('podloop ⠋ web-1 syncing 3', status.render(syncing, opts, 0))
    eq('podloop ⠙ web-1 syncing 3', status.render(syncing, opts, 1))
    eq('podloop ⠋ web-1 syncing 3', status.render(syncing, opts, #opts.spinner), 'wraps around')
  end)

  it('shows the error message, shortened', function()
    local long = 'no pods match `app=web` in `default`: ' .. string.rep('x', 100)
    local text = status.render({ health = 'error', state = 'idle', message = long, targets = {} }, opts, 0)
    eq('podloop ✗ ' .. long:sub(1, opts.max_message - 1) .. '…', text)
  end)

  it("falls back to a target's error when the message is empty", function()
    local text = status.render({
      health = 'warning',
      state = 'idle',
      message = '',
      targets = { target('web-1', { state = 'error', error = 'container has no tar' }) },
    }, opts, 0)
    eq('podloop ! web-1 container has no tar', text)
  end)

  it('shows paused with the pending count and disconnected', function()
    eq('podloop ⏸ paused, 2 pending', status.render({ health = 'ok', state = 'paused', pending = 2, targets = {} }, opts, 0))
    eq(
      'podloop ⊘ cluster unreachable',
      status.render({ health = 'error', state = 'disconnected', message = 'cluster unreachable', targets = {} }, opts, 0)
    )
  end)

  it('says so when no pod matches', function()
    eq('podloop ✓ no pods', status.render({ health = 'ok', state = 'idle', targets = {} }, opts, 0))
  end)

  it('follows custom icons and an empty prefix', function()
    local custom = config.resolve({ statusline = { prefix = '', icons = { ok = 'OK' }, show_pod = false } }).statusline
    eq('OK 5ms', status.render({ health = 'ok', state = 'idle', targets = { target('p', { lastSync = { ms = 5 } }) } }, custom, 0))
  end)
end)

describe('format_duration', function()
  it('is short', function()
    eq('42ms', status.format_duration(42))
    eq('1.5s', status.format_duration(1500))
    eq('2m05s', status.format_duration(125000))
    eq(nil, status.format_duration(nil))
  end)
end)

describe('degradation', function()
  it('announces each worsening once, not every batch', function()
    local sequence = { 'ok', 'error', 'error', 'warning', 'error', 'ok', 'warning', 'warning', 'error' }
    local expected = { false, true, false, false, false, false, true, false, true }
    local announced = 'ok'
    local got = {}
    for _, health in ipairs(sequence) do
      local notify
      notify, announced = status.degradation(announced, health)
      table.insert(got, notify)
    end
    eq(expected, got)
  end)

  it('the podloop/status handler notifies once and feeds the statusline', function()
    status._reset()
    local podloop = require('podloop')
    capture_notify(function()
      podloop.setup({ autostart = false })
    end)
    local handler = podloop.handlers()['podloop/status']
    local failing = { health = 'error', state = 'idle', message = 'exec forbidden', pending = 1, targets = { target('web-1') } }
    local seen = capture_notify(function()
      handler(nil, { health = 'ok', state = 'idle', targets = { target('web-1') } }, { client_id = 4242 })
      for _ = 1, 5 do
        handler(nil, failing, { client_id = 4242 })
      end
    end)
    eq(1, #seen, 'one notification for five failing batches')
    eq(vim.log.levels.ERROR, seen[1].level)
    contains(seen[1].message, 'exec forbidden')
    eq('podloop ✗ web-1 exec forbidden', podloop.statusline())
    status._reset()
  end)
end)

describe('update', function()
  it('keeps showing the last batch that carried files', function()
    status._reset()
    local carried = { files = 2, bytes = 20, ms = 31, at = 1700000000 }
    status.update(7, '/w', { health = 'ok', state = 'idle', targets = { target('web-1', { lastSync = carried }) } })
    local empty = { files = 0, bytes = 0, ms = 0, at = 1700000005 }
    local raw = { health = 'ok', state = 'idle', targets = { target('web-1', { lastSync = empty }) } }
    status.update(7, '/w', raw)
    eq(empty, status.get(7).targets[1].lastSync, 'the raw status is kept as sent')
    eq(carried, status.shown(7).targets[1].lastSync)
    eq('podloop ✓ web-1 31ms ' .. os.date('%H:%M:%S', 1700000000), status.render(status.shown(7), opts, 0))
    local newer = { files = 1, bytes = 5, ms = 9, at = 1700000010 }
    status.update(7, '/w', { health = 'ok', state = 'idle', targets = { target('web-1', { lastSync = newer }) } })
    eq(newer, status.shown(7).targets[1].lastSync)
    status._reset()
  end)
end)

describe('describe', function()
  it('lists every target with its last sync and error', function()
    local lines = status.describe('/work/app', {
      health = 'warning',
      state = 'idle',
      pending = 0,
      quiescent = true,
      message = 'one target failed',
      targets = {
        target('web-1', { lastSync = { files = 2, bytes = 30, ms = 12, at = 1700000000 } }),
        target('web-2', { state = 'error', error = 'permission denied writing /app/x' }),
      },
    })
    local text = table.concat(lines, '\n')
    contains(text, '/work/app')
    contains(text, '[web] default/web-1:app  synced')
    contains(text, 'last sync: 2 files, 30 bytes, 12ms')
    contains(text, '[web] default/web-2:app  error')
    contains(text, 'error: permission denied writing /app/x')
  end)
end)
