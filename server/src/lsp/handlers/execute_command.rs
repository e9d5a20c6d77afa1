//! `workspace/executeCommand`: the podloop commands listed in `ext::Command`.
//! Unlike notifications, a command may wait for its answer: the client asked
//! for a result.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::oneshot;
use tower_lsp_server::jsonrpc::{Error, Result};
use tower_lsp_server::ls_types::{
    ExecuteCommandParams, LSPAny, NumberOrString, ProgressToken, Uri,
};

use crate::convert::lsp::{status_to_lsp, sync_all_to_lsp, uri_to_path};
use crate::engine::Input;
use crate::lsp::ext::Command;
use crate::lsp::progress::ProgressGuard;
use crate::lsp::server::Session;

pub async fn execute_command(
    session: &Session,
    params: ExecuteCommandParams,
) -> Result<Option<LSPAny>> {
    let Some(command) = Command::from_name(&params.command) else {
        let known: Vec<&str> = Command::ALL.iter().map(|command| command.name()).collect();
        return Err(Error::invalid_params(format!(
            "unknown command `{}`: podloop knows {}",
            params.command,
            known.join(", ")
        )));
    };
    tracing::info!(command = command.name(), "executeCommand");
    match command {
        Command::SyncAll => {
            let progress = command_progress(
                session,
                params.work_done_progress_params.work_done_token,
                "podloop: sync all",
            )
            .await;
            let (reply, answer) = oneshot::channel();
            send(session, Input::SyncAll { reply: Some(reply) })?;
            let report = answer.await.map_err(|_| engine_stopped())?;
            if let Some(progress) = progress {
                let summary = format!(
                    "{} sent, {} deleted, {} target(s), {} failure(s)",
                    report.files_sent,
                    report.files_deleted,
                    report.targets,
                    report.failures.len()
                );
                progress.end(Some(summary)).await;
            }
            to_json(&sync_all_to_lsp(&report)).map(Some)
        }
        Command::Status => {
            let (reply, answer) = oneshot::channel();
            send(session, Input::Status { reply })?;
            let status = answer.await.map_err(|_| engine_stopped())?;
            to_json(&status_to_lsp(&status)).map(Some)
        }
        Command::Reload => send(session, Input::Reload).map(|()| None),
        Command::Pause => send(session, Input::Pause).map(|()| None),
        Command::Resume => send(session, Input::Resume).map(|()| None),
        Command::Doctor => doctor(session).await,
        Command::Overwrite => {
            let paths = params
                .arguments
                .iter()
                .map(|argument| {
                    argument
                        .as_str()
                        .and_then(|text| text.parse::<Uri>().ok())
                        .and_then(|uri| uri_to_path(&uri))
                        .ok_or_else(|| {
                            Error::invalid_params(format!(
                                "podloop.overwrite takes file URIs; got {argument}"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            send(session, Input::Overwrite { paths }).map(|()| None)
        }
    }
}

/// `podloop doctor` for every workspace folder with a `podloop.toml`: each
/// line to the log, a summary as a message, the lines as the result.
async fn doctor(session: &Session) -> Result<Option<LSPAny>> {
    use crate::cli::doctor::{run_checks, DoctorInput};
    use tower_lsp_server::ls_types::MessageType;
    let mut lines = Vec::new();
    let mut failures = 0;
    for root in session.roots() {
        let file = root.join(crate::engine::config::FILE_NAME);
        if file.is_file() {
            run_checks(DoctorInput::for_config_file(&file), &mut |check| {
                failures += usize::from(check.failed());
                lines.push(check.render());
            })
            .await;
        }
    }
    if lines.is_empty() {
        failures = 1;
        lines.push(
            "✗ no podloop.toml in any workspace folder\n    fix: create one (see docs/config.md)"
                .to_owned(),
        );
    }
    for line in &lines {
        let kind = if line.starts_with('✗') {
            MessageType::ERROR
        } else {
            MessageType::INFO
        };
        session
            .client
            .log_message(kind, format!("doctor: {line}"))
            .await;
    }
    let (kind, summary) = if failures == 0 {
        (
            MessageType::INFO,
            "podloop doctor: all checks passed".to_owned(),
        )
    } else {
        let first = lines
            .iter()
            .find(|l| l.starts_with('✗'))
            .map(String::as_str)
            .unwrap_or("");
        (MessageType::ERROR, format!("podloop doctor: {failures} check(s) failed; first: {first} (full report in the podloop log)"))
    };
    session.client.show_message(kind, summary).await;
    to_json(&serde_json::json!({"failures": failures, "lines": lines})).map(Some)
}

fn send(session: &Session, input: Input) -> Result<()> {
    if session.send(input) {
        Ok(())
    } else {
        Err(engine_stopped())
    }
}

fn engine_stopped() -> Error {
    let mut error = Error::internal_error();
    error.message =
        "the podloop engine is not running: see the server log, then restart the language server"
            .into();
    error
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|error| {
        let mut failure = Error::internal_error();
        failure.message = format!("could not encode the command result: {error}").into();
        failure
    })
}

/// Progress on the client's token when it gave one, else on one we create
/// when the client supports that; `None` for clients that show no progress.
async fn command_progress(
    session: &Session,
    client_token: Option<ProgressToken>,
    title: &str,
) -> Option<ProgressGuard> {
    static NEXT_COMMAND_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = match client_token {
        Some(token) => token,
        None if session.features().work_done_progress => {
            let id = NEXT_COMMAND_TOKEN.fetch_add(1, Ordering::Relaxed);
            let token = NumberOrString::String(format!("podloop/command/{id}"));
            if let Err(error) = session
                .client
                .create_work_done_progress(token.clone())
                .await
            {
                tracing::debug!(%error, "client refused command progress");
                return None;
            }
            token
        }
        None => return None,
    };
    Some(ProgressGuard::begin(session.client.clone(), token, title.to_owned(), None).await)
}
