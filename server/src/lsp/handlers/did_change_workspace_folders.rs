//! `workspace/didChangeWorkspaceFolders`: multi-root workspaces growing or
//! shrinking at run time.

use tower_lsp_server::ls_types::DidChangeWorkspaceFoldersParams;

use crate::convert::lsp::uri_to_path;
use crate::engine::Input;
use crate::lsp::server::Session;

pub fn did_change_workspace_folders(session: &Session, params: DidChangeWorkspaceFoldersParams) {
    for removed in &params.event.removed {
        if let Some(root) = uri_to_path(&removed.uri) {
            session.remove_root(&root);
            session.send(Input::RemoveRoot(root));
        }
    }
    for added in &params.event.added {
        if let Some(root) = uri_to_path(&added.uri) {
            session.add_root(root.clone());
            session.send(Input::AddRoot(root));
        }
    }
}
