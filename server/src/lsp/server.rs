//! The `LanguageServer` implementation. Every method forwards to its handler
//! in `handlers/`; handlers turn LSP events into engine `Input`s and return
//! at once. The engine's loop owns all sync state; this layer keeps only
//! what it needs to speak LSP (client features, roots, the engine handle).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::{
    CodeActionParams, CodeActionResponse, CreateFilesParams, DeleteFilesParams,
    DidChangeConfigurationParams, DidChangeWatchedFilesParams, DidChangeWorkspaceFoldersParams,
    DidCloseTextDocumentParams, DidOpenTextDocumentParams, DidSaveTextDocumentParams,
    ExecuteCommandParams, InitializeParams, InitializeResult, InitializedParams, LSPAny,
    RenameFilesParams,
};
use tower_lsp_server::{Client, LanguageServer};

use crate::engine::{EngineHandle, EngineOptions, Input, Output};
use crate::lsp::handlers;

/// The name of the config file at a workspace root.
pub const CONFIG_FILE_NAME: &str = "podloop.toml";

/// Starts the engine once the roots and client features are known. Boxed so
/// the binary can plug in the kube cluster and tests an in-memory or
/// kubesim-backed one.
pub type EngineStarter = Box<
    dyn FnOnce(
            EngineOptions,
        ) -> BoxFuture<
            'static,
            std::result::Result<(EngineHandle, mpsc::UnboundedReceiver<Output>), String>,
        > + Send,
>;

/// Applies a `logLevel` setting; returns a user-facing error for a bad one.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

pub struct ServerOptions {
    pub start_engine: EngineStarter,
    pub set_log_level: Option<LogLevelSetter>,
}

/// What the client told us it can do, read once from `initialize`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFeatures {
    pub work_done_progress: bool,
    pub watched_files_dynamic_registration: bool,
    pub watched_files_relative_patterns: bool,
}

pub struct Session {
    pub client: Client,
    starter: Mutex<Option<EngineStarter>>,
    engine: OnceLock<EngineHandle>,
    outputs: Mutex<Option<mpsc::UnboundedReceiver<Output>>>,
    features: OnceLock<ClientFeatures>,
    roots: Mutex<Vec<PathBuf>>,
    set_log_level: Option<LogLevelSetter>,
    /// Problems found before the client could be told (the client ignores
    /// notifications until `initialize` has been answered).
    startup_messages: Mutex<Vec<String>>,
    shutdown_requested: AtomicBool,
    /// Flips to true when the engine's output channel closes.
    engine_stopped: watch::Sender<bool>,
}

impl Session {
    fn new(client: Client, options: ServerOptions) -> Session {
        Session {
            client,
            starter: Mutex::new(Some(options.start_engine)),
            engine: OnceLock::new(),
            outputs: Mutex::new(None),
            features: OnceLock::new(),
            roots: Mutex::new(Vec::new()),
            set_log_level: options.set_log_level,
            startup_messages: Mutex::new(Vec::new()),
            shutdown_requested: AtomicBool::new(false),
            engine_stopped: watch::channel(false).0,
        }
    }

    /// Forwards to the engine; false when it is not running (never started,
    /// or stopped), which callers report.
    pub fn send(&self, input: Input) -> bool {
        match self.engine.get() {
            Some(engine) => engine.send(input),
            None => {
                tracing::warn!(?input, "dropped: the engine is not running");
                false
            }
        }
    }

    pub fn features(&self) -> ClientFeatures {
        self.features.get().copied().unwrap_or_default()
    }

    pub(crate) fn set_features(&self, features: ClientFeatures) {
        let _ = self.features.set(features);
    }

    pub fn roots(&self) -> Vec<PathBuf> {
        lock(&self.roots).clone()
    }

    pub(crate) fn set_roots(&self, roots: Vec<PathBuf>) {
        *lock(&self.roots) = roots;
    }

    pub(crate) fn add_root(&self, root: PathBuf) {
        let mut roots = lock(&self.roots);
        if !roots.contains(&root) {
            roots.push(root);
        }
    }

    pub(crate) fn remove_root(&self, root: &Path) {
        lock(&self.roots).retain(|known| known != root);
    }

    /// The root whose `podloop.toml` this is, if `path` is one.
    pub fn config_root_of(&self, path: &Path) -> Option<PathBuf> {
        if path.file_name()? != CONFIG_FILE_NAME {
            return None;
        }
        let parent = path.parent()?;
        lock(&self.roots)
            .iter()
            .find(|root| root.as_path() == parent)
            .cloned()
    }

    /// Splits changed paths into config reloads and file changes, and sends
    /// both.
    pub fn send_changes(&self, paths: Vec<PathBuf>, origin: crate::engine::ChangeOrigin) {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            match self.config_root_of(&path) {
                Some(root) => {
                    self.send(Input::ConfigChanged(root));
                }
                None => files.push(path),
            }
        }
        if !files.is_empty() {
            self.send(Input::Changed {
                paths: files,
                origin,
            });
        }
    }

    pub fn apply_log_level(&self, level: &str) -> std::result::Result<(), String> {
        match &self.set_log_level {
            Some(set) => set(level),
            None => Ok(()),
        }
    }

    pub(crate) fn defer_message(&self, text: String) {
        lock(&self.startup_messages).push(text);
    }

    pub(crate) fn take_deferred_messages(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.startup_messages))
    }

    pub(crate) async fn start_engine(&self, options: EngineOptions) {
        let Some(starter) = lock(&self.starter).take() else {
            tracing::warn!("initialize received twice: the engine is already started");
            return;
        };
        match starter(options).await {
            Ok((handle, outputs)) => {
                let _ = self.engine.set(handle);
                *lock(&self.outputs) = Some(outputs);
            }
            Err(error) => {
                tracing::error!(%error, "the engine did not start");
                self.defer_message(format!("podloop could not start: {error}"));
                self.engine_stopped.send_replace(true);
            }
        }
    }

    pub(crate) fn take_outputs(&self) -> Option<mpsc::UnboundedReceiver<Output>> {
        lock(&self.outputs).take()
    }

    pub(crate) fn mark_engine_stopped(&self) {
        self.engine_stopped.send_replace(true);
    }

    pub fn engine_stopped(&self) -> watch::Receiver<bool> {
        self.engine_stopped.subscribe()
    }

    pub(crate) fn note_shutdown_requested(&self) {
        self.shutdown_requested.store(true, Ordering::SeqCst);
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::SeqCst)
    }

    pub fn engine_started(&self) -> bool {
        self.engine.get().is_some()
    }
}

/// A poisoned lock here only means another handler panicked mid-update of
/// plain data; the data is still usable, and refusing every later request
/// would be worse.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct PodloopServer {
    session: Arc<Session>,
}

impl PodloopServer {
    pub fn new(client: Client, options: ServerOptions) -> PodloopServer {
        PodloopServer {
            session: Arc::new(Session::new(client, options)),
        }
    }

    pub fn session(&self) -> Arc<Session> {
        self.session.clone()
    }
}

impl LanguageServer for PodloopServer {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        handlers::initialize::initialize(&self.session, params).await
    }

    async fn initialized(&self, params: InitializedParams) {
        handlers::initialized::initialized(&self.session, params).await;
    }

    async fn shutdown(&self) -> Result<()> {
        handlers::shutdown::shutdown(&self.session);
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        handlers::did_open::did_open(&self.session, params);
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        handlers::did_close::did_close(&self.session, params);
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        handlers::did_save::did_save(&self.session, params);
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        handlers::did_change_configuration::did_change_configuration(&self.session, params).await;
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        handlers::did_change_workspace_folders::did_change_workspace_folders(&self.session, params);
    }

    async fn did_change_watched_files(&self, params: DidChangeWatchedFilesParams) {
        handlers::did_change_watched_files::did_change_watched_files(&self.session, params);
    }

    async fn did_create_files(&self, params: CreateFilesParams) {
        handlers::did_create_files::did_create_files(&self.session, params);
    }

    async fn did_rename_files(&self, params: RenameFilesParams) {
        handlers::did_rename_files::did_rename_files(&self.session, params);
    }

    async fn did_delete_files(&self, params: DeleteFilesParams) {
        handlers::did_delete_files::did_delete_files(&self.session, params);
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        Ok(handlers::code_action::code_action(params))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        handlers::execute_command::execute_command(&self.session, params).await
    }
}
