//! Warm sessions: one long-lived `sh` per target container reading
//! length-framed batches from stdin (see `remote::session_script`), so a
//! save costs one round trip on an open WebSocket instead of a new
//! connection, TLS handshake and process. Any doubt about a session (it
//! died, it answered something unexpected) discards it and the batch goes
//! through a fresh one-shot exec: batches are idempotent (whole files,
//! deletes), so sending one again is always safe.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::agent::{self, Upgrade};
use super::client::ContextClient;
use super::error::TransportError;
use super::exec::{ContainerRef, Exec, ExecEvent, ExecOutput, ExitStatus};
use super::ops::{self, DeliverOutcome};
use super::payload::{self, Upload};
use super::remote;

/// Identifies a container instance: a restart or replacement gets a new
/// session (the old one died with its processes anyway).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub context: String,
    pub target: ContainerRefKey,
    pub pod_uid: String,
    pub restart_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRefKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl From<&ContainerRef> for ContainerRefKey {
    fn from(t: &ContainerRef) -> Self {
        ContainerRefKey {
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            container: t.container.clone(),
        }
    }
}

/// Who reads a session's batches in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `remote::session_script` under `sh`.
    Shell,
    /// The agent, `exec`ed in the shell's place (see `transport/agent.rs`).
    Agent,
}

pub struct Session {
    exec: Exec,
    dialect: Dialect,
}

impl Session {
    /// Whether `target` runs podloop's agent: a session is opened, offered
    /// the agent, and closed again (`podloop doctor`).
    pub async fn check_agent(
        client: &ContextClient,
        target: &ContainerRef,
    ) -> Result<Upgrade, TransportError> {
        let Some(binary) = agent::binary() else {
            return Ok(Upgrade::Declined(
                "this podloop was built without it (no Rust target x86_64-unknown-linux-gnu at build time)".into(),
            ));
        };
        let mut session = Session::open_shell(client, target).await?;
        let upgrade = session.upgrade(target, binary).await;
        session.exec.abort();
        upgrade
    }

    /// Offers the agent to a shell session: on `Started` the session speaks
    /// the agent's dialect from now on.
    async fn upgrade(
        &mut self,
        target: &ContainerRef,
        binary: &[u8],
    ) -> Result<Upgrade, TransportError> {
        let nonce = payload::new_nonce();
        self.exec
            .write(&agent::upgrade_request(binary, &nonce))
            .await?;
        self.exec.flush().await?;
        let records = self.read_to_end_marker(target, &nonce).await?;
        let upgrade = agent::upgrade_answer(&records);
        if upgrade == Upgrade::Started {
            self.dialect = Dialect::Agent;
        }
        Ok(upgrade)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn open_shell(
        client: &ContextClient,
        target: &ContainerRef,
    ) -> Result<Session, TransportError> {
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            remote::session_script(),
            "podloop-session".to_string(),
        ];
        let mut exec = Exec::open(client, target, argv).await?;
        let mut stdout = Vec::new();
        loop {
            match exec.next_event().await {
                Some(ExecEvent::Stdout(b)) => {
                    stdout.extend_from_slice(&b);
                    if stdout == b"H\0" {
                        return Ok(Session {
                            exec,
                            dialect: Dialect::Shell,
                        });
                    }
                    if !b"H\0".starts_with(&stdout) && stdout.ends_with(b"\0") {
                        // A missing tool: the one-shot path reports it precisely.
                        return Err(protocol(target, "the session did not start"));
                    }
                }
                Some(ExecEvent::Stderr(_)) => {}
                Some(ExecEvent::Status(_)) | Some(ExecEvent::Ended(_)) | None => {
                    return Err(protocol(target, "the session ended at start"));
                }
            }
        }
    }

    pub async fn deliver(
        &mut self,
        target: &ContainerRef,
        root: &str,
        upload: &Upload,
        plan: &payload::Payload,
    ) -> Result<DeliverOutcome, TransportError> {
        let reload = upload.reload.as_deref().unwrap_or("");
        let nonce = &plan.nonce;
        let header = match &plan.single_file {
            Some(path) => {
                let file_header = match self.dialect {
                    Dialect::Shell => remote::session_file_header,
                    Dialect::Agent => agent::file_header,
                };
                file_header(
                    plan.len,
                    nonce,
                    root,
                    reload,
                    path,
                    plan.single_expect.as_ref(),
                )
            }
            None => {
                let tar_header = match self.dialect {
                    Dialect::Shell => remote::session_header,
                    Dialect::Agent => agent::tar_header,
                };
                tar_header(plan.len, nonce, root, reload)
            }
        };
        let stdout = match self.send_request(&header, plan).await {
            Ok(()) => self.read_to_end_marker(target, nonce).await?,
            // A shell session stops reading when a write fails (a full disk),
            // reports and ends, so the rest of a large file meets a closed
            // stream: the report already on its way names the cause, the cut
            // does not.
            Err(cut @ TransportError::StreamCut { .. }) => {
                let report = self.read_to_end_marker(target, nonce);
                match tokio::time::timeout(REPORT_AFTER_CUT, report).await {
                    Ok(Ok(stdout)) => stdout,
                    _ => return Err(cut),
                }
            }
            // A local file that changed or vanished mid-stream: the
            // container still waits for the rest, no report is coming.
            Err(local) => return Err(local),
        };
        let output = ExecOutput {
            status: ExitStatus::Code(0),
            stdout,
            stderr_tail: Vec::new(),
        };
        ops::interpret_deliver(target, root, plan.len, plan, output)
    }

    /// Header, content and trailer go out together: a small batch is one
    /// WebSocket frame.
    async fn send_request(
        &mut self,
        header: &[u8],
        plan: &payload::Payload,
    ) -> Result<(), TransportError> {
        self.exec.write(header).await?;
        payload::stream(&plan.pieces, &mut self.exec).await?;
        if plan.single_file.is_some() {
            self.exec
                .write(format!("{}\n", plan.nonce).as_bytes())
                .await?;
        }
        self.exec.flush().await
    }

    /// Everything the container printed before `E\0NONCE\0`.
    async fn read_to_end_marker(
        &mut self,
        target: &ContainerRef,
        nonce: &str,
    ) -> Result<Vec<u8>, TransportError> {
        let end = format!("E\0{nonce}\0").into_bytes();
        let mut stdout = Vec::new();
        loop {
            match self.exec.next_event().await {
                Some(ExecEvent::Stdout(b)) => {
                    stdout.extend_from_slice(&b);
                    if stdout.ends_with(&end) {
                        stdout.truncate(stdout.len() - end.len());
                        return Ok(stdout);
                    }
                }
                Some(ExecEvent::Stderr(_)) => {}
                Some(ExecEvent::Status(_)) | Some(ExecEvent::Ended(_)) | None => {
                    return Err(TransportError::StreamCut {
                        pod: target.pod.clone(),
                        detail: "the warm session ended during a batch".into(),
                    });
                }
            }
        }
    }
}

fn protocol(target: &ContainerRef, detail: &str) -> TransportError {
    TransportError::Protocol {
        pod: target.pod.clone(),
        container: target.container.clone(),
        detail: detail.into(),
    }
}

/// How long a session whose stdin broke may take to deliver the report it
/// already sent; the stream has ended, so this only bounds a stuck socket.
const REPORT_AFTER_CUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A session, or none yet; held for a whole batch.
type SessionSlot = Arc<Mutex<Option<Session>>>;

/// How often an agent session may fail (end mid-batch, refuse a request)
/// before that container instance keeps to the shell session.
const AGENT_FAILURES_TOLERATED: u32 = 3;

/// At most one session per container instance; a batch holds its session
/// for the whole round trip (the engine sends one batch per target at a
/// time anyway).
#[derive(Clone)]
pub struct SessionPool {
    sessions: Arc<std::sync::Mutex<HashMap<SessionKey, SessionSlot>>>,
    /// The agent offered to new sessions; `None`: shell sessions only.
    agent: Option<&'static [u8]>,
    /// Container instances where the agent failed, and how often.
    agent_failures: Arc<std::sync::Mutex<HashMap<SessionKey, u32>>>,
}

impl Default for SessionPool {
    fn default() -> Self {
        SessionPool {
            sessions: Arc::default(),
            agent: agent::binary(),
            agent_failures: Arc::default(),
        }
    }
}

impl SessionPool {
    /// Sessions stay shells: nothing is copied into containers.
    pub fn without_agent(mut self) -> Self {
        self.agent = None;
        self
    }

    fn slot(&self, key: &SessionKey) -> SessionSlot {
        let mut map = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Sessions of replaced pods or restarted containers are dead: forget them.
        map.retain(|k, _| {
            k.target != key.target
                || (k.pod_uid == key.pod_uid && k.restart_count == key.restart_count)
        });
        map.entry(key.clone()).or_default().clone()
    }

    fn agent_for(&self, key: &SessionKey) -> Option<&'static [u8]> {
        let failures = self
            .agent_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let failed = failures.get(key).copied().unwrap_or(0);
        self.agent.filter(|_| failed < AGENT_FAILURES_TOLERATED)
    }

    fn agent_failed(&self, key: &SessionKey, times: u32) {
        let mut failures = self
            .agent_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Replaced pods and restarted containers are new instances: forget
        // the old ones' counts, as `slot` forgets their sessions.
        failures.retain(|k, _| k.target != key.target || k == key);
        let count = failures.entry(key.clone()).or_default();
        *count = count.saturating_add(times);
    }

    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many open sessions speak the agent's dialect, so tests can tell
    /// the agent from the shell fallback (which gives the same results). A
    /// session busy with a batch right now is not counted.
    pub fn agent_sessions(&self) -> usize {
        let map = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.values()
            .filter(|slot| {
                slot.try_lock().is_ok_and(|session| {
                    session
                        .as_ref()
                        .is_some_and(|s| s.dialect == Dialect::Agent && s.exec.is_alive())
                })
            })
            .count()
    }

    /// Deliver through the warm session (opening it when needed); on any
    /// session trouble, discard it and deliver with a one-shot exec.
    pub async fn deliver(
        &self,
        client: &ContextClient,
        key: &SessionKey,
        target: &ContainerRef,
        upload: Upload,
    ) -> Result<DeliverOutcome, TransportError> {
        let root = payload::check_root(&upload.remote_root)?;
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        // `agent = false` (a config changed since the session opened) also
        // ends an agent session: the next one stays a shell.
        if guard
            .as_ref()
            .is_some_and(|s| !s.exec.is_alive() || (!upload.agent && s.dialect == Dialect::Agent))
        {
            *guard = None;
        }
        if guard.is_none() {
            let mut session = match Session::open_shell(client, target).await {
                Ok(session) => session,
                Err(e) if !e.is_transient() && !matches!(e, TransportError::Protocol { .. }) => {
                    return Err(e)
                }
                Err(_) => return ops::deliver(client, target, upload).await,
            };
            if let Some(binary) = self.agent_for(key).filter(|_| upload.agent) {
                match session.upgrade(target, binary).await {
                    Ok(Upgrade::Started) => {}
                    Ok(Upgrade::Declined(why)) => {
                        tracing::info!(pod = %target.pod, container = %target.container, %why, "no container agent: the shell session applies saves");
                        // This container cannot run it: do not ask again.
                        self.agent_failed(key, AGENT_FAILURES_TOLERATED);
                    }
                    Err(_) => {
                        // The session is in an unknown state: drop it, and
                        // let this batch take the one-shot path.
                        self.agent_failed(key, 1);
                        return ops::deliver(client, target, upload).await;
                    }
                }
            }
            *guard = Some(session);
        }
        let session = guard.as_mut().expect("opened above");
        let plan = match payload::plan_single(&upload.entries)? {
            Some(single) => single,
            None => payload::plan(&upload.entries)?,
        };
        match session.deliver(target, &root, &upload, &plan).await {
            Ok(outcome) => Ok(outcome),
            Err(e @ (TransportError::Partial { .. } | TransportError::MissingTool { .. })) => {
                Err(e)
            }
            Err(
                e @ (TransportError::LocalChanged { .. }
                | TransportError::RemoteWrite { .. }
                | TransportError::NoSpace { .. }),
            ) => {
                // Mid-batch, or tar died before reading all of its bytes: the
                // session's stdin may be out of step, so it is not reused.
                *guard = None;
                Err(e)
            }
            Err(_) => {
                if session.dialect() == Dialect::Agent {
                    self.agent_failed(key, 1);
                }
                *guard = None;
                drop(guard);
                ops::deliver(client, target, upload).await
            }
        }
    }
}
