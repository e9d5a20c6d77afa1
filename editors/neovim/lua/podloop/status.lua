-- The latest `podloop/status` of every client, and how to show it.
--
-- `render` is a pure function of the status, the options and the spinner
-- frame, so the statusline is unit-tested without a server or a clock.

local M = {}

local health_rank = { ok = 0, warning = 1, error = 2 }

-- client_id -> { status = <podloop/status payload>, root = <folder> }
local by_client = {}
-- client_id -> the worst health already announced with vim.notify
local announced = {}

local function shorten(text, max)
  text = tostring(text or ''):gsub('%s+', ' ')
  if #text <= max then
    return text
  end
  -- Cut on a UTF-8 character boundary so the statusline never shows a
  -- broken byte sequence.
  local cut = max - 1
  while cut > 0 and text:byte(cut + 1) and text:byte(cut + 1) >= 0x80 and text:byte(cut + 1) < 0xC0 do
    cut = cut - 1
  end
  return text:sub(1, cut) .. '…'
end

--- Milliseconds as a short human duration: 42ms, 1.3s, 2m05s.
function M.format_duration(ms)
  if type(ms) ~= 'number' then
    return nil
  end
  if ms < 1000 then
    return ('%dms'):format(math.floor(ms + 0.5))
  elseif ms < 60000 then
    return ('%.1fs'):format(ms / 1000)
  end
  local seconds = math.floor(ms / 1000 + 0.5)
  return ('%dm%02ds'):format(math.floor(seconds / 60), seconds % 60)
end

-- Seconds east of UTC for the local time zone, now.
local function utc_offset_seconds()
  local now = os.time()
  local utc = os.date('!*t', now)
  utc.isdst = false
  return os.difftime(now, os.time(utc))
end

--- `lastSync.at` as local wall-clock time "HH:MM:SS". The server may send
--- an RFC 3339 string or a Unix time in seconds or milliseconds.
function M.format_clock(at)
  if type(at) == 'number' then
    local seconds = at > 1e11 and at / 1000 or at
    return os.date('%H:%M:%S', math.floor(seconds))
  end
  if type(at) ~= 'string' then
    return nil
  end
  local y, mo, d, h, mi, s, zone = at:match('^(%d+)%-(%d+)%-(%d+)[T ](%d+):(%d+):(%d+)[%.%d]*(.*)$')
  if not y then
    return nil
  end
  local offset = 0
  if zone ~= '' and zone ~= 'Z' and zone ~= 'z' then
    local sign, zh, zm = zone:match('^([+-])(%d%d):?(%d%d)$')
    if not sign then
      return nil
    end
    offset = (tonumber(zh) * 3600 + tonumber(zm) * 60) * (sign == '-' and -1 or 1)
  end
  local as_if_local = os.time({
    year = tonumber(y),
    month = tonumber(mo),
    day = tonumber(d),
    hour = tonumber(h),
    min = tonumber(mi),
    sec = tonumber(s),
    isdst = false,
  })
  local utc_epoch = as_if_local - offset + utc_offset_seconds()
  return os.date('%H:%M:%S', utc_epoch)
end

local function pods_label(targets)
  local names, seen = {}, {}
  for _, target in ipairs(targets or {}) do
    if type(target.pod) == 'string' and target.pod ~= '' and not seen[target.pod] then
      seen[target.pod] = true
      table.insert(names, target.pod)
    end
  end
  if #names == 0 then
    return nil
  end
  if #names == 1 then
    return names[1]
  end
  return ('%s +%d'):format(names[1], #names - 1)
end

-- The most recent sync across targets: the one with the latest `at`, else the
-- first that has one.
local function latest_sync(targets)
  local best
  for _, target in ipairs(targets or {}) do
    local last = target.lastSync
    if type(last) == 'table' then
      if not best or (type(last.at) == type(best.at) and last.at ~= nil and last.at > best.at) then
        best = last
      end
    end
  end
  return best
end

local function first_target_error(targets)
  for _, target in ipairs(targets or {}) do
    if type(target.error) == 'string' and target.error ~= '' then
      return target.error
    end
  end
  return nil
end

--- The statusline text for one status payload. `frame` picks the spinner
--- character while syncing. Returns '' when there is no status.
function M.render(status, opts, frame)
  if type(status) ~= 'table' then
    return ''
  end
  opts = opts or require('podloop.config').defaults().statusline
  local icons = opts.icons
  local parts = {}
  if opts.prefix ~= '' then
    table.insert(parts, opts.prefix)
  end

  local state = status.state
  local health = status.health
  local targets = status.targets
  if state == 'syncing' then
    local spinner = opts.spinner
    table.insert(parts, spinner[((frame or 0) % #spinner) + 1])
  elseif state == 'paused' then
    table.insert(parts, icons.paused)
  elseif state == 'disconnected' then
    table.insert(parts, icons.disconnected)
  else
    table.insert(parts, icons[health] or icons.error)
  end

  local pods = opts.show_pod and pods_label(targets) or nil
  if pods then
    table.insert(parts, pods)
  end

  if state == 'syncing' then
    local pending = tonumber(status.pending) or 0
    table.insert(parts, pending > 0 and ('syncing %d'):format(pending) or 'syncing')
  elseif state == 'paused' then
    local pending = tonumber(status.pending) or 0
    table.insert(parts, pending > 0 and ('paused, %d pending'):format(pending) or 'paused')
  elseif state == 'disconnected' or health == 'error' or health == 'warning' then
    local why = status.message
    if type(why) ~= 'string' or why == '' then
      why = first_target_error(targets) or (state == 'disconnected' and 'disconnected' or health)
    end
    table.insert(parts, shorten(why, opts.max_message))
  else
    local last = latest_sync(targets)
    if last then
      local took = M.format_duration(last.ms)
      local at = M.format_clock(last.at)
      if took then
        table.insert(parts, took)
      end
      if at then
        table.insert(parts, at)
      end
    elseif not pods then
      table.insert(parts, 'no pods')
    end
  end
  return table.concat(parts, ' ')
end

--- Whether moving from `previous` to `current` health deserves a
--- notification: only when it gets worse than anything already announced,
--- so a run of failing batches produces one message, not one each.
--- Returns (notify?, new_announced).
function M.degradation(announced_health, current)
  local now_rank = health_rank[current] or 2
  local seen_rank = health_rank[announced_health] or 0
  if now_rank == 0 then
    -- Recovered: the next degradation is news again.
    return false, 'ok'
  end
  if now_rank > seen_rank then
    return true, current
  end
  return false, announced_health
end

local function target_key(target)
  return table.concat({ tostring(target.mapping), tostring(target.namespace), tostring(target.pod), tostring(target.container) }, '\0')
end

-- The status as the statusline shows it: a batch that carried no files (the
-- echo of a save the server already sent, a sync-all that found nothing to
-- do) does not hide the duration and time of the last batch that did.
local function with_last_carrying_sync(status, previous_carrying)
  local carrying = {}
  if type(status) ~= 'table' or type(status.targets) ~= 'table' then
    return status, carrying
  end
  local shown = vim.deepcopy(status)
  for _, target in ipairs(shown.targets) do
    local key = target_key(target)
    local last = target.lastSync
    if type(last) == 'table' and (tonumber(last.files) or 0) > 0 then
      carrying[key] = last
    elseif previous_carrying[key] then
      carrying[key] = previous_carrying[key]
      target.lastSync = previous_carrying[key]
    end
  end
  return shown, carrying
end

--- Record a status from `client_id`. Returns (status, should_notify).
function M.update(client_id, root, status)
  local previous = by_client[client_id]
  local shown, carrying = with_last_carrying_sync(status, previous and previous.carrying or {})
  by_client[client_id] = { status = status, shown = shown, carrying = carrying, root = root }
  local notify, new_announced = M.degradation(announced[client_id] or 'ok', status and status.health)
  announced[client_id] = new_announced
  return status, notify
end

function M.forget(client_id)
  by_client[client_id] = nil
  announced[client_id] = nil
end

--- The latest status exactly as the server sent it.
function M.get(client_id)
  local entry = by_client[client_id]
  return entry and entry.status or nil
end

--- The latest status as the statusline shows it (see with_last_carrying_sync).
function M.shown(client_id)
  local entry = by_client[client_id]
  return entry and entry.shown or nil
end

--- Every known status: list of { client_id, root, status }, by root.
function M.all()
  local list = {}
  for client_id, entry in pairs(by_client) do
    table.insert(list, { client_id = client_id, root = entry.root, status = entry.status, shown = entry.shown })
  end
  table.sort(list, function(a, b)
    return tostring(a.root) < tostring(b.root)
  end)
  return list
end

function M.any_syncing()
  for _, entry in pairs(by_client) do
    if type(entry.status) == 'table' and entry.status.state == 'syncing' then
      return true
    end
  end
  return false
end

--- Lines describing a status in full, for :PodloopStatus.
function M.describe(root, status)
  local lines = { ('podloop — %s'):format(root or '?') }
  if type(status) ~= 'table' then
    table.insert(lines, '  no status received yet')
    return lines
  end
  table.insert(lines, ('  health: %s   state: %s   pending: %s%s'):format(
    tostring(status.health),
    tostring(status.state),
    tostring(status.pending or 0),
    status.quiescent and '   (quiescent)' or ''
  ))
  if type(status.message) == 'string' and status.message ~= '' then
    table.insert(lines, '  ' .. status.message)
  end
  local targets = status.targets or {}
  if #targets == 0 then
    table.insert(lines, '  no targets')
  end
  for _, t in ipairs(targets) do
    table.insert(lines, ('  [%s] %s/%s:%s  %s'):format(
      tostring(t.mapping),
      tostring(t.namespace),
      tostring(t.pod),
      tostring(t.container),
      tostring(t.state)
    ))
    local last = t.lastSync
    if type(last) == 'table' then
      table.insert(lines, ('      last sync: %s files, %s bytes, %s at %s'):format(
        tostring(last.files),
        tostring(last.bytes),
        M.format_duration(last.ms) or '?',
        M.format_clock(last.at) or tostring(last.at)
      ))
    end
    if type(t.error) == 'string' and t.error ~= '' then
      table.insert(lines, '      error: ' .. t.error)
    end
  end
  return lines
end

function M._reset()
  by_client = {}
  announced = {}
end

return M
