//! `textDocument/didSave`: the heart of podloop. The path goes to the engine
//! and the handler returns; the engine reads the file from disk when it
//! plans the batch (any `text` a client sends is ignored: clients disagree
//! on whether it precedes the last change).

use tower_lsp_server::ls_types::DidSaveTextDocumentParams;

use crate::convert::lsp::uri_to_path;
use crate::engine::ChangeOrigin;
use crate::lsp::server::Session;

pub fn did_save(session: &Session, params: DidSaveTextDocumentParams) {
    let uri = params.text_document.uri;
    let Some(path) = uri_to_path(&uri) else {
        tracing::debug!(uri = uri.as_str(), "didSave of a non-file document ignored");
        return;
    };
    tracing::debug!(path = %path.display(), "didSave");
    session.send_changes(vec![path], ChangeOrigin::Save);
}
