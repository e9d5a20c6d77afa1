//! `shutdown`: stop background work; `exit` (or stdin closing) ends the
//! process afterwards.

use crate::engine::Input;
use crate::lsp::server::Session;

pub fn shutdown(session: &Session) {
    session.note_shutdown_requested();
    session.send(Input::Shutdown);
}
