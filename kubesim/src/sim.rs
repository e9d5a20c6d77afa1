//! The simulated cluster: pod state, container supervisors, watch history. One mutex owns the
//! state; every change bumps the resourceVersion and is published as a watch event.
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::faults::Faults;
use crate::image;
use crate::runtime::{self, DEFAULT_COMMAND};
use crate::template::{Image, PodTemplate};
use crate::volumes;

/// Events kept for watches that resume from a resourceVersion; older ones answer 410 Expired.
const HISTORY_LIMIT: usize = 10_000;
/// Grace period of a delete without `gracePeriodSeconds`, kept short so tests stay fast.
pub const DEFAULT_GRACE_SECONDS: u64 = 3;
const FIRST_RESOURCE_VERSION: u64 = 1000;
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplaceOrder {
    /// The new pod is created and Ready before the old one is deleted (maxSurge rollout).
    NewFirst,
    /// The old pod is gone before the new one is created (Recreate / maxUnavailable rollout).
    OldFirst,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    /// Negotiated WebSocket subprotocol, e.g. `v5.channel.k8s.io`.
    pub protocol: String,
    pub stdin_bytes: u64,
    /// Exit code once the process ended (128 + signal when killed); `None` while it runs.
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug)]
pub(crate) struct Terminated {
    pub exit_code: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub run: u32,
}

#[derive(Debug)]
pub(crate) struct ContainerState {
    pub name: String,
    pub image: Image,
    pub command: String,
    pub root: PathBuf,
    pub log_dir: PathBuf,
    /// PID 1 as the host sees it, while the container runs.
    pub host_pid: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub restart_count: u32,
    /// Run number of the current (or next) start; names its log file.
    pub run: u32,
    pub last_terminated: Option<Terminated>,
    pub waiting: Option<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct PodState {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generate_base: String,
    pub template: PodTemplate,
    pub created_at: DateTime<Utc>,
    pub ip: String,
    pub ready_flag: bool,
    pub ready_changed_at: DateTime<Utc>,
    pub deletion: Option<(DateTime<Utc>, u64)>,
    pub resource_version: u64,
    pub containers: Vec<ContainerState>,
    pub dir: PathBuf,
    stop: watch::Sender<Option<u64>>,
    supervisors: Vec<JoinHandle<()>>,
}

impl PodState {
    pub fn all_started(&self) -> bool {
        self.containers.iter().all(|c| c.started_at.is_some())
    }

    pub fn containers_ready(&self) -> bool {
        self.containers.iter().all(|c| c.host_pid.is_some())
    }

    pub fn is_ready(&self) -> bool {
        self.ready_flag && self.containers_ready() && self.deletion.is_none()
    }

    pub fn phase(&self) -> &'static str {
        if self.all_started() {
            "Running"
        } else {
            "Pending"
        }
    }

    pub fn container(&self, name: &str) -> Option<&ContainerState> {
        self.containers.iter().find(|c| c.name == name)
    }
}

#[derive(Debug)]
pub(crate) struct WatchEvent {
    pub resource_version: u64,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub phase: &'static str,
    pub pod: Value,
}

#[derive(Debug)]
pub(crate) struct State {
    pub resource_version: u64,
    pub pods: BTreeMap<(String, String), PodState>,
    pub history: VecDeque<Arc<WatchEvent>>,
    /// Watches may resume from any resourceVersion >= this one.
    pub oldest_resumable: u64,
    next_ip: u32,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub token: String,
    pub url: String,
    pub ca_pem: String,
    pub state: Mutex<State>,
    pub events: broadcast::Sender<Arc<WatchEvent>>,
    pub changed: watch::Sender<u64>,
    pub watch_epoch: watch::Sender<u64>,
    pub faults: Faults,
    pub exec_log: Mutex<Vec<ExecRecord>>,
    /// `unshare` processes alive: killing one tears its pid namespace down.
    pub processes: Mutex<HashSet<u32>>,
    pub tasks: Mutex<Vec<AbortHandle>>,
    /// Volume mount points in kubesim's mount namespace, by pod uid, in the order mounted.
    pub mounts: Mutex<BTreeMap<String, Vec<PathBuf>>>,
}

fn now() -> DateTime<Utc> {
    // Kubernetes timestamps have second precision.
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

pub(crate) fn timestamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_suffix(len: usize) -> String {
    // The alphabet Kubernetes uses for generateName (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:01x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 0xf, b[7], (b[8] & 0x3f) | 0x80, b[9], b[10],
        b[11], b[12], b[13], b[14], b[15]
    )
}

fn valid_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub(crate) fn render_pod(pod: &PodState) -> Value {
    let mut metadata = json!({
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
        "resourceVersion": pod.resource_version.to_string(),
        "creationTimestamp": timestamp(&pod.created_at),
    });
    if !pod.template.labels.is_empty() {
        metadata["labels"] = json!(pod.template.labels);
    }
    if !pod.template.annotations.is_empty() {
        metadata["annotations"] = json!(pod.template.annotations);
    }
    if pod.template.name.is_none() {
        metadata["generateName"] = json!(pod.generate_base);
    }
    if let Some((at, grace)) = &pod.deletion {
        metadata["deletionTimestamp"] = json!(timestamp(at));
        metadata["deletionGracePeriodSeconds"] = json!(grace);
    }
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .zip(&pod.template.containers)
        .map(|(c, t)| {
            let mut container = json!({
                "name": c.name,
                "image": c.image.reference(),
                "command": ["/bin/sh", "-c", c.command],
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            });
            if !t.volume_mounts.is_empty() {
                container["volumeMounts"] = json!(t.volume_mounts);
            }
            container
        })
        .collect();
    let ready = pod.is_ready();
    let container_statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            let container_id = |run: u32| format!("kubesim://{}-{}-{}", pod.uid, c.name, run);
            let state = match (c.host_pid, &c.waiting, &c.started_at) {
                (Some(_), _, Some(started)) => {
                    json!({"running": {"startedAt": timestamp(started)}})
                }
                (_, Some((reason, message)), _) => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                _ => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut status = json!({
                "name": c.name,
                "image": c.image.reference(),
                "imageID": format!("{}@sha256:{:064x}", c.image.reference(), c.image as u8),
                "ready": ready,
                "started": c.host_pid.is_some(),
                "restartCount": c.restart_count,
                "state": state,
                "lastState": {},
            });
            if c.host_pid.is_some() {
                status["containerID"] = json!(container_id(c.run));
            }
            if let Some(t) = &c.last_terminated {
                status["lastState"] = json!({"terminated": {
                    "exitCode": t.exit_code,
                    "reason": if t.exit_code == 0 { "Completed" } else { "Error" },
                    "startedAt": timestamp(&t.started_at),
                    "finishedAt": timestamp(&t.finished_at),
                    "containerID": container_id(t.run),
                }});
            }
            status
        })
        .collect();
    let condition = |kind: &str, ok: bool, at: &DateTime<Utc>| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": timestamp(at)});
    let containers_ready = pod.containers_ready();
    let mut rendered = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": DEFAULT_GRACE_SECONDS,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": "kubesim",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": pod.phase(),
            "conditions": [
                condition("PodReadyToStartContainers", true, &pod.created_at),
                condition("Initialized", true, &pod.created_at),
                condition("Ready", ready, &pod.ready_changed_at),
                condition("ContainersReady", containers_ready, &pod.ready_changed_at),
                condition("PodScheduled", true, &pod.created_at),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": timestamp(&pod.created_at),
            "containerStatuses": container_statuses,
            "qosClass": "BestEffort",
        }
    });
    if !pod.template.volumes.is_empty() {
        rendered["spec"]["volumes"] = json!(pod.template.volumes);
    }
    rendered
}

impl State {
    fn publish(
        &mut self,
        inner_events: &broadcast::Sender<Arc<WatchEvent>>,
        kind: &'static str,
        key: &(String, String),
    ) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        self.resource_version += 1;
        pod.resource_version = self.resource_version;
        let event = Arc::new(WatchEvent {
            resource_version: self.resource_version,
            kind,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.template.labels.clone(),
            phase: pod.phase(),
            pod: render_pod(pod),
        });
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_resumable = dropped.resource_version;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = inner_events.send(event);
    }
}

impl Inner {
    pub fn new(dir: PathBuf, token: String, url: String, ca_pem: String) -> Arc<Inner> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Inner {
            dir,
            token,
            url,
            ca_pem,
            state: Mutex::new(State {
                resource_version: FIRST_RESOURCE_VERSION,
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                oldest_resumable: FIRST_RESOURCE_VERSION,
                next_ip: 10,
            }),
            events,
            changed: watch::channel(0).0,
            watch_epoch: watch::channel(0).0,
            faults: Faults::default(),
            exec_log: Mutex::new(Vec::new()),
            processes: Mutex::new(HashSet::new()),
            tasks: Mutex::new(Vec::new()),
            mounts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Applies `change` to a pod and publishes `kind` for it, atomically.
    pub fn update_pod(
        &self,
        key: &(String, String),
        kind: &'static str,
        change: impl FnOnce(&mut PodState),
    ) -> bool {
        let mut state = self.state.lock().unwrap();
        let Some(pod) = state.pods.get_mut(key) else {
            return false;
        };
        change(pod);
        state.publish(&self.events, kind, key);
        let rv = state.resource_version;
        drop(state);
        self.changed.send_replace(rv);
        true
    }

    /// Waits until `condition` holds on the state, or fails with `what` after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&State) -> bool,
    ) -> anyhow::Result<()> {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if condition(&self.state.lock().unwrap()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow!("timed out after {timeout:?} waiting for {what}"))
    }

    pub fn track_task(&self, handle: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    pub async fn create_pod(self: &Arc<Self>, template: PodTemplate) -> anyhow::Result<PodRef> {
        if template.containers.is_empty() {
            bail!("pod template has no containers: add one with .container(name, image)");
        }
        let mut names = HashSet::new();
        for c in &template.containers {
            if !valid_dns_label(&c.name) || !names.insert(c.name.as_str()) {
                bail!(
                    "container name `{}` is invalid or repeated: use unique lowercase DNS labels",
                    c.name
                );
            }
            if c.image.is_busybox() && !image::busybox_available() {
                bail!("image `{}` needs /bin/busybox: run `apt-get install -y busybox-static`, or use image `host`", c.image.as_str());
            }
        }
        volumes::validate(&template)?;
        if !valid_dns_label(&template.namespace) {
            bail!(
                "namespace `{}` is not a valid DNS label",
                template.namespace
            );
        }
        let generate_base = match (&template.name, &template.generate_name) {
            (_, Some(base)) => base.clone(),
            (Some(name), None) => format!("{name}-"),
            (None, None) => bail!("pod template needs `name` or `generateName`"),
        };
        let uid = new_uid();
        let pod_dir = self.dir.join("pods").join(&uid);
        let namespace = template.namespace.clone();
        let key;
        {
            let mut state = self.state.lock().unwrap();
            let name = match &template.name {
                Some(name) => name.clone(),
                None => loop {
                    let candidate = format!("{generate_base}{}", random_suffix(5));
                    if !state
                        .pods
                        .contains_key(&(namespace.clone(), candidate.clone()))
                    {
                        break candidate;
                    }
                },
            };
            if !valid_dns_label(&name) {
                bail!("pod name `{name}` is not a valid DNS subdomain");
            }
            key = (namespace.clone(), name.clone());
            if state.pods.contains_key(&key) {
                bail!("pods \"{name}\" already exists in namespace `{namespace}`");
            }
            let ip_index = state.next_ip;
            state.next_ip += 1;
            let created_at = now();
            let containers = template
                .containers
                .iter()
                .map(|c| ContainerState {
                    name: c.name.clone(),
                    image: c.image,
                    command: c
                        .command
                        .clone()
                        .unwrap_or_else(|| DEFAULT_COMMAND.to_string()),
                    root: pod_dir.join("containers").join(&c.name).join("root"),
                    log_dir: pod_dir.join("containers").join(&c.name),
                    host_pid: None,
                    started_at: None,
                    restart_count: 0,
                    run: 0,
                    last_terminated: None,
                    waiting: Some(("ContainerCreating".into(), String::new())),
                })
                .collect();
            state.pods.insert(
                key.clone(),
                PodState {
                    namespace: namespace.clone(),
                    name,
                    uid: uid.clone(),
                    generate_base,
                    template: template.clone(),
                    created_at,
                    ip: format!("10.244.{}.{}", ip_index / 250, ip_index % 250 + 2),
                    ready_flag: template.ready,
                    ready_changed_at: created_at,
                    deletion: None,
                    resource_version: 0,
                    containers,
                    dir: pod_dir.clone(),
                    stop: watch::channel(None).0,
                    supervisors: Vec::new(),
                },
            );
            state.publish(&self.events, "ADDED", &key);
            let rv = state.resource_version;
            drop(state);
            self.changed.send_replace(rv);
        }
        let build = {
            let template = template.clone();
            let pod_dir = pod_dir.clone();
            let inner = self.clone();
            let uid = uid.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                for c in &template.containers {
                    let cdir = pod_dir.join("containers").join(&c.name);
                    image::build_root(&cdir.join("root"), c)?;
                }
                volumes::mount_all(&pod_dir, &template, |mount_point| {
                    inner
                        .mounts
                        .lock()
                        .unwrap()
                        .entry(uid.clone())
                        .or_default()
                        .push(mount_point)
                })
            })
            .await
        };
        let built = build
            .map_err(|e| anyhow!("image build task failed: {e}"))
            .and_then(|r| r.context("building the container roots"));
        if let Err(e) = built {
            self.remove_pod(&key);
            return Err(e);
        }
        for index in 0..template.containers.len() {
            let inner = self.clone();
            let key2 = key.clone();
            let stop = self.state.lock().unwrap().pods[&key].stop.subscribe();
            let handle = tokio::spawn(async move { inner.supervise(key2, index, stop).await });
            self.track_task(handle.abort_handle());
            if let Some(pod) = self.state.lock().unwrap().pods.get_mut(&key) {
                pod.supervisors.push(handle);
            }
        }
        let wait_ready = template.ready;
        let k = key.clone();
        self.wait_for(
            &format!("pod {}/{} to run", key.0, key.1),
            START_TIMEOUT,
            move |s| {
                s.pods.get(&k).is_none_or(|p| {
                    p.containers.iter().any(|c| {
                        c.waiting
                            .as_ref()
                            .is_some_and(|w| w.0 == "CreateContainerError")
                    }) || (p.all_started() && (!wait_ready || p.is_ready()))
                })
            },
        )
        .await?;
        let state = self.state.lock().unwrap();
        let pod = state
            .pods
            .get(&key)
            .ok_or_else(|| anyhow!("pod {}/{} vanished while starting", key.0, key.1))?;
        if let Some(c) = pod.containers.iter().find(|c| {
            c.waiting
                .as_ref()
                .is_some_and(|w| w.0 == "CreateContainerError")
        }) {
            bail!(
                "container `{}` of pod {}/{} failed to start: {}",
                c.name,
                key.0,
                key.1,
                c.waiting.as_ref().map(|w| w.1.as_str()).unwrap_or("")
            );
        }
        Ok(PodRef {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid,
        })
    }

    fn remove_pod(&self, key: &(String, String)) {
        let mut state = self.state.lock().unwrap();
        if !state.pods.contains_key(key) {
            return;
        }
        state.publish(&self.events, "DELETED", key);
        let removed = state.pods.remove(key);
        let rv = state.resource_version;
        drop(state);
        self.changed.send_replace(rv);
        if let Some(pod) = removed {
            // Before the folder goes: a mount point cannot be removed, and a volume's tmpfs
            // must not outlive its pod.
            let mounts = self.mounts.lock().unwrap().remove(&pod.uid);
            volumes::unmount_all(&mounts.unwrap_or_default());
            let dir = pod.dir.clone();
            // Roots can be large; removing them must not block the runtime.
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }

    /// Runs one container: starts PID 1, restarts it when it exits, stops it when told.
    async fn supervise(
        self: Arc<Self>,
        key: (String, String),
        index: usize,
        mut stop: watch::Receiver<Option<u64>>,
    ) {
        loop {
            let spec = {
                let state = self.state.lock().unwrap();
                let Some(pod) = state.pods.get(&key) else {
                    return;
                };
                let c = &pod.containers[index];
                (
                    c.root.clone(),
                    c.image,
                    c.command.clone(),
                    c.log_dir.clone(),
                    c.run,
                    pod.name.clone(),
                )
            };
            let (root, image, command, log_dir, run, pod_name) = spec;
            if stop.borrow().is_some() {
                return;
            }
            let log = runtime::log_path(&log_dir, "main", run);
            let started = runtime::spawn_main(&root, image, &command, &pod_name, &log).await;
            let mut main = match started {
                Ok(main) => main,
                Err(e) => {
                    self.update_pod(&key, "MODIFIED", |p| {
                        p.containers[index].waiting =
                            Some(("CreateContainerError".into(), e.to_string()));
                    });
                    let _ = stop.wait_for(|s| s.is_some()).await;
                    return;
                }
            };
            let unshare_pid = main.child.id().unwrap_or(0);
            self.processes.lock().unwrap().insert(unshare_pid);
            let started_at = now();
            let host_pid = main.host_pid;
            self.update_pod(&key, "MODIFIED", |p| {
                let was_ready = p.is_ready();
                let c = &mut p.containers[index];
                c.host_pid = (host_pid != 0).then_some(host_pid);
                c.started_at = Some(started_at);
                c.waiting = None;
                if p.is_ready() != was_ready {
                    p.ready_changed_at = now();
                }
            });
            let exited = tokio::select! {
                status = main.child.wait() => Some(status),
                _ = stop.wait_for(|s| s.is_some()) => None,
            };
            let stopping = match exited {
                Some(status) => {
                    let exit_code = status.map(|s| exit_code_of(&s)).unwrap_or(-1);
                    self.processes.lock().unwrap().remove(&unshare_pid);
                    let finished_at = now();
                    let stopping = stop.borrow().is_some();
                    self.update_pod(&key, "MODIFIED", |p| {
                        let was_ready = p.is_ready();
                        let c = &mut p.containers[index];
                        c.host_pid = None;
                        c.last_terminated = Some(Terminated {
                            exit_code,
                            started_at,
                            finished_at,
                            run,
                        });
                        if !stopping {
                            c.restart_count += 1;
                            c.run += 1;
                            c.waiting = Some(("ContainerCreating".into(), String::new()));
                        }
                        if p.is_ready() != was_ready {
                            p.ready_changed_at = now();
                        }
                    });
                    if stopping {
                        return;
                    }
                    false
                }
                None => true,
            };
            if stopping {
                let grace = stop.borrow().unwrap_or(DEFAULT_GRACE_SECONDS);
                runtime::kill_pid(host_pid, libc::SIGTERM);
                let exited =
                    tokio::time::timeout(Duration::from_secs(grace), main.child.wait()).await;
                if exited.is_err() {
                    // SIGKILL on unshare: --kill-child takes PID 1 and its namespace with it.
                    let _ = main.child.start_kill();
                    let _ = main.child.wait().await;
                }
                self.processes.lock().unwrap().remove(&unshare_pid);
                self.update_pod(&key, "MODIFIED", |p| {
                    let c = &mut p.containers[index];
                    c.host_pid = None;
                });
                return;
            }
            // A short back-off, as the kubelet's CrashLoopBackOff, keeps a crashing command from
            // spinning the CPU.
            let restarts = self
                .state
                .lock()
                .unwrap()
                .pods
                .get(&key)
                .map(|p| p.containers[index].restart_count)
                .unwrap_or(0);
            let backoff =
                Duration::from_millis((u64::from(restarts.saturating_sub(1)) * 200).min(5_000));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| s.is_some()) => return,
            }
        }
    }

    /// Marks the pod terminating and returns its state; the caller runs `finish_delete`.
    pub fn begin_delete(
        &self,
        namespace: &str,
        name: &str,
        grace: Option<u64>,
    ) -> anyhow::Result<Value> {
        let key = (namespace.to_string(), name.to_string());
        let grace = grace.unwrap_or(DEFAULT_GRACE_SECONDS);
        let mut rendered = None;
        let found = self.update_pod(&key, "MODIFIED", |p| {
            if p.deletion.is_none() {
                p.deletion = Some((now(), grace));
                p.ready_changed_at = now();
            }
            let grace = p.deletion.map(|d| d.1).unwrap_or(grace);
            p.stop.send_replace(Some(grace));
        });
        if !found {
            bail!("pods \"{name}\" not found");
        }
        if let Some(p) = self.state.lock().unwrap().pods.get(&key) {
            rendered = Some(render_pod(p));
        }
        rendered.ok_or_else(|| anyhow!("pods \"{name}\" not found"))
    }

    pub async fn finish_delete(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let supervisors = match self.state.lock().unwrap().pods.get_mut(&key) {
            Some(p) => std::mem::take(&mut p.supervisors),
            None => return,
        };
        for s in supervisors {
            let _ = s.await;
        }
        self.remove_pod(&key);
    }

    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace: Option<u64>,
    ) -> anyhow::Result<()> {
        self.begin_delete(namespace, name, grace)?;
        self.finish_delete(namespace, name).await;
        Ok(())
    }

    pub async fn replace_pod(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        order: ReplaceOrder,
    ) -> anyhow::Result<PodRef> {
        let template = {
            let state = self.state.lock().unwrap();
            let pod = state
                .pods
                .get(&(namespace.to_string(), name.to_string()))
                .ok_or_else(|| anyhow!("pods \"{name}\" not found in namespace `{namespace}`"))?;
            let mut t = pod.template.clone();
            t.name = None;
            t.generate_name = Some(pod.generate_base.clone());
            t.ready = true;
            t
        };
        match order {
            ReplaceOrder::NewFirst => {
                let new = self.create_pod(template).await?;
                self.delete_pod(namespace, name, None).await?;
                Ok(new)
            }
            ReplaceOrder::OldFirst => {
                self.delete_pod(namespace, name, None).await?;
                self.create_pod(template).await
            }
        }
    }

    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> anyhow::Result<()> {
        let key = (namespace.to_string(), name.to_string());
        let found = self.update_pod(&key, "MODIFIED", |p| {
            let was = p.is_ready();
            p.ready_flag = ready;
            if p.is_ready() != was {
                p.ready_changed_at = now();
            }
        });
        if !found {
            bail!("pods \"{name}\" not found in namespace `{namespace}`");
        }
        Ok(())
    }

    pub async fn restart_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<()> {
        let key = (namespace.to_string(), pod.to_string());
        let (host_pid, restarts) = self.with_container(namespace, pod, container, |c| {
            Ok((running_pid(c, pod)?, c.restart_count))
        })?;
        runtime::kill_pid(host_pid, libc::SIGKILL);
        let container = container.to_string();
        self.wait_for(
            &format!("container `{container}` of {namespace}/{pod} to restart"),
            START_TIMEOUT,
            move |s| {
                s.pods
                    .get(&key)
                    .and_then(|p| p.container(&container))
                    .is_none_or(|c| c.restart_count > restarts && c.host_pid.is_some())
            },
        )
        .await
    }

    pub fn container_root(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<PathBuf> {
        self.with_container(namespace, pod, container, |c| Ok(c.root.clone()))
    }

    /// `f` on a container's state, with the API's errors for a missing pod
    /// or container.
    fn with_container<T>(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        f: impl FnOnce(&ContainerState) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let state = self.state.lock().unwrap();
        let p = state
            .pods
            .get(&(namespace.to_string(), pod.to_string()))
            .ok_or_else(|| anyhow!("pods \"{pod}\" not found in namespace `{namespace}`"))?;
        let c = p
            .container(container)
            .ok_or_else(|| anyhow!("container {container} is not valid for pod {pod}"))?;
        f(c)
    }

    pub fn read_file(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        path: &str,
    ) -> std::io::Result<Vec<u8>> {
        let root = self
            .container_root(namespace, pod, container)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
        let host_path = resolve_in_root(&root, path)?;
        std::fs::read(&host_path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading `{path}` in {namespace}/{pod}/{container}: {e}"),
            )
        })
    }

    pub fn compact_history(&self) {
        let mut state = self.state.lock().unwrap();
        state.history.clear();
        state.oldest_resumable = state.resource_version;
    }

    pub fn close_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Kills every pod process at once (SIGKILL); used by Drop and shutdown.
    pub fn kill_everything(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let pids: Vec<u32> = self.processes.lock().unwrap().drain().collect();
        for pid in pids {
            runtime::kill_pid(pid, libc::SIGKILL);
        }
        let state = self.state.lock().unwrap();
        for pod in state.pods.values() {
            for c in &pod.containers {
                if let Some(pid) = c.host_pid {
                    runtime::kill_pid(pid, libc::SIGKILL);
                }
            }
        }
        drop(state);
        // Each pod's namespace holds its own copy of these mounts, which dies with its
        // processes; kubesim's copies are unmounted here so the sim's folder can be removed.
        let mounts = std::mem::take(&mut *self.mounts.lock().unwrap());
        for pod_mounts in mounts.values() {
            volumes::unmount_all(pod_mounts);
        }
    }

    /// Runs `command` inside a running container, as `kubectl exec` would, without the API.
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        command: &[String],
    ) -> anyhow::Result<std::process::Output> {
        let (host_pid, image) = self.with_container(namespace, pod, container, |c| {
            Ok((running_pid(c, pod)?, c.image))
        })?;
        let child = runtime::spawn_exec(host_pid, image, command, false, true, true)
            .context("starting nsenter for an exec")?;
        Ok(child.wait_with_output().await?)
    }

    pub fn all_host_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.processes.lock().unwrap().iter().copied().collect();
        let state = self.state.lock().unwrap();
        for pod in state.pods.values() {
            pids.extend(pod.containers.iter().filter_map(|c| c.host_pid));
        }
        pids
    }
}

pub(crate) fn exit_code_of(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Resolves an absolute container path under the root, following symlinks inside the root
/// the way the container would see them.
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> std::io::Result<PathBuf> {
    let mut resolved = root.to_path_buf();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                if resolved != root {
                    resolved.pop();
                }
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(std::io::Error::other(format!(
                        "too many symlinks resolving `{path}`"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    resolved = root.to_path_buf();
                }
                for p in target.split('/').filter(|s| !s.is_empty()).rev() {
                    pending.push(p.to_string());
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(resolved)
}

fn running_pid(c: &ContainerState, pod: &str) -> anyhow::Result<u32> {
    c.host_pid
        .ok_or_else(|| anyhow!("container `{}` of pod {pod} is not running", c.name))
}
