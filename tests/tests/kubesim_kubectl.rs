//! Conformance: the real kubectl (1.33 and 1.30) against kubesim.
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate, ReplaceOrder};
use podloop_e2e::{
    busybox_app_pod, kubectl_command, pseudo_random_bytes, require_kubectl, run_with_deadline,
    TestSim,
};
use tokio::io::AsyncBufReadExt;

const DEADLINE: Duration = Duration::from_secs(60);
const VERSIONS: [&str; 2] = ["1.33", "1.30"];

async fn kubectl(
    bin: &Path,
    sim: &TestSim,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    let mut cmd = kubectl_command(bin, &sim.kubeconfig_path());
    cmd.args(args);
    run_with_deadline(&mut cmd, stdin, DEADLINE).await
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The kubectl binaries present (or a CI failure when one is missing).
fn kubectls() -> Vec<(&'static str, PathBuf)> {
    VERSIONS
        .iter()
        .filter_map(|v| require_kubectl(v).map(|p| (*v, p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_pods_with_label_selectors() {
    let Some(sim) = TestSim::with_busybox_pods([
        busybox_app_pod("web-1", "web"),
        PodTemplate::new("db-1")
            .label("app", "db")
            .container("db", Image::Busybox),
    ])
    .await
    else {
        return;
    };
    for (version, bin) in kubectls() {
        let out = kubectl(&bin, &sim, &["get", "pods", "-l", "app=web"], None).await;
        assert_ok(&out, "get pods -l");
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "kubectl {version}: header and one row: {text}"
        );
        assert!(
            lines[0].starts_with("NAME")
                && lines[0].contains("READY")
                && lines[0].contains("STATUS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("web-1")
                && lines[1].contains("1/1")
                && lines[1].contains("Running"),
            "{text}"
        );

        let names = kubectl(
            &bin,
            &sim,
            &["get", "pods", "-l", "app in (web,db)", "-o", "name"],
            None,
        )
        .await;
        assert_ok(&names, "get -o name");
        assert_eq!(stdout(&names), "pod/db-1\npod/web-1\n", "kubectl {version}");

        let json = kubectl(
            &bin,
            &sim,
            &[
                "get",
                "pod",
                "db-1",
                "-o",
                "jsonpath={.status.phase} {.metadata.labels.app}",
            ],
            None,
        )
        .await;
        assert_ok(&json, "get -o jsonpath");
        assert_eq!(stdout(&json), "Running db", "kubectl {version}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_pipes_one_mebibyte_and_propagates_exit_codes() {
    let Some(sim) = TestSim::with_busybox_pods([PodTemplate::new("multi")
        .annotation("kubectl.kubernetes.io/default-container", "main")
        .container("main", Image::Busybox)
        .container("side", Image::Host)])
    .await
    else {
        return;
    };
    let payload = pseudo_random_bytes(1 << 20, 42);
    for (version, bin) in kubectls() {
        let out = kubectl(
            &bin,
            &sim,
            &[
                "exec",
                "-i",
                "multi",
                "--",
                "sh",
                "-c",
                "cat > /tmp/in && cat /tmp/in",
            ],
            Some(&payload),
        )
        .await;
        assert_ok(&out, "exec -i");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "kubectl {version}: a clean exec logs nothing"
        );
        assert!(
            out.stdout == payload,
            "kubectl {version}: 1 MiB round trip differs ({} bytes back)",
            out.stdout.len()
        );
        assert_eq!(
            sim.read_file("default", "multi", "main", "/tmp/in")
                .unwrap(),
            payload
        );

        let failed = kubectl(
            &bin,
            &sim,
            &["exec", "multi", "--", "sh", "-c", "exit 7"],
            None,
        )
        .await;
        assert_eq!(
            failed.status.code(),
            Some(7),
            "kubectl {version}: {}",
            String::from_utf8_lossy(&failed.stderr)
        );

        let side = kubectl(
            &bin,
            &sim,
            &["exec", "multi", "-c", "side", "--", "tar", "--version"],
            None,
        )
        .await;
        assert_ok(&side, "exec -c side");
        assert!(
            stdout(&side).contains("GNU tar"),
            "kubectl {version}: -c picks the host-image container"
        );

        let main = kubectl(
            &bin,
            &sim,
            &[
                "exec",
                "multi",
                "--",
                "sh",
                "-c",
                "tar --help 2>&1 | head -1",
            ],
            None,
        )
        .await;
        assert_ok(&main, "exec default container");
        assert!(
            stdout(&main).contains("BusyBox"),
            "kubectl {version}: default container is busybox: {}",
            stdout(&main)
        );

        let unknown = kubectl(
            &bin,
            &sim,
            &["exec", "multi", "-c", "nope", "--", "true"],
            None,
        )
        .await;
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("nope"),
            "{}",
            String::from_utf8_lossy(&unknown.stderr)
        );
    }
    let protocols: Vec<String> = sim.exec_log().into_iter().map(|r| r.protocol).collect();
    assert!(
        protocols.iter().all(|p| p == "v5.channel.k8s.io"),
        "{protocols:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_a_replacement() {
    let Some(sim) = TestSim::with_busybox_pods([busybox_app_pod("api", "api")]).await else {
        return;
    };
    let mut current = "api".to_string();
    for (version, bin) in kubectls() {
        let mut cmd = kubectl_command(&bin, &sim.kubeconfig_path());
        cmd.args(["get", "pods", "-l", "app=api", "-w"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_line = async || {
            tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("kubectl {version} get -w printed nothing in time"))
                .unwrap()
                .expect("kubectl get -w ended early")
        };
        let header = next_line().await;
        assert!(header.starts_with("NAME"), "kubectl {version}: {header}");
        let first = next_line().await;
        assert!(first.starts_with(&current), "kubectl {version}: {first}");
        let new = sim
            .replace_pod("default", &current, ReplaceOrder::NewFirst)
            .await
            .unwrap();
        let mut saw_new_running = false;
        let mut saw_old_terminating = false;
        while !(saw_new_running && saw_old_terminating) {
            let line = next_line().await;
            assert!(
                !line.starts_with("NAME"),
                "kubectl {version}: headers are printed once: {line}"
            );
            if line.starts_with(&new.name) && line.contains("1/1") && line.contains("Running") {
                saw_new_running = true;
            }
            if line.starts_with(&format!("{current} ")) && line.contains("Terminating") {
                saw_old_terminating = true;
            }
        }
        child.start_kill().unwrap();
        let _ = child.wait().await;
        current = new.name;
    }
    sim.shutdown().await;
}

fn write_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = [
        ("a.txt", pseudo_random_bytes(10, 1)),
        ("dir/b.bin", pseudo_random_bytes(300_000, 2)),
        ("dir/sub/$(reboot) c", pseudo_random_bytes(5_000, 3)),
        ("dir/empty", Vec::new()),
    ];
    files
        .into_iter()
        .map(|(rel, content)| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            (PathBuf::from(rel), content)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cp_round_trips_a_tree() {
    let Some(sim) = TestSim::with_busybox_pods([]).await else {
        return;
    };
    // As in a real cluster, `kubectl cp` needs the parent directory to exist.
    sim.create_pod(
        PodTemplate::new("box")
            .container("app", Image::Busybox)
            .file("/srv/.keep", ""),
    )
    .await
    .unwrap();
    sim.create_pod(
        PodTemplate::new("deb")
            .container("app", Image::Host)
            .file("/srv/.keep", ""),
    )
    .await
    .unwrap();
    let local = sim.dir().join("cp-local");
    let files = write_tree(&local);
    for (version, bin) in kubectls() {
        for pod in ["box", "deb"] {
            let target = format!("{pod}:/srv/tree-{version}");
            let up = kubectl(&bin, &sim, &["cp", local.to_str().unwrap(), &target], None).await;
            assert_ok(&up, "cp into the pod");
            for (rel, content) in &files {
                let inside = format!("/srv/tree-{version}/{}", rel.display());
                assert_eq!(
                    &sim.read_file("default", pod, "app", &inside).unwrap(),
                    content,
                    "kubectl {version} {pod} {inside}"
                );
            }
            let back = sim.dir().join(format!("cp-back-{pod}-{version}"));
            let down = kubectl(&bin, &sim, &["cp", &target, back.to_str().unwrap()], None).await;
            assert_ok(&down, "cp out of the pod");
            for (rel, content) in &files {
                assert_eq!(
                    &std::fs::read(back.join(rel)).unwrap(),
                    content,
                    "kubectl {version} {pod} back {}",
                    rel.display()
                );
            }
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_delete() {
    let Some(sim) = TestSim::with_busybox_pods([]).await else {
        return;
    };
    for (version, bin) in kubectls() {
        let name = format!("talker-{}", version.replace('.', "-"));
        sim.create_pod(
            PodTemplate::new(&name)
                .container("app", Image::Busybox)
                .command("echo started; echo oops >&2; trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"),
        )
        .await
        .unwrap();
        let logs = podloop_e2e::eventually("the log lines", DEADLINE, || {
            let (bin, sim, name) = (&bin, &sim, &name);
            async move {
                let out = kubectl(bin, sim, &["logs", name], None).await;
                (out.status.success() && stdout(&out).contains("oops")).then(|| stdout(&out))
            }
        })
        .await;
        assert_eq!(logs, "started\noops\n", "kubectl {version}");
        let tail = kubectl(&bin, &sim, &["logs", &name, "--tail=1"], None).await;
        assert_eq!(stdout(&tail), "oops\n", "kubectl {version}");

        let deleted = kubectl(&bin, &sim, &["delete", "pod", &name], None).await;
        assert_ok(&deleted, "delete pod");
        assert_eq!(
            stdout(&deleted),
            format!("pod \"{name}\" deleted\n"),
            "kubectl {version}"
        );
        assert!(
            !sim.pod_names("default").contains(&name),
            "kubectl delete waits until the pod is gone"
        );
        let gone = kubectl(&bin, &sim, &["get", "pod", &name], None).await;
        assert!(!gone.status.success());
        assert!(
            String::from_utf8_lossy(&gone.stderr).contains(&format!("pods \"{name}\" not found")),
            "{}",
            String::from_utf8_lossy(&gone.stderr)
        );
    }
    sim.shutdown().await;
}
