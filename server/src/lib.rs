//! podloop: a language server that syncs saved files into Kubernetes pods.
//!
//! Three rooms with hard walls (see ARCHITECTURE.md):
//! - [`lsp`]: the only code that knows LSP types and JSON.
//! - [`engine`]: batching, planning, per-target state; no LSP or kube types.
//! - [`transport`]: pod discovery, exec, tar streaming over kube.
//!
//! [`convert`] is the one place where the rooms' types meet.

pub mod cli;
pub mod convert;
pub mod engine;
pub mod fswatch;
pub mod lsp;
pub mod transport;
