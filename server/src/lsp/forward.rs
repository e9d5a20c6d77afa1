//! The one task that turns engine `Output`s into messages to the client, in
//! the order the engine produced them.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tower_lsp_server::Client;

use crate::convert::lsp::{
    level_to_message_type, path_to_uri, problem_to_diagnostic, status_to_lsp,
};
use crate::engine::Output;
use crate::lsp::ext::{StatusNotification, StatusParams};
use crate::lsp::progress::EngineProgress;
use crate::lsp::server::Session;
use crate::lsp::watchers;

pub async fn forward_outputs(session: Arc<Session>, mut outputs: mpsc::UnboundedReceiver<Output>) {
    let client: Client = session.client.clone();
    let features = session.features();
    let mut progress = EngineProgress::new(client.clone(), features.work_done_progress);
    let (mapped_folders, mapped_folders_changes) = watch::channel(Vec::new());
    if features.watched_files_dynamic_registration {
        tokio::spawn(watchers::keep_registered(
            client.clone(),
            mapped_folders_changes,
            features.watched_files_relative_patterns,
        ));
    }
    let mut last_status: Option<StatusParams> = None;

    while let Some(output) = outputs.recv().await {
        match output {
            Output::Status(status) => {
                let status = status_to_lsp(&status);
                if last_status.as_ref() != Some(&status) {
                    client
                        .send_notification::<StatusNotification>(status.clone())
                        .await;
                    last_status = Some(status);
                }
            }
            Output::FileProblems { path, problems } => {
                let Some(uri) = path_to_uri(&path) else {
                    tracing::warn!(path = %path.display(), "problems for a path that is no file uri");
                    continue;
                };
                let diagnostics = problems.iter().map(problem_to_diagnostic).collect();
                client.publish_diagnostics(uri, diagnostics, None).await;
            }
            Output::Message { level, text } => {
                client
                    .show_message(level_to_message_type(level), text)
                    .await;
            }
            Output::Log { level, text } => {
                client.log_message(level_to_message_type(level), text).await;
            }
            Output::Progress(event) => progress.handle(event),
            Output::MappedFolders(folders) => {
                mapped_folders.send_replace(folders);
            }
        }
    }
    tracing::debug!("engine output channel closed");
    session.mark_engine_stopped();
}
