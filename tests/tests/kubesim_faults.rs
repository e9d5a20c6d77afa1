//! kubesim's faults, image variants, watch edge cases and `/_sim/` control, through `kube`.
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, PostParams, WatchEvent, WatchParams};
use kubesim::{CutMode, Image, PodTemplate};
use podloop_e2e::{eventually, pseudo_random_bytes, require_busybox, TestSim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);

async fn run(
    pods: &Api<Pod>,
    pod: &str,
    script: &str,
) -> (
    String,
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
) {
    let params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut attached = pods
        .exec(pod, vec!["sh", "-c", script], &params)
        .await
        .expect("exec handshake");
    let mut stdout = attached.stdout().unwrap();
    let mut stderr = attached.stderr().unwrap();
    let status = attached.take_status().unwrap();
    let work = async {
        let mut out = String::new();
        let mut err = String::new();
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        (out + &err, status.await)
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .expect("exec finished in time")
}

fn exit_code(status: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i32 {
    let s = status.as_ref().expect("a status");
    if s.status.as_deref() == Some("Success") {
        return 0;
    }
    s.details
        .as_ref()
        .and_then(|d| d.causes.as_ref()?.first())
        .and_then(|c| c.message.as_deref()?.parse().ok())
        .expect("exit code cause")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_latency_and_denials() {
    let Some(sim) =
        TestSim::with_busybox_pods([PodTemplate::new("p").container("app", Image::Busybox)]).await
    else {
        return;
    };
    let client = sim.kube_client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // 500, not 503: kube retries 503 on its own.
    sim.faults().fail_next_exec_handshakes(2, 500);
    for _ in 0..2 {
        let err = pods
            .exec("p", vec!["true"], &AttachParams::default())
            .await
            .err()
            .expect("handshake fails");
        assert!(format!("{err:?}").contains("500"), "{err:?}");
    }
    let (_, status) = run(&pods, "p", "true").await;
    assert_eq!(exit_code(&status), 0, "the third handshake succeeds");

    sim.faults().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    pods.get("p").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    sim.faults().clear();

    sim.faults().deny("create", "pods/exec");
    let denied = pods
        .exec("p", vec!["true"], &AttachParams::default())
        .await
        .err()
        .expect("exec is denied");
    assert!(
        format!("{denied:?}").contains("403") || format!("{denied:?}").contains("forbidden"),
        "{denied:?}"
    );
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let ask = |subresource: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("default".into()),
                verb: Some("create".into()),
                resource: Some("pods".into()),
                subresource: Some(subresource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &ask("exec"))
        .await
        .unwrap();
    assert!(!answer.status.unwrap().allowed, "pods/exec is denied");
    let answer = reviews
        .create(&PostParams::default(), &ask("log"))
        .await
        .unwrap();
    assert!(answer.status.unwrap().allowed, "pods/log is allowed");
    sim.faults().deny("list", "pods");
    let err = pods.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
    sim.shutdown().await;
}

async fn cut_exec(mode: CutMode) {
    let sim = TestSim::start().await;
    sim.create_pod(PodTemplate::new("p").container("app", Image::Busybox))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    sim.faults().cut_next_exec_after(100_000, mode);
    let params = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut attached = pods
        .exec("p", vec!["sh", "-c", "cat > /tmp/partial"], &params)
        .await
        .unwrap();
    let mut stdin = attached.stdin().unwrap();
    let status = attached.take_status().unwrap();
    let payload = pseudo_random_bytes(1 << 20, 5);
    let writing = async {
        // The connection goes away mid-stream; the writer sees an error or a closed pipe.
        let _ = stdin.write_all(&payload).await;
        let _ = stdin.shutdown().await;
    };
    // kube 5: once the connection is gone, stdin writes block forever (the pipe's reader
    // half is dropped but never closes it), so the status future is what ends the wait.
    let status = tokio::time::timeout(DEADLINE, async {
        tokio::pin!(status);
        tokio::select! {
            status = &mut status => status,
            _ = writing => status.await,
        }
    })
    .await
    .expect("the cut ends the exec");
    assert!(
        status.is_none(),
        "{mode:?}: no exec status after a cut: {status:?}"
    );
    let record = eventually("the cut exec to end", DEADLINE, || async {
        sim.exec_log()
            .into_iter()
            .next()
            .filter(|r| r.exit_code.is_some())
    })
    .await;
    assert_eq!(record.stdin_bytes, 100_000, "{mode:?}");
    // As a kubelet does, the process saw EOF after the bytes that arrived.
    assert_eq!(
        sim.read_file("default", "p", "app", "/tmp/partial")
            .unwrap(),
        payload[..100_000]
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_exec_by_tcp_drop() {
    if require_busybox() {
        cut_exec(CutMode::TcpDrop).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_exec_by_clean_close() {
    if require_busybox() {
        cut_exec(CutMode::CleanClose).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_variants_behave_like_their_real_counterparts() {
    let Some(sim) = TestSim::with_busybox_pods([PodTemplate::new("v")
        .container("notar", Image::BusyboxNotar)
        .container("ro", Image::BusyboxReadOnly)
        .file("/etc/app.conf", "x=1\n")
        .container("nonroot", Image::BusyboxNonroot)])
    .await
    else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let exec_in = |container: &'static str, script: &'static str| {
        let pods = pods.clone();
        async move {
            let params = AttachParams::default()
                .container(container)
                .stdin(false)
                .stdout(true)
                .stderr(true);
            let mut attached = pods
                .exec("v", vec!["sh", "-c", script], &params)
                .await
                .unwrap();
            let mut out = attached.stdout().unwrap();
            let status = attached.take_status().unwrap();
            let mut text = String::new();
            out.read_to_string(&mut text).await.unwrap();
            (text, exit_code(&status.await))
        }
    };
    // busybox sh's `command -v` names applets even without their link; running them fails.
    let (_, code) = exec_in("notar", "tar --help 2>/dev/null").await;
    assert_eq!(code, 127, "busybox-notar has no tar");
    let (_, code) = exec_in("notar", "which tar").await;
    assert_ne!(code, 0, "busybox-notar has no tar on PATH");
    let (out, code) = exec_in(
        "ro",
        "cat /etc/app.conf; touch /etc/new 2>/dev/null && echo wrote; touch /tmp/ok && echo tmp",
    )
    .await;
    assert_eq!(
        (out.as_str(), code),
        ("x=1\ntmp\n", 0),
        "read-only root, writable /tmp"
    );
    let (out, _) = exec_in("nonroot", "id -u; stat -c %u /bin/busybox").await;
    assert_eq!(out, "1000\n1000\n");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_main_process_that_exits_is_restarted() {
    let Some(sim) = TestSim::with_busybox_pods([PodTemplate::new("crash")
        .container("app", Image::Busybox)
        .command("echo run; exit 3")
        .ready(false)])
    .await
    else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let status = eventually("two restarts", DEADLINE, || async {
        let pod = pods.get("crash").await.ok()?;
        let s = pod.status?.container_statuses?.into_iter().next()?;
        (s.restart_count >= 2).then_some(s)
    })
    .await;
    let last = status
        .last_state
        .and_then(|l| l.terminated)
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    let previous = kube::api::LogParams {
        previous: true,
        ..Default::default()
    };
    let logs = pods.logs("crash", &previous).await.unwrap();
    assert!(logs.starts_with("run"), "{logs:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expired_bookmarks_and_closed_watches() {
    let Some(sim) =
        TestSim::with_busybox_pods([PodTemplate::new("w").container("app", Image::Busybox)]).await
    else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let rv = pods
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let mut stream = pods
        .watch(
            &WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    sim.set_ready("default", "w", false).unwrap();
    let mut saw_modified = false;
    let mut saw_bookmark = false;
    while !(saw_modified && saw_bookmark) {
        match tokio::time::timeout(DEADLINE, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(p) => saw_modified |= p.metadata.name.as_deref() == Some("w"),
            WatchEvent::Bookmark(_) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    sim.close_watches();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = stream.try_next().await.unwrap() {
            assert!(matches!(event, WatchEvent::Bookmark(_)), "{event:?}");
        }
    })
    .await;
    assert!(ended.is_ok(), "close_watches ends the stream");

    sim.compact_history();
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_http_control_and_auth() {
    let Some(sim) = TestSim::with_busybox_pods([]).await else {
        return;
    };
    let client = sim.kube_client().await;
    let post = |path: &str, body: &str| {
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let created: serde_json::Value = client
        .request(post("/_sim/pods", r#"{"generateName":"gen-","labels":{"app":"x"},"containers":[{"name":"c","image":"busybox","files":{"/data/f.txt":"content"}}]}"#))
        .await
        .unwrap();
    let name = created["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let file = client
        .request_text(
            http::Request::get(format!(
                "/_sim/pods/default/{name}/containers/c/file?path=/data/f.txt"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(file, "content");
    client
        .request_text(post(
            &format!("/_sim/pods/default/{name}/ready"),
            r#"{"ready":false}"#,
        ))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let ready = pods
        .get(&name)
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    let replaced: serde_json::Value = client
        .request(post(
            &format!("/_sim/pods/default/{name}/replace"),
            r#"{"order":"old-first"}"#,
        ))
        .await
        .unwrap();
    let new_name = replaced["name"].as_str().unwrap();
    assert_eq!(sim.pod_names("default"), vec![new_name.to_string()]);
    let bad = client
        .request_text(post(
            "/_sim/pods",
            r#"{"name":"x","containers":[{"name":"c","image":"ubuntu"}]}"#,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(bad, kube::Error::Api(ref s) if s.code == 400),
        "{bad:?}"
    );

    // Without the token: 401 and a metav1.Status body.
    let url = format!("{}/api/v1/pods", sim.url());
    let output = tokio::process::Command::new("curl")
        .args(["-sk", &url])
        .output()
        .await;
    if let Ok(output) = output {
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["code"], 401);
        assert_eq!(body["reason"], "Unauthorized");
    }
    sim.shutdown().await;
}
