//! The sync engine: batching, planning what to send, per-target state.
//! Knows neither LSP nor kube types; see `api` for its contract.

pub mod api;

pub use api::*;
