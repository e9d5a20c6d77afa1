//! The one place where the rooms' types meet: engine <-> LSP and
//! engine <-> kube transport.

pub mod kube;
pub mod lsp;
