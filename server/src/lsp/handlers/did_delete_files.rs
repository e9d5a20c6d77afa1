//! `workspace/didDeleteFiles`: files or folders deleted from the editor.
//! The engine sees them missing on disk and deletes them in the pod.

use tower_lsp_server::ls_types::DeleteFilesParams;

use crate::engine::ChangeOrigin;
use crate::lsp::handlers::did_rename_files::file_uris_to_paths;
use crate::lsp::server::Session;

pub fn did_delete_files(session: &Session, params: DeleteFilesParams) {
    let paths = file_uris_to_paths(params.files.iter().map(|file| file.uri.as_str()));
    session.send_changes(paths, ChangeOrigin::Watcher);
}
