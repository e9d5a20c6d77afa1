//! The HTTPS front: authentication, discovery, pods, watch, logs, tables and `/_sim/`.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::channel::mpsc;
use futures::SinkExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use crate::http::{
    forbidden, full, json_response, pod_not_found, status_error, status_error_with, status_value,
    Body, Query,
};
use crate::selector::{FieldSelector, LabelSelector, PodFields};
use crate::sim::{render_pod, Inner, ReplaceOrder, WatchEvent};
use crate::template::PodTemplate;

pub const KUBERNETES_MINOR: &str = "33";

#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub fd: RawFd,
}

pub(crate) async fn handle(
    inner: Arc<Inner>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == inner.token);
    if !authorized {
        return Ok(status_error(401, "Unauthorized"));
    }
    if let Some(rest) = path.strip_prefix("/_sim/") {
        return Ok(sim_api(inner, rest.to_string(), req).await);
    }
    let latency = inner.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
    Ok(route(inner, conn, path, req).await)
}

async fn route(
    inner: Arc<Inner>,
    conn: ConnInfo,
    path: String,
    req: Request<Incoming>,
) -> Response<Body> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let query = Query::parse(req.uri().query());
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => json_response(StatusCode::OK, &version()),
        (Method::GET, ["api"]) => json_response(StatusCode::OK, &api_versions(&inner)),
        (Method::GET, ["api", "v1"]) => json_response(StatusCode::OK, &core_v1_resources()),
        (Method::GET, ["apis"]) => json_response(StatusCode::OK, &api_groups()),
        (Method::GET, ["apis", "authorization.k8s.io"]) => json_response(StatusCode::OK, &authorization_group()),
        (Method::GET, ["apis", "authorization.k8s.io", "v1"]) => {
            json_response(StatusCode::OK, &authorization_resources())
        }
        (Method::POST, ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
            self_subject_access_review(&inner, req).await
        }
        (Method::GET, ["api", "v1", "pods"]) => list_or_watch(inner, None, &query, &req).await,
        (Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            list_or_watch(inner, Some(ns.to_string()), &query, &req).await
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => get_pod(&inner, ns, name, &req, &query),
        (Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            delete_pod(inner, ns, name, query, req).await
        }
        (Method::GET | Method::POST, ["api", "v1", "namespaces", ns, "pods", name, "exec"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            crate::exec::exec(inner, conn, ns, name, query, req).await
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name, "log"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            logs(inner, ns, name, query).await
        }
        (Method::GET, ["api", "v1", "namespaces", ns]) => json_response(
            StatusCode::OK,
            &json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        ),
        (_, ["api", "v1", "namespaces", _, "pods", ..]) | (_, ["api", "v1", "pods"]) => status_error(
            405,
            &format!("kubesim does not support {method} on {path}: pods are created through /_sim/pods"),
        ),
        _ => status_error_with(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({method} {path})"),
            Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})),
        ),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-kubesim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(inner: &Inner) -> Value {
    let address = inner.url.trim_start_matches("https://").to_string();
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    })
}

fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
             "verbs": ["get"], "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["delete", "get", "list", "watch"], "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
        ],
    })
}

fn authorization_group_entry() -> Value {
    json!({
        "name": "authorization.k8s.io",
        "versions": [{"groupVersion": "authorization.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "authorization.k8s.io/v1", "version": "v1"},
    })
}

fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [authorization_group_entry()]})
}

fn authorization_group() -> Value {
    let mut group = authorization_group_entry();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

fn authorization_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "authorization.k8s.io/v1",
        "resources": [
            {"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview", "namespaced": false,
             "kind": "SelfSubjectAccessReview", "verbs": ["create"]},
        ],
    })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| status_error(400, &format!("reading the request body: {e}")))
}

async fn self_subject_access_review(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                400,
                &format!("the SelfSubjectAccessReview body is not valid JSON: {e}"),
            )
        }
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let verb = attributes["verb"].as_str().unwrap_or("").to_string();
    let mut resource = attributes["resource"].as_str().unwrap_or("").to_string();
    if let Some(sub) = attributes["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let denied = inner.faults.is_denied(&verb, &resource);
    review["status"] = if denied {
        json!({"allowed": false, "denied": true, "reason": format!("kubesim denies {verb} on {resource} (fault injected)")})
    } else {
        json!({"allowed": true, "reason": "kubesim allows everything not denied"})
    };
    review["kind"] = json!("SelfSubjectAccessReview");
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["metadata"] = json!({"creationTimestamp": null});
    json_response(StatusCode::CREATED, &review)
}

/// How the client asked for the objects: plain JSON or a server-side Table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Table { include_object: IncludeObject },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn response_format(req: &Request<Incoming>, query: &Query) -> Format {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants_table = accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"));
    if !wants_table {
        return Format::Json;
    }
    let include_object = match query.get("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    Format::Table { include_object }
}

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(namespace: Option<String>, query: &Query) -> Result<Filter, Response<Body>> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| status_error(400, &format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| status_error(400, &format!("field label not supported: {e}")))?;
        Ok(Filter {
            namespace,
            labels,
            fields,
        })
    }

    fn matches(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        phase: &str,
    ) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(labels)
            && self.fields.matches(&PodFields {
                name,
                namespace,
                phase,
            })
    }
}

fn human_duration(from: &str) -> String {
    let Ok(start) = DateTime::parse_from_rfc3339(from) else {
        return "<unknown>".into();
    };
    let secs = (Utc::now() - start.with_timezone(&Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn table_row(pod: &Value, include: IncludeObject) -> Value {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: u64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_u64())
        .sum();
    let status = if pod["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".to_string()
    } else if let Some(reason) = statuses
        .iter()
        .find_map(|s| s["state"]["waiting"]["reason"].as_str())
    {
        reason.to_string()
    } else {
        pod["status"]["phase"]
            .as_str()
            .unwrap_or("Unknown")
            .to_string()
    };
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"]})
        }
        IncludeObject::Object => pod.clone(),
    };
    json!({
        "cells": [
            pod["metadata"]["name"],
            format!("{ready}/{}", statuses.len()),
            status,
            restarts.to_string(),
            human_duration(pod["metadata"]["creationTimestamp"].as_str().unwrap_or("")),
            pod["status"]["podIP"],
            "kubesim",
            "<none>",
            "<none>",
        ],
        "object": object,
    })
}

fn table(
    pods: &[&Value],
    include: IncludeObject,
    resource_version: u64,
    with_headers: bool,
) -> Value {
    let column = |name: &str, kind: &str, format: &str, description: &str, priority: u32| json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority});
    let columns = if with_headers {
        json!([
            column("Name", "string", "name", "Name must be unique within a namespace.", 0),
            column("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            column("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            column("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            column("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            column("IP", "string", "", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            column("Node", "string", "", "NodeName is a request to schedule this pod onto a specific node.", 1),
            column("Nominated Node", "string", "", "nominatedNodeName is set only when this pod preempts other pods on the node.", 1),
            column("Readiness Gates", "string", "", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
        ])
    } else {
        json!([])
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": pods.iter().map(|p| table_row(p, include)).collect::<Vec<_>>(),
    })
}

fn namespace_of(namespace: &Option<String>) -> Option<&str> {
    namespace.as_deref()
}

async fn list_or_watch(
    inner: Arc<Inner>,
    namespace: Option<String>,
    query: &Query,
    req: &Request<Incoming>,
) -> Response<Body> {
    let watching = query.flag("watch");
    let verb = if watching { "watch" } else { "list" };
    if inner.faults.is_denied(verb, "pods") {
        return forbidden(verb, "pods", None, namespace_of(&namespace));
    }
    let format = response_format(req, query);
    let filter = match Filter::from_query(namespace, query) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if watching {
        return watch(inner, filter, format, query);
    }
    let state = inner.state.lock().unwrap();
    let rendered: Vec<Value> = state
        .pods
        .values()
        .filter(|p| filter.matches(&p.namespace, &p.name, &p.template.labels, p.phase()))
        .map(render_pod)
        .collect();
    let rv = state.resource_version;
    drop(state);
    match format {
        Format::Json => json_response(
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": rendered}),
        ),
        Format::Table { include_object } => {
            let refs: Vec<&Value> = rendered.iter().collect();
            json_response(StatusCode::OK, &table(&refs, include_object, rv, true))
        }
    }
}

fn get_pod(
    inner: &Inner,
    namespace: &str,
    name: &str,
    req: &Request<Incoming>,
    query: &Query,
) -> Response<Body> {
    if inner.faults.is_denied("get", "pods") {
        return forbidden("get", "pods", Some(name), Some(namespace));
    }
    let state = inner.state.lock().unwrap();
    let Some(pod) = state.pods.get(&(namespace.to_string(), name.to_string())) else {
        return pod_not_found(name);
    };
    let rendered = render_pod(pod);
    let rv = state.resource_version;
    drop(state);
    match response_format(req, query) {
        Format::Json => json_response(StatusCode::OK, &rendered),
        Format::Table { include_object } => json_response(
            StatusCode::OK,
            &table(&[&rendered], include_object, rv, true),
        ),
    }
}

async fn delete_pod(
    inner: Arc<Inner>,
    namespace: String,
    name: String,
    query: Query,
    req: Request<Incoming>,
) -> Response<Body> {
    if inner.faults.is_denied("delete", "pods") {
        return forbidden("delete", "pods", Some(&name), Some(&namespace));
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grace = options["gracePeriodSeconds"]
        .as_u64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    match inner.begin_delete(&namespace, &name, grace) {
        Ok(pod) => {
            let task_inner = inner.clone();
            let handle =
                tokio::spawn(async move { task_inner.finish_delete(&namespace, &name).await });
            inner.track_task(handle.abort_handle());
            json_response(StatusCode::OK, &pod)
        }
        Err(_) => pod_not_found(&name),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn expired(requested: u64, oldest: u64) -> Value {
    status_value(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

fn bookmark(resource_version: u64, initial_events_end: bool) -> Value {
    let mut metadata =
        json!({"resourceVersion": resource_version.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": {"containers": null}, "status": {}})
}

type FrameSender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn streaming_response(content_type: &str) -> (FrameSender, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let body = BodyExt::boxed(StreamBody::new(rx));
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid");
    (tx, response)
}

fn watch(inner: Arc<Inner>, filter: Filter, format: Format, query: &Query) -> Response<Body> {
    let requested: Option<u64> = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv != 0);
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30 * 60));
    let (mut tx, response) = streaming_response("application/json");

    // Snapshot and subscription under one lock, so no event falls between them.
    let (initial, mut events, start_rv, expired_at) = {
        let state = inner.state.lock().unwrap();
        let events = inner.events.subscribe();
        let rv = state.resource_version;
        match requested {
            Some(from) if !send_initial => {
                if from < state.oldest_resumable {
                    (Vec::new(), events, rv, Some((from, state.oldest_resumable)))
                } else {
                    let replay: Vec<Arc<WatchEvent>> = state
                        .history
                        .iter()
                        .filter(|e| e.resource_version > from)
                        .cloned()
                        .collect();
                    (replay, events, rv, None)
                }
            }
            _ => {
                let current: Vec<Arc<WatchEvent>> = state
                    .pods
                    .values()
                    .map(|p| {
                        Arc::new(WatchEvent {
                            resource_version: p.resource_version,
                            kind: "ADDED",
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                            labels: p.template.labels.clone(),
                            phase: p.phase(),
                            pod: render_pod(p),
                        })
                    })
                    .collect();
                (current, events, rv, None)
            }
        }
    };
    let mut epoch = inner.watch_epoch.subscribe();
    epoch.mark_unchanged();
    drop(inner);

    tokio::spawn(async move {
        let mut first_table = true;
        let mut render = move |event: &WatchEvent| -> Bytes {
            match format {
                Format::Json => event_line(event.kind, &event.pod),
                Format::Table { include_object } => {
                    let t = table(
                        &[&event.pod],
                        include_object,
                        event.resource_version,
                        first_table,
                    );
                    first_table = false;
                    event_line(event.kind, &t)
                }
            }
        };
        if let Some((from, oldest)) = expired_at {
            let _ = tx
                .send(Ok(Frame::data(event_line("ERROR", &expired(from, oldest)))))
                .await;
            return;
        }
        let mut last_rv = start_rv;
        for event in &initial {
            if filter.matches(&event.namespace, &event.name, &event.labels, event.phase)
                && tx.send(Ok(Frame::data(render(event)))).await.is_err()
            {
                return;
            }
        }
        if send_initial
            && bookmarks
            && tx
                .send(Ok(Frame::data(event_line(
                    "BOOKMARK",
                    &bookmark(start_rv, true),
                ))))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = epoch.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(Ok(Frame::data(event_line("BOOKMARK", &bookmark(last_rv, false))))).await.is_err() {
                        return;
                    }
                }
                received = events.recv() => match received {
                    Ok(event) => {
                        last_rv = last_rv.max(event.resource_version);
                        // Subscribed under the state lock: nothing here was replayed already.
                        if filter.matches(&event.namespace, &event.name, &event.labels, event.phase)
                            && tx.send(Ok(Frame::data(render(&event)))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(Frame::data(event_line("ERROR", &expired(last_rv, last_rv))))).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tx_closed(&mut tx) => return,
            }
        }
    });
    response
}

/// Resolves when the client has gone (hyper dropped the body's receiving end).
async fn tx_closed(tx: &mut FrameSender) {
    futures::future::poll_fn(|cx| match tx.poll_ready(cx) {
        std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    })
    .await
}

fn pick_container(
    inner: &Inner,
    namespace: &str,
    name: &str,
    requested: Option<&str>,
) -> Result<(String, u32, Option<u32>), Response<Body>> {
    let state = inner.state.lock().unwrap();
    let Some(pod) = state.pods.get(&(namespace.to_string(), name.to_string())) else {
        return Err(pod_not_found(name));
    };
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match requested.filter(|c| !c.is_empty()) {
        Some(c) => pod.container(c).ok_or_else(|| {
            status_error(400, &format!("container {c} is not valid for pod {name}"))
        })?,
        None if pod.containers.len() == 1 => &pod.containers[0],
        None => {
            return Err(status_error(
                400,
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                ),
            ))
        }
    };
    Ok((
        container.log_dir.to_string_lossy().to_string(),
        container.run,
        container.host_pid,
    ))
}

async fn logs(inner: Arc<Inner>, namespace: String, name: String, query: Query) -> Response<Body> {
    if inner.faults.is_denied("get", "pods/log") {
        return forbidden("get", "pods/log", Some(&name), Some(&namespace));
    }
    let (log_dir, run, _) = match pick_container(&inner, &namespace, &name, query.get("container"))
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let log_dir = std::path::PathBuf::from(log_dir);
    let run = if query.flag("previous") {
        if run == 0 {
            return status_error(
                400,
                &format!("previous terminated container in pod \"{name}\" not found"),
            );
        }
        run - 1
    } else {
        run
    };
    let path = crate::runtime::log_path(&log_dir, "main", run);
    let content = tokio::fs::read(&path).await.unwrap_or_default();
    let tail = query.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let start = match tail {
        Some(n) => {
            let mut newlines = 0;
            let mut start = 0;
            let trimmed = content.strip_suffix(b"\n").unwrap_or(&content);
            for (i, b) in trimmed.iter().enumerate().rev() {
                if *b == b'\n' {
                    newlines += 1;
                    if newlines == n {
                        start = i + 1;
                        break;
                    }
                }
            }
            if n == 0 {
                content.len()
            } else {
                start
            }
        }
        None => 0,
    };
    if !query.flag("follow") {
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(Bytes::copy_from_slice(&content[start..])))
            .expect("static response parts are valid");
    }
    let (mut tx, response) = streaming_response("text/plain");
    let key = (namespace, name);
    tokio::spawn(async move {
        if tx
            .send(Ok(Frame::data(Bytes::copy_from_slice(&content[start..]))))
            .await
            .is_err()
        {
            return;
        }
        let mut offset = content.len() as u64;
        loop {
            let current_run_ended = {
                let state = inner.state.lock().unwrap();
                state.pods.get(&key).is_none_or(|p| {
                    p.containers
                        .iter()
                        .find(|c| c.log_dir == log_dir)
                        .is_none_or(|c| {
                            c.run != run || p.deletion.is_some() && c.host_pid.is_none()
                        })
                })
            };
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            if (data.len() as u64) > offset {
                let chunk = Bytes::copy_from_slice(&data[offset as usize..]);
                offset = data.len() as u64;
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            } else if current_run_ended {
                return;
            }
            // The log is a plain file the container appends to; poll it as `tail -f` does.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx_closed(&mut tx) => return,
            }
        }
    });
    response
}

fn sim_ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value)
}

async fn sim_api(inner: Arc<Inner>, rest: String, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let query = Query::parse(req.uri().query());
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body_json = || -> Result<Value, Response<Body>> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&body)
            .map_err(|e| status_error(400, &format!("request body is not valid JSON: {e}")))
    };
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let result: Result<Response<Body>, Response<Body>> = async {
        match (method, segments.as_slice()) {
            (Method::GET, ["healthz"]) => Ok(sim_ok(json!({"ok": true}))),
            (Method::POST, ["pods"]) => {
                let template: PodTemplate = serde_json::from_slice(&body).map_err(|e| {
                    status_error(
                        400,
                        &format!("pod template does not match the documented shape: {e}"),
                    )
                })?;
                let pod = inner
                    .create_pod(template)
                    .await
                    .map_err(|e| status_error(422, &format!("{e:#}")))?;
                Ok(json_response(StatusCode::CREATED, &json!(pod)))
            }
            (Method::DELETE, ["pods", ns, name]) => {
                let grace = query.get("gracePeriodSeconds").and_then(|g| g.parse().ok());
                inner
                    .delete_pod(ns, name, grace)
                    .await
                    .map_err(|e| status_error(404, &format!("{e:#}")))?;
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["pods", ns, name, "replace"]) => {
                let v = body_json()?;
                let order: ReplaceOrder =
                    serde_json::from_value(v.get("order").cloned().unwrap_or(json!("new-first")))
                        .map_err(|e| {
                        status_error(
                            400,
                            &format!("order must be \"new-first\" or \"old-first\": {e}"),
                        )
                    })?;
                let pod = inner
                    .replace_pod(ns, name, order)
                    .await
                    .map_err(|e| status_error(422, &format!("{e:#}")))?;
                Ok(sim_ok(json!(pod)))
            }
            (Method::POST, ["pods", ns, name, "ready"]) => {
                let ready = body_json()?
                    .get("ready")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| status_error(400, "body must be {\"ready\": true|false}"))?;
                inner
                    .set_ready(ns, name, ready)
                    .map_err(|e| status_error(404, &format!("{e:#}")))?;
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["pods", ns, name, "containers", c, "restart"]) => {
                inner
                    .restart_container(ns, name, c)
                    .await
                    .map_err(|e| status_error(422, &format!("{e:#}")))?;
                Ok(sim_ok(json!({})))
            }
            (Method::GET, ["pods", ns, name, "containers", c, "root"]) => {
                let root = inner
                    .container_root(ns, name, c)
                    .map_err(|e| status_error(404, &format!("{e:#}")))?;
                Ok(sim_ok(json!({"root": root})))
            }
            (Method::GET, ["pods", ns, name, "containers", c, "file"]) => {
                let path = query
                    .get("path")
                    .ok_or_else(|| status_error(400, "query parameter `path` is required"))?;
                let bytes = inner
                    .read_file(ns, name, c, path)
                    .map_err(|e| status_error(404, &e.to_string()))?;
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(full(bytes))
                    .expect("static response parts are valid"))
            }
            (Method::GET, ["exec-log"]) => {
                Ok(sim_ok(json!(inner.exec_log.lock().unwrap().clone())))
            }
            (Method::POST, ["close-watches"]) => {
                inner.close_watches();
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["compact"]) => {
                inner.compact_history();
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["faults", "fail-exec-handshakes"]) => {
                let v = body_json()?;
                let count = v["count"].as_u64().ok_or_else(|| {
                    status_error(400, "body needs {\"count\": N, \"status\": CODE}")
                })?;
                let status = v["status"].as_u64().unwrap_or(500);
                inner
                    .faults
                    .fail_next_exec_handshakes(count as u32, status as u16);
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["faults", "cut-exec"]) => {
                let v = body_json()?;
                let bytes = v["stdinBytes"].as_u64().ok_or_else(|| {
                    status_error(
                        400,
                        "body needs {\"stdinBytes\": N, \"mode\": \"tcp-drop\"|\"clean-close\"}",
                    )
                })?;
                let mode = serde_json::from_value(v["mode"].clone()).map_err(|e| {
                    status_error(
                        400,
                        &format!("mode must be \"tcp-drop\" or \"clean-close\": {e}"),
                    )
                })?;
                inner.faults.cut_next_exec_after(bytes, mode);
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["faults", "latency"]) => {
                let millis = body_json()?["millis"]
                    .as_u64()
                    .ok_or_else(|| status_error(400, "body needs {\"millis\": N}"))?;
                inner.faults.set_latency(Duration::from_millis(millis));
                Ok(sim_ok(json!({})))
            }
            (Method::POST, ["faults", "deny"]) => {
                let v = body_json()?;
                let (Some(verb), Some(resource)) = (v["verb"].as_str(), v["resource"].as_str())
                else {
                    return Err(status_error(
                        400,
                        "body needs {\"verb\": \"create\", \"resource\": \"pods/exec\"}",
                    ));
                };
                inner.faults.deny(verb, resource);
                Ok(sim_ok(json!({})))
            }
            (Method::DELETE, ["faults"]) => {
                inner.faults.clear();
                Ok(sim_ok(json!({})))
            }
            (m, _) => Err(status_error(
                404,
                &format!("no /_sim/ endpoint for {m} /_sim/{rest}; see docs/kubesim.md"),
            )),
        }
    }
    .await;
    result.unwrap_or_else(|r| r)
}
