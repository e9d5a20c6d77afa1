//! `$/progress` for batches and long commands.
//!
//! A [`ProgressGuard`] owns one begun progress; dropping it without
//! [`ProgressGuard::end`] still sends the `end`, so a panic, an early return
//! or a closed engine channel cannot leave a spinner running in the editor.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tower_lsp_server::ls_types::notification::Progress as ProgressNotification;
use tower_lsp_server::ls_types::{
    NumberOrString, ProgressParams, ProgressParamsValue, ProgressToken, WorkDoneProgress,
    WorkDoneProgressBegin, WorkDoneProgressEnd, WorkDoneProgressReport,
};
use tower_lsp_server::Client;

use crate::engine::Progress;

pub struct ProgressGuard {
    client: Client,
    token: ProgressToken,
    ended: bool,
}

impl ProgressGuard {
    /// Sends `begin` on a token the client already knows (created with
    /// `window/workDoneProgress/create`, or given in a request's
    /// `workDoneToken`).
    pub async fn begin(
        client: Client,
        token: ProgressToken,
        title: String,
        message: Option<String>,
    ) -> ProgressGuard {
        let begin = WorkDoneProgress::Begin(WorkDoneProgressBegin {
            title,
            cancellable: Some(false),
            message,
            percentage: None,
        });
        send(&client, &token, begin).await;
        ProgressGuard {
            client,
            token,
            ended: false,
        }
    }

    pub async fn report(&self, message: String, percentage: Option<u32>) {
        let report = WorkDoneProgress::Report(WorkDoneProgressReport {
            cancellable: Some(false),
            message: Some(message),
            percentage: percentage.map(|value| value.min(100)),
        });
        send(&self.client, &self.token, report).await;
    }

    pub async fn end(mut self, message: Option<String>) {
        self.ended = true;
        send(
            &self.client,
            &self.token,
            WorkDoneProgress::End(WorkDoneProgressEnd { message }),
        )
        .await;
    }
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(token = ?self.token, "progress dropped outside a runtime: its end is lost");
            return;
        };
        let client = self.client.clone();
        let token = self.token.clone();
        runtime.spawn(async move {
            let end = WorkDoneProgress::End(WorkDoneProgressEnd { message: None });
            send(&client, &token, end).await;
        });
    }
}

async fn send(client: &Client, token: &ProgressToken, value: WorkDoneProgress) {
    client
        .send_notification::<ProgressNotification>(ProgressParams {
            token: token.clone(),
            value: ProgressParamsValue::WorkDone(value),
        })
        .await;
}

/// Routes the engine's `Progress` outputs to server-created work-done
/// progress. Each progress gets its own task because creating the token is a
/// round trip to the client, and the output forwarder must not wait on it.
pub struct EngineProgress {
    client: Client,
    client_supports_progress: bool,
    live: HashMap<u64, mpsc::UnboundedSender<Progress>>,
}

impl EngineProgress {
    pub fn new(client: Client, client_supports_progress: bool) -> Self {
        EngineProgress {
            client,
            client_supports_progress,
            live: HashMap::new(),
        }
    }

    pub fn handle(&mut self, progress: Progress) {
        if !self.client_supports_progress {
            return;
        }
        match progress {
            Progress::Begin { id, title, message } => {
                let (events, receiver) = mpsc::unbounded_channel();
                self.live.insert(id, events);
                let client = self.client.clone();
                tokio::spawn(run_engine_progress(client, id, title, message, receiver));
            }
            Progress::Report { id, .. } => {
                if let Some(events) = self.live.get(&id) {
                    let _ = events.send(progress);
                }
            }
            Progress::End { id, .. } => {
                if let Some(events) = self.live.remove(&id) {
                    let _ = events.send(progress);
                }
            }
        }
    }
}

async fn run_engine_progress(
    client: Client,
    id: u64,
    title: String,
    message: Option<String>,
    mut events: mpsc::UnboundedReceiver<Progress>,
) {
    let token = NumberOrString::String(format!("podloop/{id}"));
    if let Err(error) = client.create_work_done_progress(token.clone()).await {
        // The spec forbids progress on a token the client refused.
        tracing::debug!(%error, "client refused work-done progress {id}");
        return;
    }
    let guard = ProgressGuard::begin(client, token, title, message).await;
    while let Some(event) = events.recv().await {
        match event {
            Progress::Report {
                message,
                percentage,
                ..
            } => guard.report(message, percentage).await,
            Progress::End { message, .. } => {
                guard.end(message).await;
                return;
            }
            Progress::Begin { .. } => {}
        }
    }
    // The engine went away mid-progress: `guard` drops here and ends it.
}
