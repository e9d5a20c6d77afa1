//! kubesim: a small Kubernetes API server for podloop's tests and demo.
//!
//! It serves HTTPS on 127.0.0.1 with a CA generated at start, speaks enough of the apiserver's
//! wire protocol for `kubectl` and the `kube` crate (discovery, pods list/get/watch/delete/log,
//! server-side tables, exec over WebSocket v4/v5), and runs every container as a real process
//! tree: PID 1 in its own pid and mount namespaces, chrooted into a root built from an image.
// Handlers return an error `Response` through `Result`; it is built at most once per request,
// so its size does not matter.
#![allow(clippy::result_large_err)]

mod exec;
mod faults;
mod http;
pub mod image;
mod runtime;
mod selector;
mod server;
mod sim;
mod template;
mod tls;
mod volumes;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{CutMode, Faults};
pub use sim::{ExecRecord, PodRef, ReplaceOrder};
pub use template::{ContainerTemplate, EmptyDir, Image, PodTemplate, Volume, VolumeMount};

use server::ConnInfo;
use sim::Inner;

#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Holds the kubeconfig, pod roots and logs.
    pub dir: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    /// Bearer token clients must send; `None` generates a random one.
    pub token: Option<String>,
}

impl SimOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SimOptions {
            dir: dir.into(),
            port: 0,
            token: None,
        }
    }
}

pub struct Sim {
    inner: Arc<Inner>,
    server: JoinHandle<()>,
    addr: SocketAddr,
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubesim
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: kubesim
  user:
    token: {token}
contexts:
- name: kubesim
  context:
    cluster: kubesim
    user: kubesim
    namespace: default
current-context: kubesim
preferences: {{}}
"
    )
}

/// Writes `path` so that readers see either nothing or the whole file.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Sim {
    pub async fn start(opts: SimOptions) -> anyhow::Result<Sim> {
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating the sim dir {}", opts.dir.display()))?;
        // PID 1's root shows in /proc/PID/root as a canonical path; compare like with like.
        let dir = opts
            .dir
            .canonicalize()
            .with_context(|| format!("resolving {}", opts.dir.display()))?;
        std::fs::create_dir_all(dir.join("pods"))?;
        volumes::sweep_stale_mounts();
        // Lets a later sim unmount this one's volumes if this process is killed (no Drop runs).
        std::fs::write(dir.join(volumes::OWNER_FILE), volumes::owner_line())
            .context("writing the sim's owner file")?;
        let tls = tls::generate()?;
        let listener = TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", opts.port))?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        let token = opts.token.clone().unwrap_or_else(random_token);
        let inner = Inner::new(dir.clone(), token.clone(), url.clone(), tls.ca_pem.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
        let server_inner = inner.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let conn = ConnInfo {
                    fd: tcp.as_raw_fd(),
                };
                let acceptor = acceptor.clone();
                let inner = server_inner.clone();
                let handle = tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!("TLS handshake failed: {e}");
                            return;
                        }
                    };
                    let service = service_fn(move |req| server::handle(inner.clone(), conn, req));
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!("connection ended: {e}");
                    }
                });
                server_inner.track_task(handle.abort_handle());
            }
        });
        write_atomically(
            &dir.join("kubeconfig"),
            kubeconfig_yaml(&url, &tls.ca_pem, &token).as_bytes(),
        )
        .context("writing the kubeconfig")?;
        Ok(Sim {
            inner,
            server,
            addr,
        })
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.inner.dir.join("kubeconfig")
    }

    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    pub fn token(&self) -> String {
        self.inner.token.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sim's directory (canonical): kubeconfig, pod roots, logs.
    pub fn dir(&self) -> PathBuf {
        self.inner.dir.clone()
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    pub async fn create_pod(&self, t: PodTemplate) -> anyhow::Result<PodRef> {
        self.inner.create_pod(t).await
    }

    pub async fn delete_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.inner.delete_pod(namespace, name, None).await
    }

    pub async fn replace_pod(
        &self,
        namespace: &str,
        name: &str,
        order: ReplaceOrder,
    ) -> anyhow::Result<PodRef> {
        self.inner.replace_pod(namespace, name, order).await
    }

    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> anyhow::Result<()> {
        self.inner.set_ready(namespace, name, ready)
    }

    pub async fn restart_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<()> {
        self.inner
            .restart_container(namespace, pod, container)
            .await
    }

    pub fn container_root(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<PathBuf> {
        self.inner.container_root(namespace, pod, container)
    }

    pub fn read_file(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        path: &str,
    ) -> std::io::Result<Vec<u8>> {
        self.inner.read_file(namespace, pod, container, path)
    }

    /// Runs `command` in a running container (joining its namespaces, as its user), without
    /// going through the API; returns its exit status, stdout and stderr.
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        self.inner.exec(namespace, pod, container, &command).await
    }

    /// Restart count of a container, as `containerStatuses[].restartCount` reports it.
    pub fn restart_count(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        let state = self.inner.state.lock().unwrap();
        let p = state.pods.get(&(namespace.to_string(), pod.to_string()))?;
        p.container(container).map(|c| c.restart_count)
    }

    /// Names of the pods in `namespace`, sorted.
    pub fn pod_names(&self, namespace: &str) -> Vec<String> {
        let state = self.inner.state.lock().unwrap();
        state
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn exec_log(&self) -> Vec<ExecRecord> {
        self.inner.exec_log.lock().unwrap().clone()
    }

    /// Ends every open watch; clients see the stream end and re-watch.
    pub fn close_watches(&self) {
        self.inner.close_watches()
    }

    /// Forgets the watch history: resuming from any older resourceVersion answers 410 Expired.
    pub fn compact_history(&self) {
        self.inner.compact_history()
    }

    /// Host pids of every live pod process kubesim started (for leak checks).
    pub fn host_pids(&self) -> Vec<u32> {
        self.inner.all_host_pids()
    }

    /// Stops serving and kills every pod process; returns once they are gone.
    pub async fn shutdown(self) {
        let pids = self.inner.all_host_pids();
        self.server.abort();
        self.inner.kill_everything();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|pid| process_alive(*pid)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only a live process has a non-"Z" state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
        self.inner.kill_everything();
    }
}
