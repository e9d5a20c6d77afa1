local podloop = require('podloop')

local function mkdir_p(path)
  vim.fn.mkdir(path, 'p')
end

local function touch(path)
  local f = assert(io.open(path, 'w'))
  f:write('')
  f:close()
end

describe('find_root', function()
  local base = vim.fn.tempname()
  -- A folder name with a space, a quote, `$(...)` and a newline: names are
  -- data, never shell text.
  local project = base .. "/my project $(touch x) 'q'\nline"
  mkdir_p(project .. '/src/deep')
  mkdir_p(project .. '/nested/inner')
  mkdir_p(base .. '/elsewhere')
  touch(project .. '/podloop.toml')
  touch(project .. '/nested/inner/podloop.toml')

  it('finds podloop.toml in a parent folder', function()
    eq(project, podloop.find_root(project .. '/src/deep/file.py', { 'podloop.toml' }))
  end)

  it('accepts a file that does not exist yet and a folder', function()
    eq(project, podloop.find_root(project .. '/src/new.txt', { 'podloop.toml' }))
    eq(project, podloop.find_root(project .. '/src', { 'podloop.toml' }))
  end)

  it('prefers the nearest root', function()
    eq(project .. '/nested/inner', podloop.find_root(project .. '/nested/inner/a.txt', { 'podloop.toml' }))
  end)

  it('returns nil outside any root', function()
    eq(nil, podloop.find_root(base .. '/elsewhere/a.txt', { 'podloop.toml' }))
    eq(nil, podloop.find_root('', { 'podloop.toml' }))
  end)

  it('ignores buffers that are not files', function()
    eq(nil, podloop.find_root('health://', { 'podloop.toml' }))
    eq(nil, podloop.find_root('term://' .. project .. '//12:bash', { 'podloop.toml' }))
  end)

  it('ignores a folder named like the marker', function()
    mkdir_p(base .. '/dirmarker/podloop.toml')
    eq(nil, podloop.find_root(base .. '/dirmarker/a.txt', { 'podloop.toml' }))
  end)
end)
