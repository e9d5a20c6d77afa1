//! `workspace/didChangeWatchedFiles`: changes made outside the editor, from
//! the watchers registered for the mapped folders.

use tower_lsp_server::ls_types::DidChangeWatchedFilesParams;

use crate::convert::lsp::uri_to_path;
use crate::engine::ChangeOrigin;
use crate::lsp::server::Session;

pub fn did_change_watched_files(session: &Session, params: DidChangeWatchedFilesParams) {
    let paths = params
        .changes
        .iter()
        .filter_map(|event| uri_to_path(&event.uri))
        .collect();
    session.send_changes(paths, ChangeOrigin::Watcher);
}
