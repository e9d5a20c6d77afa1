//! kubesim through the `kube` crate: what podloop's transport does against a real cluster.
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use kube::runtime::watcher;
use podloop_e2e::{busybox_app_pod, pseudo_random_bytes, TestSim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kubesim::{Image, PodTemplate, ReplaceOrder};

const DEADLINE: Duration = Duration::from_secs(30);

struct ExecResult {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
}

async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
    stdin: &[u8],
) -> ExecResult {
    let mut params = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        params = params.container(c);
    }
    let mut attached = pods
        .exec(pod, command.to_vec(), &params)
        .await
        .expect("exec handshake");
    let mut writer = attached.stdin().expect("stdin requested");
    let mut stdout = attached.stdout().expect("stdout requested");
    let mut stderr = attached.stderr().expect("stderr requested");
    let status = attached.take_status().expect("status channel");
    let input = stdin.to_vec();
    let feed = async move {
        writer.write_all(&input).await.expect("writing stdin");
        // kube 5: dropping the writer does not signal EOF; shutdown does (v5 close frame).
        writer.shutdown().await.expect("closing stdin");
    };
    let read_out = async {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.expect("reading stdout");
        out
    };
    let read_err = async {
        let mut err = Vec::new();
        stderr.read_to_end(&mut err).await.expect("reading stderr");
        err
    };
    let run = async { tokio::join!(feed, read_out, read_err, status) };
    let (_, stdout, stderr, status) = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("exec finished in time");
    attached
        .join()
        .await
        .expect("exec connection closed cleanly");
    ExecResult {
        stdout,
        stderr,
        status: status.expect("a status arrived on channel 3"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_to_eof_and_reports_exit_codes() {
    let Some(sim) = TestSim::with_busybox_pods([busybox_app_pod("web", "web")]).await else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);

    let payload = pseudo_random_bytes(1 << 20, 7);
    let ok = exec(
        &pods,
        "web",
        None,
        &[
            "sh",
            "-c",
            "cat > /tmp/upload && wc -c < /tmp/upload && echo warn >&2",
        ],
        &payload,
    )
    .await;
    assert_eq!(
        ok.status.status.as_deref(),
        Some("Success"),
        "{:?}",
        ok.status
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        (1 << 20).to_string()
    );
    assert_eq!(ok.stderr, b"warn\n");
    assert_eq!(
        sim.read_file("default", "web", "app", "/tmp/upload")
            .unwrap(),
        payload
    );

    let failed = exec(&pods, "web", None, &["sh", "-c", "exit 3"], b"").await;
    assert_eq!(failed.status.status.as_deref(), Some("Failure"));
    assert_eq!(failed.status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = failed
        .status
        .details
        .and_then(|d| d.causes)
        .unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("3"));

    // PID 1 and absolute paths are the container's, not the host's.
    let ps = exec(
        &pods,
        "web",
        None,
        &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /"],
        b"",
    )
    .await;
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(
        text.starts_with("/bin/sh -c "),
        "PID 1 is the container's main process: {text}"
    );
    assert!(
        !text.contains("work"),
        "the host's / is not visible: {text}"
    );

    let log = sim.exec_log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].protocol, "v5.channel.k8s.io");
    assert_eq!(log[0].stdin_bytes, 1 << 20);
    assert_eq!(log[0].exit_code, Some(0));
    assert_eq!(log[1].exit_code, Some(3));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_image_has_gnu_tar_and_works_without_busybox() {
    let sim = TestSim::start().await;
    sim.create_pod(PodTemplate::new("deb").container("app", Image::Host))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let version = exec(&pods, "deb", None, &["tar", "--version"], b"").await;
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("GNU tar"),
        "{:?}",
        String::from_utf8_lossy(&version.stdout)
    );
    // A tar stream extracted inside the container lands in its root.
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let body = b"hello from the host image\n";
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, "srv/app/$(reboot)\nname.txt", &body[..])
        .unwrap();
    let bytes = archive.into_inner().unwrap();
    let untar = exec(
        &pods,
        "deb",
        None,
        &["tar", "-x", "-f", "-", "-C", "/"],
        &bytes,
    )
    .await;
    assert_eq!(
        untar.status.status.as_deref(),
        Some("Success"),
        "{:?} {}",
        untar.status,
        String::from_utf8_lossy(&untar.stderr)
    );
    assert_eq!(
        sim.read_file("default", "deb", "app", "/srv/app/$(reboot)\nname.txt")
            .unwrap(),
        body
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_and_label_selectors() {
    let Some(sim) = TestSim::with_busybox_pods([
        PodTemplate::new("web-1")
            .label("app", "web")
            .label("tier", "front")
            .container("app", Image::Busybox),
        PodTemplate::new("db-1")
            .label("app", "db")
            .container("db", Image::Busybox)
            .ready(false),
    ])
    .await
    else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let names = |list: kube::core::ObjectList<Pod>| {
        let mut n: Vec<String> = list
            .items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect();
        n.sort();
        n
    };
    for (selector, expected) in [
        ("app=web", vec!["web-1"]),
        ("app in (web,db)", vec!["db-1", "web-1"]),
        ("app notin (web)", vec!["db-1"]),
        ("!tier", vec!["db-1"]),
        ("tier", vec!["web-1"]),
        ("app!=web", vec!["db-1"]),
    ] {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(names(list), expected, "selector {selector}");
    }
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=db-1"))
        .await
        .unwrap();
    assert_eq!(names(by_name), vec!["db-1"]);

    let web = pods.get("web-1").await.unwrap();
    let status = web.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ready = |s: &k8s_openapi::api::core::v1::PodStatus| {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(ready(&status), "True");
    assert_eq!(
        ready(&pods.get("db-1").await.unwrap().status.unwrap()),
        "False"
    );
    let missing = pods.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_a_replacement() {
    let Some(sim) = TestSim::with_busybox_pods([busybox_app_pod("api", "api")]).await else {
        return;
    };
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let mut events = watcher(pods, watcher::Config::default().labels("app=api")).boxed();
    // Wait for the initial listing to finish before changing anything.
    loop {
        let event = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(event, watcher::Event::InitDone) {
            break;
        }
    }
    let new = sim
        .replace_pod("default", "api", ReplaceOrder::NewFirst)
        .await
        .unwrap();
    assert_ne!(new.name, "api");
    assert!(new.name.starts_with("api-"), "{}", new.name);
    let mut saw_new_ready = false;
    let mut saw_old_deleted = false;
    while !(saw_new_ready && saw_old_deleted) {
        let event = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .expect("watch event in time")
            .expect("watch ok")
            .expect("stream continues");
        match event {
            watcher::Event::Apply(pod) => {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if pod.metadata.name.as_deref() == Some(new.name.as_str()) && ready {
                    saw_new_ready = true;
                }
            }
            watcher::Event::Delete(pod) => {
                saw_old_deleted |= pod.metadata.name.as_deref() == Some("api")
            }
            _ => {}
        }
    }
    assert_eq!(sim.pod_names("default"), vec![new.name.clone()]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_count_and_processes_die_with_the_sim() {
    let Some(sim) =
        TestSim::with_busybox_pods([PodTemplate::new("r").container("app", Image::Busybox)]).await
    else {
        return;
    };
    let before = sim.host_pids();
    assert!(!before.is_empty());
    sim.restart_container("default", "r", "app").await.unwrap();
    assert_eq!(sim.restart_count("default", "r", "app"), Some(1));
    let pods: Api<Pod> = Api::default_namespaced(sim.kube_client().await);
    let pod = pods.get("r").await.unwrap();
    assert_eq!(
        pod.status.unwrap().container_statuses.unwrap()[0].restart_count,
        1
    );
    let pids = sim.host_pids();
    sim.shutdown().await;
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        assert!(!alive, "pid {pid} outlived the sim");
    }
}
