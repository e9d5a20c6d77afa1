//! `workspace/didChangeConfiguration`: new overrides for context, namespace,
//! log level and pause. A notification that does not mention podloop (the
//! `{}` or `null` some clients send) leaves the overrides as they are.

use tower_lsp_server::ls_types::{DidChangeConfigurationParams, MessageType};

use crate::convert::lsp::settings_to_overrides;
use crate::engine::Input;
use crate::lsp::ext::Settings;
use crate::lsp::server::Session;

pub async fn did_change_configuration(session: &Session, params: DidChangeConfigurationParams) {
    let settings = match Settings::from_value(&params.settings) {
        Ok(Some(settings)) => settings,
        Ok(None) => return,
        Err(error) => {
            session.client.show_message(MessageType::ERROR, error).await;
            return;
        }
    };
    apply(session, settings).await;
}

async fn apply(session: &Session, settings: Settings) {
    if let Some(level) = &settings.log_level {
        if let Err(error) = session.apply_log_level(level) {
            session
                .client
                .show_message(MessageType::WARNING, error)
                .await;
        }
    }
    session.send(Input::SetOverrides(settings_to_overrides(&settings)));
}
