//! `workspace/didRenameFiles`: a rename is a delete of the old path and a
//! write of the new one; the engine reads both from disk.

use std::path::PathBuf;
use std::str::FromStr;

use tower_lsp_server::ls_types::{RenameFilesParams, Uri};

use crate::convert::lsp::uri_to_path;
use crate::engine::ChangeOrigin;
use crate::lsp::server::Session;

pub fn did_rename_files(session: &Session, params: RenameFilesParams) {
    let uris = params
        .files
        .iter()
        .flat_map(|rename| [rename.old_uri.as_str(), rename.new_uri.as_str()]);
    session.send_changes(file_uris_to_paths(uris), ChangeOrigin::Watcher);
}

/// File operations carry URIs as plain strings.
pub fn file_uris_to_paths<'a>(uris: impl Iterator<Item = &'a str>) -> Vec<PathBuf> {
    uris.filter_map(|text| {
        let path = Uri::from_str(text).ok().as_ref().and_then(uri_to_path);
        if path.is_none() {
            tracing::debug!(uri = text, "file operation on a non-file uri ignored");
        }
        path
    })
    .collect()
}
