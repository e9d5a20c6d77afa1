//! `initialized`: from here on the client accepts notifications, so the
//! engine's outputs start flowing and deferred start-up problems are shown.

use std::sync::Arc;

use tower_lsp_server::ls_types::{InitializedParams, MessageType};

use crate::lsp::forward;
use crate::lsp::server::Session;

pub async fn initialized(session: &Arc<Session>, _params: InitializedParams) {
    for text in session.take_deferred_messages() {
        session.client.show_message(MessageType::ERROR, text).await;
    }
    match session.take_outputs() {
        Some(outputs) => {
            tokio::spawn(forward::forward_outputs(session.clone(), outputs));
        }
        None => session.mark_engine_stopped(),
    }
}
