-- Neovim 0.11+: `vim.lsp.enable('podloop')` picks this up from 'runtimepath'.
-- Users of require('podloop').setup() do not need it (and should not enable
-- both, or every root gets two clients).
local podloop = require('podloop')

return {
  cmd = podloop.get_config().cmd,
  root_markers = podloop.get_config().root_markers,
  handlers = podloop.handlers(),
}
