//! `textDocument/codeAction`: on a conflict diagnostic (the container's copy
//! changed since podloop wrote it), offer to overwrite it with the local
//! file. The action is a `podloop.overwrite` command, so any client that
//! shows quick fixes can resolve a conflict, with no extension code.

use tower_lsp_server::ls_types::{
    CodeAction, CodeActionKind, CodeActionOrCommand, CodeActionParams, CodeActionResponse,
    NumberOrString,
};

use crate::convert::lsp::{CONFLICT_CODE, DIAGNOSTIC_SOURCE};
use crate::lsp::ext::Command;

pub fn code_action(params: CodeActionParams) -> Option<CodeActionResponse> {
    let conflicts: Vec<_> = params
        .context
        .diagnostics
        .into_iter()
        .filter(|d| {
            d.source.as_deref() == Some(DIAGNOSTIC_SOURCE)
                && d.code == Some(NumberOrString::String(CONFLICT_CODE.to_owned()))
        })
        .collect();
    if conflicts.is_empty() {
        return None;
    }
    let title = "podloop: overwrite the container's copy with this file".to_owned();
    Some(vec![CodeActionOrCommand::CodeAction(CodeAction {
        title: title.clone(),
        kind: Some(CodeActionKind::QUICKFIX),
        diagnostics: Some(conflicts),
        command: Some(tower_lsp_server::ls_types::Command {
            title,
            command: Command::Overwrite.name().to_owned(),
            arguments: Some(vec![serde_json::Value::String(
                params.text_document.uri.as_str().to_owned(),
            )]),
        }),
        is_preferred: Some(true),
        ..CodeAction::default()
    })])
}
