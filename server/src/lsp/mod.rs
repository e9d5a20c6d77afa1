//! The LSP layer: the only code that knows LSP types and JSON.
