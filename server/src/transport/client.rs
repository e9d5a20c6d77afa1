//! Kubeconfig loading (like kubectl: `--kubeconfig`, else `$KUBECONFIG`,
//! else `~/.kube/config`) and one client per context, made on first use.
//!
//! Credentials stay inside `kube::Config`; nothing here formats a config, a
//! user entry or a request with `Debug`, so a token cannot reach a log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Mutex;

use super::error::TransportError;
use super::exec::ContainerRef;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeOptions {
    /// Explicit kubeconfig file; otherwise `$KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Context used when a target names none; otherwise the current context.
    pub context: Option<String>,
}

/// A client for one kube context.
#[derive(Clone)]
pub struct ContextClient {
    pub client: kube::Client,
    pub context: String,
    /// The context's namespace, else "default".
    pub namespace: String,
    pub server: String,
}

impl std::fmt::Debug for ContextClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextClient")
            .field("context", &self.context)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

pub struct Connector {
    kubeconfig: Kubeconfig,
    source: String,
    default_context: String,
    clients: Mutex<HashMap<String, ContextClient>>,
}

impl Connector {
    /// Reads the kubeconfig now, so a missing file or unknown context is
    /// reported at start rather than at the first save.
    pub fn new(options: KubeOptions) -> Result<Connector, TransportError> {
        let (kubeconfig, source) = read_kubeconfig(&options)?;
        let default_context = match options.context.clone().or(kubeconfig.current_context.clone())
        {
            Some(c) if !c.is_empty() => c,
            _ => {
                return Err(TransportError::Kubeconfig(format!(
                    "kubeconfig {source} has no current context: pass --context or run `kubectl config use-context NAME`"
                )))
            }
        };
        let connector = Connector {
            kubeconfig,
            source,
            default_context,
            clients: Mutex::new(HashMap::new()),
        };
        connector.check_context(&connector.default_context)?;
        Ok(connector)
    }

    pub fn default_context(&self) -> &str {
        &self.default_context
    }

    fn check_context(&self, name: &str) -> Result<(), TransportError> {
        if self.kubeconfig.contexts.iter().any(|c| c.name == name) {
            return Ok(());
        }
        let known: Vec<&str> = self
            .kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        Err(TransportError::Kubeconfig(format!(
            "context `{name}` is not in kubeconfig {}; known contexts: {}; fix `context` in podloop.toml or pass --context",
            self.source,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    /// The client for `context` (the default one when `None`).
    pub async fn client(&self, context: Option<&str>) -> Result<ContextClient, TransportError> {
        let name = context.unwrap_or(&self.default_context).to_string();
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&name) {
            return Ok(c.clone());
        }
        self.check_context(&name)?;
        let options = KubeConfigOptions {
            context: Some(name.clone()),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(self.kubeconfig.clone(), &options)
            .await
            .map_err(|e| {
                TransportError::Kubeconfig(format!(
                    "cannot use context `{name}` from kubeconfig {}: {e}; check it with `kubectl --context {name} get pods`",
                    self.source
                ))
            })?;
        // kube's own retry of 429/503/504 backs off for minutes without a
        // word; the engine retries with backoff and shows `disconnected`.
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|e| {
            TransportError::Kubeconfig(format!(
                "cannot build a client for context `{name}` ({server}): {e}"
            ))
        })?;
        let c = ContextClient {
            client,
            context: name.clone(),
            namespace,
            server,
        };
        clients.insert(name, c.clone());
        Ok(c)
    }
}

fn read_kubeconfig(options: &KubeOptions) -> Result<(Kubeconfig, String), TransportError> {
    if let Some(path) = &options.kubeconfig {
        let source = format!("`{}`", path.display());
        if !path.exists() {
            return Err(TransportError::Kubeconfig(format!(
                "kubeconfig {source} does not exist: pass an existing file with --kubeconfig"
            )));
        }
        let kc = Kubeconfig::read_from(path).map_err(|e| {
            TransportError::Kubeconfig(format!("cannot read kubeconfig {source}: {e}"))
        })?;
        return Ok((kc, source));
    }
    if let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let source = format!("from $KUBECONFIG (`{}`)", value.to_string_lossy());
        let existing: Vec<PathBuf> = std::env::split_paths(&value)
            .filter(|p| p.exists())
            .collect();
        if existing.is_empty() {
            return Err(TransportError::Kubeconfig(format!(
                "no kubeconfig file exists at $KUBECONFIG (`{}`): fix the variable or unset it to use ~/.kube/config",
                value.to_string_lossy()
            )));
        }
        let kc = Kubeconfig::read().map_err(|e| {
            TransportError::Kubeconfig(format!("cannot read kubeconfig {source}: {e}"))
        })?;
        return Ok((kc, source));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = home.map(|h| h.join(".kube").join("config"));
    match path {
        Some(path) if path.exists() => {
            let source = format!("`{}`", path.display());
            let kc = Kubeconfig::read_from(&path).map_err(|e| {
                TransportError::Kubeconfig(format!("cannot read kubeconfig {source}: {e}"))
            })?;
            Ok((kc, source))
        }
        _ => Err(TransportError::Kubeconfig(
            "no kubeconfig found: $KUBECONFIG is unset and ~/.kube/config does not exist; set KUBECONFIG, pass --kubeconfig, or create one with your cluster's get-credentials command".into(),
        )),
    }
}

impl ContextClient {
    /// Turn a kube error into one that says what failed and what to do.
    /// `verb`/`resource` name the permission the request needed.
    pub fn map_error(
        &self,
        error: kube::Error,
        verb: &str,
        resource: &str,
        namespace: &str,
        target: Option<&ContainerRef>,
    ) -> TransportError {
        let what = match target {
            Some(t) => format!("`{verb} {resource}` for pod `{}/{}`", t.namespace, t.pod),
            None => format!("`{verb} {resource}` in `{namespace}`"),
        };
        let by_code = |code: u16, detail: String| -> TransportError {
            match code {
                401 => TransportError::Unauthorized {
                    context: self.context.clone(),
                    server: self.server.clone(),
                },
                403 => TransportError::Forbidden {
                    verb: verb.into(),
                    resource: resource.into(),
                    namespace: namespace.into(),
                    detail,
                },
                404 if target.is_some() => {
                    let t = target.expect("checked above");
                    TransportError::PodGone {
                        namespace: t.namespace.clone(),
                        pod: t.pod.clone(),
                    }
                }
                429 | 500..=599 => TransportError::ServerBusy {
                    code,
                    what: what.clone(),
                    detail,
                },
                _ => match target {
                    Some(t) => TransportError::ExecFailed {
                        pod: t.pod.clone(),
                        container: t.container.clone(),
                        detail: format!("{code}: {detail}"),
                    },
                    None => TransportError::ServerBusy {
                        code,
                        what: what.clone(),
                        detail,
                    },
                },
            }
        };
        match error {
            kube::Error::Api(status) => by_code(status.code, status.message.clone()),
            kube::Error::UpgradeConnection(
                kube::client::UpgradeConnectionError::ProtocolSwitch(code),
            ) => by_code(code.as_u16(), "the exec upgrade was refused".into()),
            kube::Error::Auth(e) => TransportError::Kubeconfig(format!(
                "cannot authenticate with context `{}`: {e}; refresh your credentials",
                self.context
            )),
            kube::Error::HyperError(e) => TransportError::Unreachable {
                server: self.server.clone(),
                detail: error_chain(&e),
            },
            kube::Error::Service(e) => TransportError::Unreachable {
                server: self.server.clone(),
                detail: error_chain(e.as_ref()),
            },
            other => TransportError::Unreachable {
                server: self.server.clone(),
                detail: error_chain(&other),
            },
        }
    }
}

/// An error with its causes, so "connection refused" is not hidden behind
/// "client error (Connect)".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub type SharedConnector = Arc<Connector>;
