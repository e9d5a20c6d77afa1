-- podloop for Neovim: starts `podloop lsp` for files under a folder with a
-- `podloop.toml`, shows its status, and exposes its commands.
--
-- Works on Neovim 0.7 (vim.lsp.start_client + buf_attach_client) and uses
-- vim.lsp.start on 0.8+, where it reuses a client per root by itself.

local config = require('podloop.config')
local status = require('podloop.status')

local M = {}

local state = {
  setup_called = false,
  config = nil,
  -- root folder -> client id (0.7 has no vim.lsp.start to remember it)
  clients_by_root = {},
  -- client id -> list of `window/logMessage` lines, oldest first
  logs = {},
  -- Which missing-binary messages were already shown: once per session.
  reported_missing = {},
  spinner_frame = 0,
  spinner_timer = nil,
  -- command name -> { err = ..., result = ... } of the latest reply, for
  -- callers that want to wait on it (tests, scripts).
  last_reply = {},
}

local has_08 = vim.fn.has('nvim-0.8') == 1 and vim.lsp.start ~= nil
local has_011 = vim.fn.has('nvim-0.11') == 1

local function current_config()
  return state.config or config.defaults()
end

local function notify(message, level)
  vim.notify(message, level or vim.log.levels.INFO, { title = 'podloop' })
end

-- Method-call syntax changed in 0.11 (client:request); 0.7-0.10 only have the
-- field-function form.
local function client_request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function client_is_stopped(client)
  if has_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

--- Every running podloop client.
function M.clients()
  local all
  if vim.lsp.get_clients then
    all = vim.lsp.get_clients({ name = 'podloop' })
  else
    all = {}
    for _, client in pairs(vim.lsp.get_active_clients()) do
      if client.name == 'podloop' then
        table.insert(all, client)
      end
    end
  end
  table.sort(all, function(a, b)
    return a.id < b.id
  end)
  return all
end

--- The nearest folder at or above `path` that holds one of `markers`
--- (default: podloop.toml), or nil. Written by hand: 0.7 has no vim.fs.
function M.find_root(path, markers)
  markers = markers or current_config().root_markers
  -- Buffers like health://, term://, fugitive:// are not files.
  if type(path) ~= 'string' or path == '' or path:match('^%a[%w+.-]*://') then
    return nil
  end
  local dir = vim.fn.fnamemodify(path, ':p')
  if dir:sub(1, 1) ~= '/' then
    return nil
  end
  local stat = vim.loop.fs_stat(dir)
  if not stat or stat.type ~= 'directory' then
    dir = vim.fn.fnamemodify(dir, ':h')
  end
  dir = dir:gsub('(.)/+$', '%1')
  while true do
    for _, marker in ipairs(markers) do
      local candidate = (dir == '/' and '' or dir) .. '/' .. marker
      local marker_stat = vim.loop.fs_stat(candidate)
      if marker_stat and marker_stat.type == 'file' then
        return dir
      end
    end
    local parent = vim.fn.fnamemodify(dir, ':h')
    if parent == dir or parent == '' then
      return nil
    end
    dir = parent
  end
end

local function redraw_status()
  pcall(vim.cmd, 'redrawstatus!')
  pcall(vim.api.nvim_exec_autocmds, 'User', { pattern = 'PodloopStatus', modeline = false })
end

local function stop_spinner()
  if state.spinner_timer then
    state.spinner_timer:stop()
    state.spinner_timer:close()
    state.spinner_timer = nil
  end
end

local function update_spinner()
  if not status.any_syncing() then
    stop_spinner()
    return
  end
  if state.spinner_timer then
    return
  end
  state.spinner_timer = vim.loop.new_timer()
  state.spinner_timer:start(
    100,
    100,
    vim.schedule_wrap(function()
      state.spinner_frame = state.spinner_frame + 1
      if status.any_syncing() then
        pcall(vim.cmd, 'redrawstatus!')
      else
        stop_spinner()
      end
    end)
  )
end

local function root_of_client(client_id)
  local client = vim.lsp.get_client_by_id(client_id)
  return client and client.config and client.config.root_dir or nil
end

local function on_status(_, result, ctx)
  if type(result) ~= 'table' then
    return
  end
  local _, degraded = status.update(ctx.client_id, root_of_client(ctx.client_id), result)
  if degraded and current_config().notify then
    local why = result.message
    if type(why) ~= 'string' or why == '' then
      why = 'health is ' .. tostring(result.health)
    end
    notify('podloop: ' .. why, result.health == 'error' and vim.log.levels.ERROR or vim.log.levels.WARN)
  end
  update_spinner()
  redraw_status()
end

local function on_log_message(err, result, ctx, handler_config)
  if type(result) == 'table' and type(result.message) == 'string' then
    local lines = state.logs[ctx.client_id] or {}
    state.logs[ctx.client_id] = lines
    local kind = ({ 'ERROR', 'WARN', 'INFO', 'LOG' })[result.type] or 'LOG'
    for line in (result.message .. '\n'):gmatch('(.-)\n') do
      table.insert(lines, ('%s [%s] %s'):format(os.date('%H:%M:%S'), kind, line))
    end
    local limit = current_config().log_lines
    while #lines > limit do
      table.remove(lines, 1)
    end
  end
  local default = vim.lsp.handlers['window/logMessage']
  if default then
    return default(err, result, ctx, handler_config)
  end
end

--- The handlers podloop needs on its client. Also used by lsp/podloop.lua
--- for Neovim 0.11's vim.lsp.enable('podloop').
function M.handlers()
  return {
    ['podloop/status'] = on_status,
    ['window/logMessage'] = on_log_message,
  }
end

local function on_exit(_, _, client_id)
  status.forget(client_id)
  for root, id in pairs(state.clients_by_root) do
    if id == client_id then
      state.clients_by_root[root] = nil
    end
  end
  update_spinner()
  vim.schedule(redraw_status)
end

--- The client configuration for `root`, as vim.lsp.start / start_client take it.
function M.client_config(root)
  local cfg = current_config()
  return {
    name = 'podloop',
    cmd = cfg.cmd,
    root_dir = root,
    workspace_folders = { { uri = vim.uri_from_fname(root), name = root } },
    init_options = cfg.init_options,
    capabilities = cfg.capabilities,
    handlers = M.handlers(),
    on_attach = cfg.on_attach,
    on_exit = on_exit,
  }
end

local function binary_missing(cmd)
  local program = cmd[1]
  if vim.fn.executable(program) == 1 then
    return false
  end
  if not state.reported_missing[program] then
    state.reported_missing[program] = true
    notify(
      ('podloop: `%s` is not an executable program: install podloop (cargo install --path server) or set `cmd` in setup(); :checkhealth podloop says more'):format(
        program
      ),
      vim.log.levels.ERROR
    )
  end
  return true
end

--- Start (or reuse) the client for the buffer's podloop root and attach it.
--- Returns the client id, or nil when the buffer is not under a root.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if not vim.api.nvim_buf_is_valid(bufnr) or vim.bo[bufnr].buftype ~= '' then
    return nil
  end
  local cfg = current_config()
  if cfg.filetypes and not vim.tbl_contains(cfg.filetypes, vim.bo[bufnr].filetype) then
    return nil
  end
  local root = M.find_root(vim.api.nvim_buf_get_name(bufnr), cfg.root_markers)
  if not root then
    return nil
  end
  if binary_missing(cfg.cmd) then
    return nil
  end

  if has_08 then
    local client_id = vim.lsp.start(M.client_config(root), { bufnr = bufnr })
    if client_id then
      state.clients_by_root[root] = client_id
    end
    return client_id
  end

  local client_id = state.clients_by_root[root]
  local client = client_id and vim.lsp.get_client_by_id(client_id)
  if not client or client_is_stopped(client) then
    client_id = vim.lsp.start_client(M.client_config(root))
    if not client_id then
      return nil
    end
    state.clients_by_root[root] = client_id
  end
  vim.lsp.buf_attach_client(bufnr, client_id)
  return client_id
end

-- The clients a command applies to: the one serving the current buffer, or
-- every podloop client when the buffer belongs to none.
local function target_clients()
  local all = M.clients()
  local root = M.find_root(vim.api.nvim_buf_get_name(0))
  if root then
    for _, client in ipairs(all) do
      if client.config.root_dir == root then
        return { client }
      end
    end
  end
  return all
end

local function describe_reply(command, result)
  if command == 'podloop.syncAll' and type(result) == 'table' then
    local sent = result.filesSent or result.files_sent
    local deleted = result.filesDeleted or result.files_deleted
    local text = ('podloop: sync all: %s file(s) sent, %s deleted, %s target(s)'):format(
      tostring(sent or '?'),
      tostring(deleted or 0),
      tostring(result.targets or '?')
    )
    if type(result.failures) == 'table' and #result.failures > 0 then
      text = text .. '; failed: ' .. table.concat(vim.tbl_map(tostring, result.failures), '; ')
    end
    return text
  end
  return ('podloop: %s done'):format(command)
end

--- Run a server command (`podloop.syncAll`, ...) on the relevant clients.
--- `on_reply(err, result, client)` is called per client when given;
--- otherwise failures and sync results are shown with vim.notify.
function M.execute(command, on_reply)
  local clients = target_clients()
  if #clients == 0 then
    notify(
      'podloop is not running: open a file under a folder that has podloop.toml (and call setup()); :checkhealth podloop says more',
      vim.log.levels.WARN
    )
    return 0
  end
  for _, client in ipairs(clients) do
    local params = { command = command, arguments = {} }
    client_request(client, 'workspace/executeCommand', params, function(err, result)
      state.last_reply[command] = { err = err, result = result, client_id = client.id }
      if on_reply then
        on_reply(err, result, client)
      elseif err then
        notify(('podloop: %s failed: %s'):format(command, err.message or vim.inspect(err)), vim.log.levels.ERROR)
      elseif command == 'podloop.syncAll' then
        notify(describe_reply(command, result))
      end
    end)
  end
  return #clients
end

--- The latest reply to `command`, or nil: { err, result, client_id }.
function M.last_reply(command)
  return state.last_reply[command]
end

function M.clear_reply(command)
  state.last_reply[command] = nil
end

local function open_float(lines)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = 'wipe'
  local width = 20
  for _, line in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(line))
  end
  width = math.min(width + 2, math.max(20, vim.o.columns - 4))
  local height = math.min(#lines, math.max(1, vim.o.lines - 4))
  local win = vim.api.nvim_open_win(buf, true, {
    relative = 'editor',
    width = width,
    height = height,
    row = math.floor((vim.o.lines - height) / 2),
    col = math.floor((vim.o.columns - width) / 2),
    style = 'minimal',
    border = 'rounded',
  })
  vim.api.nvim_buf_set_keymap(buf, 'n', 'q', '<cmd>close<cr>', { noremap = true, silent = true })
  vim.api.nvim_buf_set_keymap(buf, 'n', '<Esc>', '<cmd>close<cr>', { noremap = true, silent = true })
  return buf, win
end

--- :PodloopStatus: ask every client for its status and show all targets.
function M.show_status()
  local clients = M.clients()
  if #clients == 0 then
    notify('podloop is not running: open a file under a folder that has podloop.toml', vim.log.levels.WARN)
    return
  end
  local replies, waiting = {}, #clients
  for _, client in ipairs(clients) do
    client_request(client, 'workspace/executeCommand', { command = 'podloop.status', arguments = {} }, function(err, result)
      local fresh = (not err and type(result) == 'table') and result or status.get(client.id)
      replies[client.id] = status.describe(client.config.root_dir, fresh)
      if err then
        table.insert(replies[client.id], '  (podloop.status failed: ' .. tostring(err.message) .. '; showing the last notification)')
      end
      waiting = waiting - 1
      if waiting == 0 then
        local lines = {}
        for _, c in ipairs(clients) do
          vim.list_extend(lines, replies[c.id] or {})
        end
        state.last_reply['podloop.status'] = { result = result, err = err, lines = lines }
        open_float(lines)
      end
    end)
  end
end

--- :PodloopLog: the server's log lines, newest last, in a scratch buffer.
function M.show_log()
  local lines = {}
  for _, client in ipairs(M.clients()) do
    table.insert(lines, ('# podloop (client %d) — %s'):format(client.id, tostring(client.config.root_dir)))
    vim.list_extend(lines, state.logs[client.id] or { '(no log lines yet)' })
  end
  if #lines == 0 then
    table.insert(lines, '# podloop is not running')
  end
  table.insert(lines, '# full LSP log: ' .. vim.lsp.get_log_path())
  vim.cmd('botright new')
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'wipe'
  vim.bo[buf].swapfile = false
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  pcall(vim.api.nvim_buf_set_name, buf, 'podloop://log')
end

--- The statusline component: a short text from the latest podloop/status
--- of the current buffer's client (or of any client). '' when not running.
function M.statusline()
  local cfg = current_config()
  local bufnr = vim.api.nvim_get_current_buf()
  local chosen
  local root = M.find_root(vim.api.nvim_buf_get_name(bufnr), cfg.root_markers)
  local known = status.all()
  for _, entry in ipairs(known) do
    if root and entry.root == root then
      chosen = entry.shown
    end
  end
  if not chosen and known[1] then
    chosen = known[1].shown
  end
  return status.render(chosen, cfg.statusline, state.spinner_frame)
end

function M.create_commands()
  local commands = {
    PodloopSyncAll = { function() M.execute('podloop.syncAll') end, 'Push every mapped file that differs from the pod' },
    PodloopReload = { function() M.execute('podloop.reload') end, "Run every mapping's reload command now" },
    PodloopPause = { function() M.execute('podloop.pause') end, 'Stop sending saves (they stay pending)' },
    PodloopResume = { function() M.execute('podloop.resume') end, 'Send pending saves and resume' },
    PodloopStatus = { M.show_status, 'Show every target of every podloop client' },
    PodloopLog = { M.show_log, "Show podloop's log lines" },
  }
  for name, spec in pairs(commands) do
    vim.api.nvim_create_user_command(name, spec[1], { desc = spec[2], force = true })
  end
end

--- Whether setup() ran successfully (for :checkhealth).
function M.is_setup()
  return state.setup_called
end

function M.get_config()
  return current_config()
end

--- Configure podloop. `opts` is merged onto the defaults (README lists them).
--- Returns true, or false after showing what is wrong with `opts`.
function M.setup(opts)
  local resolved, err, unknown = config.resolve(opts)
  if not resolved then
    notify(err, vim.log.levels.ERROR)
    return false
  end
  local fresh = config.take_new_unknown(unknown)
  if #fresh > 0 then
    notify(config.unknown_keys_message(fresh), vim.log.levels.WARN)
  end
  state.config = resolved
  state.setup_called = true
  M.create_commands()

  local group = vim.api.nvim_create_augroup('podloop', { clear = true })
  if resolved.autostart then
    vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile', 'FileType' }, {
      group = group,
      callback = function(args)
        M.attach(args.buf)
      end,
    })
    for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(bufnr) and vim.api.nvim_buf_get_name(bufnr) ~= '' then
        M.attach(bufnr)
      end
    end
  end
  return true
end

-- For tests.
M._state = state

return M
