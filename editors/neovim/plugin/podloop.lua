-- Commands exist as soon as the plugin is on 'runtimepath', so they also
-- work for clients started by vim.lsp.enable('podloop') without setup().
if vim.g.loaded_podloop then
  return
end
vim.g.loaded_podloop = true

if vim.fn.has('nvim-0.7') ~= 1 then
  vim.api.nvim_err_writeln('podloop needs Neovim 0.7 or newer')
  return
end

require('podloop').create_commands()
