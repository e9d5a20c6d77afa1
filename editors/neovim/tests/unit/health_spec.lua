local health = require('podloop.health')

local function recorder()
  local seen = {}
  local function record(kind)
    return function(message, advice)
      table.insert(seen, { kind = kind, message = message, advice = advice })
    end
  end
  return { start = record('start'), ok = record('ok'), warn = record('warn'), error = record('error'), info = record('info') }, seen
end

describe('report_doctor', function()
  it('turns ✓ and ✗ lines with their fix into report entries', function()
    local report, seen = recorder()
    health.report_doctor(report, 1, {
      '✓ kubeconfig found: /k',
      '✗ container `app` has no `tar`',
      '    fix: install tar in the image',
      'some other line',
      '1 check(s) failed',
    })
    eq({
      { kind = 'ok', message = 'kubeconfig found: /k' },
      { kind = 'error', message = 'container `app` has no `tar`', advice = { 'install tar in the image' } },
    }, seen)
  end)

  it('reports a failure without ✗ lines and a timeout', function()
    local report, seen = recorder()
    health.report_doctor(report, 2, { 'error: unrecognized subcommand' })
    health.report_doctor(report, nil, {})
    eq('error', seen[1].kind)
    contains(seen[1].message, 'exit 2')
    eq({ 'error: unrecognized subcommand' }, seen[1].advice)
    eq('error', seen[2].kind)
    contains(seen[2].message, 'timed out')
  end)
end)
