//! Conformance: the real kubectl (1.33 and 1.30) against kubesim.
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate, ReplaceOrder};
#[allow(unused_imports)]
use kubesim::Sim as _;
use podloop_e2e::{kubectl_command, pseudo_random_bytes, require_busybox, require_kubectl, run_with_deadline, TestSim};

const DEADLINE: Duration = Duration::from_secs(60);
const VERSIONS: [&str; 2] = ["1.33", "1.30"];

async fn kubectl(bin: &Path, sim: &TestSim, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut cmd = kubectl_command(bin, &sim.kubeconfig_path());
    cmd.args(args);
    run_with_deadline(&mut cmd, stdin, DEADLINE).await
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {:?}\nstdout: {}\nstderr: {}", o.status, stdout(o), String::from_utf8_lossy(&o.stderr));
}

/// The kubectl binaries present (or a CI failure when one is missing).
fn kubectls() -> Vec<(&'static str, PathBuf)> {
    VERSIONS.iter().filter_map(|v| require_kubectl(v).map(|p| (*v, p))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_pods_with_label_selectors() {
    if !require_busybox() {
        return;
    }
    let sim = TestSim::start().await;
    sim.create_pod(PodTemplate::new("web-1").label("app", "web").container("app", Image::Busybox)).await.unwrap();
    sim.create_pod(PodTemplate::new("db-1").label("app", "db").container("db", Image::Busybox)).await.unwrap();
    for (version, bin) in kubectls() {
        let out = kubectl(&bin, &sim, &["get", "pods", "-l", "app=web"], None).await;
        assert_ok(&out, "get pods -l");
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "kubectl {version}: header and one row: {text}");
        assert!(lines[0].starts_with("NAME") && lines[0].contains("READY") && lines[0].contains("STATUS"), "{text}");
        assert!(lines[1].starts_with("web-1") && lines[1].contains("1/1") && lines[1].contains("Running"), "{text}");

        let names = kubectl(&bin, &sim, &["get", "pods", "-l", "app in (web,db)", "-o", "name"], None).await;
        assert_ok(&names, "get -o name");
        assert_eq!(stdout(&names), "pod/db-1\npod/web-1\n", "kubectl {version}");

        let json = kubectl(&bin, &sim, &["get", "pod", "db-1", "-o", "jsonpath={.status.phase} {.metadata.labels.app}"], None).await;
        assert_ok(&json, "get -o jsonpath");
        assert_eq!(stdout(&json), "Running db", "kubectl {version}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_pipes_one_mebibyte_and_propagates_exit_codes() {
    if !require_busybox() {
        return;
    }
    let sim = TestSim::start().await;
    sim.create_pod(
        PodTemplate::new("multi")
            .annotation("kubectl.kubernetes.io/default-container", "main")
            .container("main", Image::Busybox)
            .container("side", Image::Host),
    )
    .await
    .unwrap();
    let payload = pseudo_random_bytes(1 << 20, 42);
    for (version, bin) in kubectls() {
        let out = kubectl(&bin, &sim, &["exec", "-i", "multi", "--", "sh", "-c", "cat > /tmp/in && cat /tmp/in"], Some(&payload)).await;
        assert_ok(&out, "exec -i");
        assert!(out.stdout == payload, "kubectl {version}: 1 MiB round trip differs ({} bytes back)", out.stdout.len());
        assert_eq!(sim.read_file("default", "multi", "main", "/tmp/in").unwrap(), payload);

        let failed = kubectl(&bin, &sim, &["exec", "multi", "--", "sh", "-c", "exit 7"], None).await;
        assert_eq!(failed.status.code(), Some(7), "kubectl {version}: {}", String::from_utf8_lossy(&failed.stderr));

        let side = kubectl(&bin, &sim, &["exec", "multi", "-c", "side", "--", "tar", "--version"], None).await;
        assert_ok(&side, "exec -c side");
        assert!(stdout(&side).contains("GNU tar"), "kubectl {version}: -c picks the host-image container");

        let main = kubectl(&bin, &sim, &["exec", "multi", "--", "sh", "-c", "tar --help 2>&1 | head -1"], None).await;
        assert_ok(&main, "exec default container");
        assert!(stdout(&main).contains("BusyBox"), "kubectl {version}: default container is busybox: {}", stdout(&main));

        let unknown = kubectl(&bin, &sim, &["exec", "multi", "-c", "nope", "--", "true"], None).await;
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"), "{}", String::from_utf8_lossy(&unknown.stderr));
    }
    let protocols: Vec<String> = sim.exec_log().into_iter().map(|r| r.protocol).collect();
    assert!(protocols.iter().all(|p| p == "v5.channel.k8s.io"), "{protocols:?}");
    sim.shutdown().await;
}
