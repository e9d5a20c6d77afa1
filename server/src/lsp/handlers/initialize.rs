//! `initialize`: read the roots, the client's features and the settings,
//! start the engine, and advertise what podloop listens to.

use std::path::PathBuf;

use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::{
    CodeActionKind, CodeActionOptions, CodeActionProviderCapability, ExecuteCommandOptions,
    FileOperationFilter, FileOperationPattern, FileOperationRegistrationOptions, InitializeParams,
    InitializeResult, OneOf, SaveOptions, ServerCapabilities, ServerInfo,
    TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions,
    TextDocumentSyncSaveOptions, WorkspaceFileOperationsServerCapabilities,
    WorkspaceFoldersServerCapabilities, WorkspaceServerCapabilities,
};

use crate::convert::lsp::{settings_to_overrides, uri_to_path};
use crate::engine::EngineOptions;
use crate::lsp::ext::{Command, Settings};
use crate::lsp::server::{ClientFeatures, Session};

pub async fn initialize(session: &Session, params: InitializeParams) -> Result<InitializeResult> {
    let features = client_features(&params);
    session.set_features(features);

    let roots = workspace_roots(&params);
    session.set_roots(roots.clone());

    let settings = match params.initialization_options.as_ref() {
        Some(options) => match Settings::from_value(options) {
            Ok(settings) => settings.unwrap_or_default(),
            Err(error) => {
                session.defer_message(format!("{error} (in initializationOptions)"));
                Settings::default()
            }
        },
        None => Settings::default(),
    };
    if let Some(level) = &settings.log_level {
        if let Err(error) = session.apply_log_level(level) {
            session.defer_message(error);
        }
    }
    tracing::info!(
        ?roots,
        ?features,
        client = params.client_info.as_ref().map(|info| info.name.as_str()),
        "initialize"
    );

    session
        .start_engine(EngineOptions {
            roots,
            overrides: settings_to_overrides(&settings),
            // Without dynamic registration the client will never tell us
            // about changes made outside the editor, so we watch ourselves.
            own_file_watcher: !features.watched_files_dynamic_registration,
        })
        .await;

    Ok(InitializeResult {
        capabilities: capabilities(),
        server_info: Some(ServerInfo {
            name: "podloop".to_owned(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        }),
        offset_encoding: None,
    })
}

fn client_features(params: &InitializeParams) -> ClientFeatures {
    let capabilities = &params.capabilities;
    let watched = capabilities
        .workspace
        .as_ref()
        .and_then(|workspace| workspace.did_change_watched_files.as_ref());
    ClientFeatures {
        work_done_progress: capabilities
            .window
            .as_ref()
            .and_then(|window| window.work_done_progress)
            .unwrap_or(false),
        watched_files_dynamic_registration: watched
            .and_then(|watched| watched.dynamic_registration)
            .unwrap_or(false),
        watched_files_relative_patterns: watched
            .and_then(|watched| watched.relative_pattern_support)
            .unwrap_or(false),
    }
}

/// Workspace folders when the client sends them, else the single root of
/// older clients.
#[allow(deprecated)]
fn workspace_roots(params: &InitializeParams) -> Vec<PathBuf> {
    if let Some(folders) = &params.workspace_folders {
        let roots: Vec<PathBuf> = folders
            .iter()
            .filter_map(|folder| uri_to_path(&folder.uri))
            .collect();
        if !roots.is_empty() {
            return roots;
        }
    }
    if let Some(root) = params.root_uri.as_ref().and_then(uri_to_path) {
        return vec![root];
    }
    params
        .root_path
        .as_ref()
        .map(|root| vec![PathBuf::from(root)])
        .unwrap_or_default()
}

pub fn capabilities() -> ServerCapabilities {
    let any_file = FileOperationRegistrationOptions {
        filters: vec![FileOperationFilter {
            scheme: Some("file".to_owned()),
            pattern: FileOperationPattern {
                glob: "**/*".to_owned(),
                matches: None,
                options: None,
            },
        }],
    };
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Options(
            TextDocumentSyncOptions {
                open_close: Some(true),
                // Content comes from disk at sync time, never from the editor.
                change: Some(TextDocumentSyncKind::NONE),
                will_save: None,
                will_save_wait_until: None,
                save: Some(TextDocumentSyncSaveOptions::SaveOptions(SaveOptions {
                    include_text: Some(false),
                })),
            },
        )),
        code_action_provider: Some(CodeActionProviderCapability::Options(CodeActionOptions {
            code_action_kinds: Some(vec![CodeActionKind::QUICKFIX]),
            ..CodeActionOptions::default()
        })),
        execute_command_provider: Some(ExecuteCommandOptions {
            commands: Command::ALL
                .iter()
                .map(|command| command.name().to_owned())
                .collect(),
            work_done_progress_options: Default::default(),
        }),
        workspace: Some(WorkspaceServerCapabilities {
            workspace_folders: Some(WorkspaceFoldersServerCapabilities {
                supported: Some(true),
                change_notifications: Some(OneOf::Left(true)),
            }),
            file_operations: Some(WorkspaceFileOperationsServerCapabilities {
                did_create: Some(any_file.clone()),
                did_rename: Some(any_file.clone()),
                did_delete: Some(any_file),
                ..Default::default()
            }),
        }),
        ..ServerCapabilities::default()
    }
}
