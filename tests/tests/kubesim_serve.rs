//! The `kubesim serve` binary: kubeconfig published once the --pods run, SIGTERM stops them all.
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podloop_e2e::{eventually, kube_client, require_busybox};

const DEADLINE: Duration = Duration::from_secs(60);

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut pending = vec![pid];
    while let Some(p) = pending.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten();
        for task in tasks {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                all.push(child);
                pending.push(child);
            }
        }
    }
    all
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_publishes_kubeconfig_and_stops_every_pod_on_sigterm() {
    if !require_busybox() {
        return;
    }
    let binary = podloop_e2e::workspace_binary("kubesim");
    let dir = tempfile::tempdir().unwrap();
    let pods_file = dir.path().join("pods.json");
    std::fs::write(
        &pods_file,
        r#"[{"name":"web","labels":{"app":"web"},"containers":[{"name":"app","image":"busybox","command":"echo hello; exec sleep 100000"}]},
            {"generateName":"deb-","containers":[{"name":"app","image":"host"}]}]"#,
    )
    .unwrap();
    let state = dir.path().join("sim");
    let mut child = tokio::process::Command::new(&binary)
        .args(["serve", "--dir"])
        .arg(&state)
        .arg("--pods")
        .arg(&pods_file)
        .env("KUBESIM_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let kubeconfig = state.join("kubeconfig");
    eventually("the kubeconfig", DEADLINE, || async {
        kubeconfig.exists().then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(kube_client(&kubeconfig).await);
    // Published only once the --pods run: the first list already sees them Running.
    let list = pods.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    for pod in &list.items {
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );
    }
    let logs = eventually("web's log", DEADLINE, || {
        let pods = pods.clone();
        async move {
            pods.logs("web", &Default::default())
                .await
                .ok()
                .filter(|l| !l.is_empty())
        }
    })
    .await;
    assert_eq!(logs, "hello\n");

    let pid = child.id().unwrap();
    let pod_processes = descendants(pid);
    assert!(
        pod_processes.len() >= 4,
        "unshare + PID 1 per pod: {pod_processes:?}"
    );
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("kubesim exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let survivors: Vec<u32> = pod_processes.into_iter().filter(|p| alive(*p)).collect();
    assert!(
        survivors.is_empty(),
        "pod processes outlived kubesim: {survivors:?}"
    );
}
