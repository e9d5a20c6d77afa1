//! The kube transport: pod discovery, exec, tar streaming.
//! Knows nothing of LSP or of the engine's state.
