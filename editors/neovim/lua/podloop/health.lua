-- :checkhealth podloop
--
-- Each failure says how to fix it. Neovim 0.7 reports through
-- require('health').report_*, 0.8+ through vim.health.*.

local M = {}

local function reporter()
  local h = vim.health
  if h and h.start then
    return { start = h.start, ok = h.ok, warn = h.warn, error = h.error, info = h.info }
  end
  if h and h.report_start then
    return { start = h.report_start, ok = h.report_ok, warn = h.report_warn, error = h.report_error, info = h.report_info }
  end
  local legacy = require('health')
  return {
    start = legacy.report_start,
    ok = legacy.report_ok,
    warn = legacy.report_warn,
    error = legacy.report_error,
    info = legacy.report_info,
  }
end

-- Runs argv (never through a shell) in `cwd`; returns exit code and output,
-- or nil when it did not finish within `timeout_ms`.
local function run(argv, cwd, timeout_ms)
  local output = {}
  local function collect(_, data)
    for _, line in ipairs(data or {}) do
      if line ~= '' then
        table.insert(output, line)
      end
    end
  end
  local ok, job = pcall(vim.fn.jobstart, argv, {
    cwd = cwd,
    stdout_buffered = true,
    stderr_buffered = true,
    on_stdout = collect,
    on_stderr = collect,
  })
  if not ok or job <= 0 then
    return -1, { tostring(job) }
  end
  local codes = vim.fn.jobwait({ job }, timeout_ms)
  if codes[1] == -1 then
    vim.fn.jobstop(job)
    return nil, output
  end
  -- on_stdout callbacks for buffered jobs run before jobwait returns, but
  -- give pending callbacks a chance anyway.
  vim.wait(50, function()
    return #output > 0
  end, 10)
  return codes[1], output
end

local function check_neovim(report)
  local v = vim.version()
  local text = ('Neovim %d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.7') == 1 then
    report.ok(text .. (vim.fn.has('nvim-0.8') == 1 and ' (uses vim.lsp.start)' or ' (uses vim.lsp.start_client)'))
  else
    report.error(text .. ' is too old', { 'podloop needs Neovim 0.7 or newer: upgrade Neovim' })
  end
end

local function check_setup(report, podloop)
  if podloop.is_setup() then
    report.ok('setup() was called')
  elseif vim.fn.has('nvim-0.11') == 1 and vim.lsp.config and vim.lsp.config.podloop then
    report.ok("not set up with setup(), but vim.lsp.config has 'podloop' (vim.lsp.enable)")
  else
    report.warn('setup() was not called', {
      "add require('podloop').setup({}) to your init.lua (or vim.lsp.enable('podloop') on Neovim 0.11+)",
    })
  end
end

local function check_binary(report, cfg)
  local program = cfg.cmd[1]
  if vim.fn.executable(program) ~= 1 then
    report.error(('binary `%s` not found or not executable'):format(program), {
      'install it: cargo install --path server (from the podloop repository), and make sure it is on $PATH',
      ("or point setup() at it: require('podloop').setup({ cmd = { '/path/to/podloop', 'lsp' } })"),
    })
    return false
  end
  local path = vim.fn.exepath(program)
  local code, output = run({ program, '--version' }, nil, 5000)
  if code == 0 and output[1] then
    report.ok(('binary: %s (%s)'):format(path ~= '' and path or program, output[1]))
    return true
  end
  report.error(('`%s --version` failed (%s)'):format(program, code == nil and 'timed out' or ('exit ' .. tostring(code))), {
    'reinstall podloop: the binary at ' .. (path ~= '' and path or program) .. ' does not run',
    table.concat(output, ' '),
  })
  return false
end

local function find_config(podloop, cfg)
  local name = vim.api.nvim_buf_get_name(0)
  local root = podloop.find_root(name ~= '' and name or vim.fn.getcwd(), cfg.root_markers)
  if not root and name ~= '' then
    root = podloop.find_root(vim.fn.getcwd(), cfg.root_markers)
  end
  -- :checkhealth opens its own buffer: fall back to the roots of running
  -- clients.
  if not root then
    for _, client in ipairs(podloop.clients()) do
      if client.config.root_dir then
        return client.config.root_dir
      end
    end
  end
  return root
end

local function marker_file(root, cfg)
  for _, marker in ipairs(cfg.root_markers) do
    local path = (root == '/' and '' or root) .. '/' .. marker
    if vim.loop.fs_stat(path) then
      return path
    end
  end
  return nil
end

local function client_for_root(podloop, root)
  for _, client in ipairs(podloop.clients()) do
    if client.config.root_dir == root then
      return client
    end
  end
  return nil
end

local function request_status(client)
  local method_form = vim.fn.has('nvim-0.11') == 1
  local ok, reply
  if method_form then
    ok, reply = pcall(client.request_sync, client, 'workspace/executeCommand', { command = 'podloop.status', arguments = {} }, 5000)
  else
    ok, reply = pcall(client.request_sync, 'workspace/executeCommand', { command = 'podloop.status', arguments = {} }, 5000)
  end
  if ok and reply and not reply.err and type(reply.result) == 'table' then
    return reply.result
  end
  return nil
end

local function check_config_and_cluster(report, podloop, cfg, binary_ok)
  local root = find_config(podloop, cfg)
  if not root then
    report.warn(('no %s found above the current file or %s'):format(table.concat(cfg.root_markers, ' / '), vim.fn.getcwd()), {
      'create podloop.toml at your project root (see the podloop README for the format), or open a file inside such a project',
    })
    return
  end
  local file = marker_file(root, cfg)
  report.ok('config file: ' .. tostring(file))

  local client = client_for_root(podloop, root)
  if client then
    local live = request_status(client) or require('podloop.status').get(client.id)
    local diagnostics = {}
    local config_buf = vim.fn.bufnr(file)
    if config_buf > 0 then
      for _, d in ipairs(vim.diagnostic.get(config_buf)) do
        if d.severity == vim.diagnostic.severity.ERROR then
          table.insert(diagnostics, ('line %d: %s'):format(d.lnum + 1, d.message))
        end
      end
    end
    if #diagnostics > 0 then
      report.error('config file has errors', diagnostics)
    else
      report.ok('config file accepted by the running server')
    end
    if type(live) ~= 'table' then
      report.warn('the server sent no status yet', { 'wait a moment and run :checkhealth podloop again; :PodloopLog shows what it is doing' })
    elseif live.state == 'disconnected' then
      report.error('cluster not reachable: ' .. tostring(live.message), {
        'check the kubeconfig context (kubectl config current-context) and that the API server answers (kubectl get pods)',
      })
    elseif live.health == 'error' then
      report.error('podloop reports an error: ' .. tostring(live.message), { ':PodloopStatus shows each target and its error' })
    elseif live.health == 'warning' then
      report.warn('podloop reports a warning: ' .. tostring(live.message), { ':PodloopStatus shows each target' })
    else
      local pods = {}
      for _, t in ipairs(live.targets or {}) do
        table.insert(pods, ('%s/%s:%s'):format(tostring(t.namespace), tostring(t.pod), tostring(t.container)))
      end
      if #pods == 0 then
        report.warn('cluster reachable but no target pods', { 'check the selector in ' .. tostring(file) .. ' (kubectl get pods -l <selector>)' })
      else
        report.ok(('cluster reachable; %d target(s): %s'):format(#pods, table.concat(pods, ', ')))
      end
    end
    return
  end

  if not binary_ok then
    report.warn('cannot check the config file or the cluster without the binary')
    return
  end
  -- No running client for this root: `podloop doctor` checks the same
  -- things from the command line, when this build has it.
  local code, help = run({ cfg.cmd[1], '--help' }, root, 5000)
  local has_doctor = code == 0 and table.concat(help, '\n'):find('doctor', 1, true) ~= nil
  if not has_doctor then
    report.info('podloop is not running for ' .. root .. ': open a file there to start it, then run :checkhealth podloop again')
    return
  end
  report.info('podloop is not running for ' .. root .. ': asking `podloop doctor` instead')
  local doctor_code, lines = run({ cfg.cmd[1], 'doctor' }, root, 30000)
  M.report_doctor(report, doctor_code, lines)
end

--- Turn `podloop doctor` output ("✓ text", "✗ text" + "    fix: ...")
--- into report lines.
function M.report_doctor(report, code, lines)
  local reported = 0
  local i = 1
  while i <= #lines do
    local line = lines[i]
    local passed = line:match('^✓%s+(.*)$')
    local failed = line:match('^✗%s+(.*)$')
    if passed then
      report.ok(passed)
      reported = reported + 1
    elseif failed then
      local advice = {}
      while lines[i + 1] and lines[i + 1]:match('^%s+fix:') do
        table.insert(advice, (lines[i + 1]:gsub('^%s+fix:%s*', '')))
        i = i + 1
      end
      report.error(failed, advice)
      reported = reported + 1
    end
    i = i + 1
  end
  if code == nil then
    report.error('podloop doctor timed out', { 'check that the cluster answers: kubectl get pods' })
  elseif code ~= 0 and reported == 0 then
    report.error(('podloop doctor failed (exit %d)'):format(code), lines)
  end
end

function M.check()
  local report = reporter()
  local podloop = require('podloop')
  local cfg = podloop.get_config()
  -- Started by vim.lsp.enable('podloop') (0.11+) instead of setup(): the
  -- command to check is the one vim.lsp.config holds.
  if not podloop.is_setup() and vim.fn.has('nvim-0.11') == 1 then
    local ok, enabled = pcall(function()
      return vim.lsp.config.podloop
    end)
    if ok and type(enabled) == 'table' and type(enabled.cmd) == 'table' then
      cfg = vim.tbl_extend('force', cfg, { cmd = enabled.cmd })
    end
  end

  report.start('podloop: editor')
  check_neovim(report)
  check_setup(report, podloop)

  report.start('podloop: binary')
  local binary_ok = check_binary(report, cfg)

  report.start('podloop: project and cluster')
  check_config_and_cluster(report, podloop, cfg, binary_ok)
end

return M
