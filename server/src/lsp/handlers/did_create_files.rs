//! `workspace/didCreateFiles`: files created from the editor's explorer.

use tower_lsp_server::ls_types::CreateFilesParams;

use crate::engine::ChangeOrigin;
use crate::lsp::handlers::did_rename_files::file_uris_to_paths;
use crate::lsp::server::Session;

pub fn did_create_files(session: &Session, params: CreateFilesParams) {
    let paths = file_uris_to_paths(params.files.iter().map(|file| file.uri.as_str()));
    session.send_changes(paths, ChangeOrigin::Watcher);
}
