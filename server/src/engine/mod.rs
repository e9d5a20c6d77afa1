//! The sync engine: batching, planning what to send, per-target state.
//! Knows neither LSP nor kube types; see `api` for its contract.

pub mod api;

pub use api::*;

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
}

/// Start the engine's main loop on the current tokio runtime.
///
/// PLACEHOLDER until the main loop lands: it answers `Status` and drops
/// everything else. Replaced by the engine's real loop.
pub fn start<C: Cluster>(
    cluster: C,
    options: EngineOptions,
) -> (EngineHandle, mpsc::UnboundedReceiver<Output>) {
    let (inputs, mut input_rx) = mpsc::unbounded_channel();
    let (_outputs, output_rx) = mpsc::unbounded_channel();
    let _ = (cluster, options);
    tokio::spawn(async move {
        while let Some(input) = input_rx.recv().await {
            if let Input::Status { reply } = input {
                let _ = reply.send(Status {
                    health: Health::Ok,
                    state: EngineState::Idle,
                    quiescent: true,
                    message: String::new(),
                    pending: 0,
                    targets: Vec::new(),
                });
            }
        }
    });
    (EngineHandle { inputs }, output_rx)
}
