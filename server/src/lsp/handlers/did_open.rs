//! `textDocument/didOpen`: advertised because clients only send `didSave`
//! for documents they have opened with the server; nothing to sync yet.

use tower_lsp_server::ls_types::DidOpenTextDocumentParams;

use crate::lsp::server::Session;

pub fn did_open(_session: &Session, params: DidOpenTextDocumentParams) {
    tracing::trace!(uri = params.text_document.uri.as_str(), "didOpen");
}
