//! `textDocument/didClose`: closing a buffer changes nothing on disk.

use tower_lsp_server::ls_types::DidCloseTextDocumentParams;

use crate::lsp::server::Session;

pub fn did_close(_session: &Session, params: DidCloseTextDocumentParams) {
    tracing::trace!(uri = params.text_document.uri.as_str(), "didClose");
}
