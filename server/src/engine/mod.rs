//! The sync engine: batching, planning what to send, per-target state.
//! Knows neither LSP nor kube types; see `api` for its contract.

pub mod api;
pub mod config;
mod local_reads;
mod main_loop;
pub mod mapping;
mod plan;

pub use api::*;
pub use main_loop::human_bytes;

use tokio::sync::mpsc;

/// The sending side of the engine's input channel. Cheap to clone; sending
/// never blocks, so LSP handlers can forward and return at once.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    inputs: mpsc::UnboundedSender<Input>,
}

impl EngineHandle {
    /// Returns false when the engine has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.inputs.send(input).is_ok()
    }

    /// Asks for the current status; `None` when the engine has stopped.
    pub async fn status(&self) -> Option<Status> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if !self.send(Input::Status { reply }) {
            return None;
        }
        rx.await.ok()
    }
}

/// Start the engine's main loop on the current tokio runtime. Each root's
/// `podloop.toml` is read; outputs arrive on the returned receiver.
pub fn start<C: Cluster>(
    cluster: C,
    options: EngineOptions,
) -> (EngineHandle, mpsc::UnboundedReceiver<Output>) {
    main_loop::start(cluster, options, Vec::new())
}

/// Like [`start`], with configs that do not come from a root's
/// `podloop.toml` (the CLI's `--config FILE` and `LOCAL:REMOTE` forms).
pub fn start_with_configs<C: Cluster>(
    cluster: C,
    options: EngineOptions,
    configs: Vec<config::Config>,
) -> (EngineHandle, mpsc::UnboundedReceiver<Output>) {
    main_loop::start(cluster, options, configs)
}
