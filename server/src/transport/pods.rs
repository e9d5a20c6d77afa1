//! Which containers a query resolves to: listing, the readiness rules, the
//! container choice, hints when nothing matches, and following changes.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;

use super::client::ContextClient;
use super::error::TransportError;

const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodMatch {
    Labels(String),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodQuery {
    pub namespace: String,
    pub pods: PodMatch,
    pub container: Option<String>,
    pub all_replicas: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolvedContainer {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub restart_count: u32,
}

/// Running, Ready and not being deleted: the pods a save may go to.
pub fn is_eligible(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if status.phase.as_deref() != Some("Running") {
        return false;
    }
    status
        .conditions
        .as_ref()
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The container a query writes to in `pod`: the one asked for, else the
/// default-container annotation, else the first.
pub fn choose_container(pod: &Pod, wanted: Option<&str>) -> Result<String, TransportError> {
    let names = container_names(pod);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let no_such = |container: &str| TransportError::NoSuchContainer {
        namespace: namespace.clone(),
        pod: pod_name.clone(),
        container: container.to_string(),
        available: names.join(", "),
    };
    if let Some(wanted) = wanted {
        return if names.iter().any(|n| n == wanted) {
            Ok(wanted.to_string())
        } else {
            Err(no_such(wanted))
        };
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION));
    if let Some(annotated) = annotated {
        if names.iter().any(|n| n == annotated) {
            return Ok(annotated.clone());
        }
    }
    names.first().cloned().ok_or_else(|| no_such("(any)"))
}

fn restart_count(pod: &Pod, container: &str) -> u32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .map(|c| c.restart_count.max(0) as u32)
        .unwrap_or(0)
}

/// The targets among `pods` (already filtered by the query's selector),
/// sorted by pod name so "first" is stable. Empty when none is eligible.
pub fn select_targets(
    pods: &[Pod],
    query: &PodQuery,
) -> Result<Vec<ResolvedContainer>, TransportError> {
    let mut eligible: Vec<&Pod> = pods.iter().filter(|p| is_eligible(p)).collect();
    eligible.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if !query.all_replicas {
        eligible.truncate(1);
    }
    let mut out = Vec::with_capacity(eligible.len());
    for pod in eligible {
        let container = choose_container(pod, query.container.as_deref())?;
        out.push(ResolvedContainer {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| query.namespace.clone()),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            restart_count: restart_count(pod, &container),
            container,
        });
    }
    Ok(out)
}

fn describe(query: &PodMatch) -> String {
    match query {
        PodMatch::Labels(s) => format!("`{s}`"),
        PodMatch::Name(n) => format!("pod `{n}`"),
    }
}

fn label_keys(selector: &str) -> Vec<String> {
    selector
        .split(',')
        .filter_map(|term| {
            let term = term.trim().trim_start_matches('!');
            let end = term.find(['=', '!', ' ']).unwrap_or(term.len());
            let key = term[..end].trim();
            (!key.is_empty()).then(|| key.to_string())
        })
        .collect()
}

fn why_not_eligible(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "terminating".into();
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    if phase != "Running" {
        return format!("phase {phase}");
    }
    "not Ready".into()
}

/// The message for "nothing matches", with what does exist: pods that match
/// but are not eligible (and why), and pods that share a label key.
pub fn no_match_message(query: &PodQuery, matching: &[Pod], all_in_namespace: &[Pod]) -> String {
    let mut text = format!(
        "no pods match {} in `{}`",
        describe(&query.pods),
        query.namespace
    );
    if !matching.is_empty() {
        let listed: Vec<String> = matching
            .iter()
            .take(5)
            .map(|p| {
                format!(
                    "{} ({})",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    why_not_eligible(p)
                )
            })
            .collect();
        text.push_str(&format!(
            " that are Running and Ready; matching but not ready: {}; podloop will sync when one becomes Ready",
            listed.join(", ")
        ));
        return text;
    }
    let similar: Vec<String> = match &query.pods {
        PodMatch::Labels(selector) => {
            let keys = label_keys(selector);
            all_in_namespace
                .iter()
                .filter_map(|p| {
                    let labels = p.metadata.labels.as_ref()?;
                    let shared: Vec<String> = labels
                        .iter()
                        .filter(|(k, _)| keys.contains(k))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    (!shared.is_empty()).then(|| {
                        format!(
                            "{} ({})",
                            p.metadata.name.as_deref().unwrap_or("?"),
                            shared.join(",")
                        )
                    })
                })
                .take(5)
                .collect()
        }
        PodMatch::Name(name) => all_in_namespace
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .filter(|n| n.contains(name.as_str()) || name.contains(n.as_str()))
            .take(5)
            .collect(),
    };
    if similar.is_empty() {
        text.push_str(&format!(
            "; the namespace has {} pod(s), none with a similar name or label; check the selector and namespace with `kubectl get pods -n {} --show-labels`",
            all_in_namespace.len(),
            query.namespace
        ));
    } else {
        text.push_str(&format!(
            "; pods with similar labels: {}; check the selector in podloop.toml",
            similar.join(", ")
        ));
    }
    text
}

fn list_params(query: &PodQuery) -> ListParams {
    match &query.pods {
        PodMatch::Labels(s) => ListParams::default().labels(s),
        PodMatch::Name(n) => ListParams::default().fields(&format!("metadata.name={n}")),
    }
}

fn watcher_config(query: &PodQuery) -> watcher::Config {
    match &query.pods {
        PodMatch::Labels(s) => watcher::Config::default().labels(s),
        PodMatch::Name(n) => watcher::Config::default().fields(&format!("metadata.name={n}")),
    }
}

/// The targets right now; an error with hints when none is eligible.
pub async fn resolve(
    client: &ContextClient,
    query: &PodQuery,
) -> Result<Vec<ResolvedContainer>, TransportError> {
    let api: Api<Pod> = Api::namespaced(client.client.clone(), &query.namespace);
    let list = api
        .list(&list_params(query))
        .await
        .map_err(|e| client.map_error(e, "list", "pods", &query.namespace, None))?;
    let targets = select_targets(&list.items, query)?;
    if !targets.is_empty() {
        return Ok(targets);
    }
    let all = if list.items.is_empty() {
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Err(TransportError::NoPodsMatch(no_match_message(
        query,
        &list.items,
        &all,
    )))
}

/// Follow `query`, sending (through `convert`) the target list every time
/// it changes (an empty list is a valid state: no pod is Ready right now),
/// or an error when the watch fails. The kube watcher re-lists after a 410
/// or a dropped watch and backs off on errors. Returns when the receiver is
/// gone.
pub async fn watch<T, F>(
    client: &ContextClient,
    query: &PodQuery,
    changes: tokio::sync::mpsc::Sender<T>,
    convert: F,
) where
    T: Send,
    F: Fn(Result<Vec<ResolvedContainer>, TransportError>) -> T + Send,
{
    use kube::runtime::WatchStreamExt;
    let api: Api<Pod> = Api::namespaced(client.client.clone(), &query.namespace);
    let mut events = watcher(api, watcher_config(query))
        .default_backoff()
        .boxed();
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, Pod>> = None;
    let mut last_sent: Option<Result<Vec<ResolvedContainer>, TransportError>> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = changes.closed() => return,
        };
        let changed = match event {
            Ok(watcher::Event::Init) => {
                init = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(init) = init.as_mut() {
                    init.insert(key(&pod), pod);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(fresh) = init.take() {
                    pods = fresh;
                }
                true
            }
            Ok(watcher::Event::Apply(pod)) => {
                pods.insert(key(&pod), pod);
                true
            }
            Ok(watcher::Event::Delete(pod)) => {
                pods.remove(&key(&pod));
                true
            }
            Err(e) => {
                let error = match e {
                    watcher::Error::InitialListFailed(e)
                    | watcher::Error::WatchStartFailed(e)
                    | watcher::Error::WatchFailed(e) => {
                        client.map_error(e, "watch", "pods", &query.namespace, None)
                    }
                    other => TransportError::Unreachable {
                        server: client.server.clone(),
                        detail: other.to_string(),
                    },
                };
                let result = Err(error);
                if last_sent.as_ref() != Some(&result) {
                    last_sent = Some(result.clone());
                    if changes.send(convert(result)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        if !changed {
            continue;
        }
        let all: Vec<Pod> = pods.values().cloned().collect();
        let result = select_targets(&all, query);
        if last_sent.as_ref() != Some(&result) {
            last_sent = Some(result.clone());
            if changes.send(convert(result)).await.is_err() {
                return;
            }
        }
    }
}

fn key(pod: &Pod) -> String {
    pod.metadata
        .uid
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, ready: bool, containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("dev".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|c| Container {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn query(all: bool, container: Option<&str>) -> PodQuery {
        PodQuery {
            namespace: "dev".into(),
            pods: PodMatch::Labels("app=api".into()),
            container: container.map(String::from),
            all_replicas: all,
        }
    }

    #[test]
    fn only_ready_running_live_pods_are_targets() {
        let mut terminating = pod("c", true, &["main"]);
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut pending = pod("d", true, &["main"]);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = vec![
            pod("b", true, &["main"]),
            pod("a", false, &["main"]),
            terminating,
            pending,
            pod("e", true, &["main"]),
        ];
        let all = select_targets(&pods, &query(true, None)).unwrap();
        let names: Vec<&str> = all.iter().map(|t| t.pod.as_str()).collect();
        assert_eq!(names, ["b", "e"]);
        let first = select_targets(&pods, &query(false, None)).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].pod, "b");
    }

    #[test]
    fn container_choice_follows_spec_then_annotation_then_first() {
        let mut p = pod("a", true, &["sidecar", "api"]);
        assert_eq!(choose_container(&p, None).unwrap(), "sidecar");
        p.metadata.annotations =
            Some([(DEFAULT_CONTAINER_ANNOTATION.to_string(), "api".to_string())].into());
        assert_eq!(choose_container(&p, None).unwrap(), "api");
        assert_eq!(choose_container(&p, Some("sidecar")).unwrap(), "sidecar");
        let err = choose_container(&p, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("has no container `nope`"), "{err}");
        assert!(err.contains("sidecar, api"), "{err}");
    }

    #[test]
    fn no_match_message_names_similar_pods() {
        let pods = vec![pod("web-1", true, &["main"])];
        let q = PodQuery {
            pods: PodMatch::Labels("app=api".into()),
            ..query(true, None)
        };
        let text = no_match_message(&q, &[], &pods);
        assert!(
            text.starts_with("no pods match `app=api` in `dev`"),
            "{text}"
        );
        assert!(text.contains("web-1 (app=web)"), "{text}");
        let unready = vec![pod("api-1", false, &["main"])];
        let text = no_match_message(&q, &unready, &unready);
        assert!(text.contains("api-1 (not Ready)"), "{text}");
    }
}
