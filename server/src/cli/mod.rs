//! Command-line subcommands other than `lsp`.
