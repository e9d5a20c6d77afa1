//! A pod with two containers: `podloop sync` writes into the container it is
//! told to (`-c`), or the default-container annotation's, and never into the
//! other one. Checked through kubesim's view of each container's root.

use std::time::Duration;

use kubesim::{Image, PodTemplate};
use podloop_e2e::{run_with_deadline, workspace_binary, TestSim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_only_into_the_chosen_container() {
    let Some(sim) = TestSim::with_busybox_pods([PodTemplate::new("two-0")
        .label("app", "two")
        .annotation("kubectl.kubernetes.io/default-container", "app")
        .container("sidecar", Image::Busybox)
        .container("app", Image::Busybox)])
    .await
    else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("main.txt"), "for the app").unwrap();
    let podloop = tokio::task::spawn_blocking(|| workspace_binary("podloop"))
        .await
        .unwrap();

    let sync = |extra: &'static [&'static str], remote: &'static str| {
        let mapping = format!("{}:{remote}", local.path().display());
        let mut cmd = tokio::process::Command::new(&podloop);
        cmd.args(["sync", "-n", "default", "-l", "app=two"])
            .args(extra)
            .arg(mapping)
            .arg("--kubeconfig")
            .arg(sim.kubeconfig_path())
            .env_remove("KUBECONFIG");
        cmd
    };
    for (extra, remote) in [
        (&[][..], "/by-default"),
        (&["-c", "sidecar"][..], "/by-flag"),
    ] {
        let out = run_with_deadline(&mut sync(extra, remote), None, Duration::from_secs(60)).await;
        assert!(
            out.status.success(),
            "podloop sync {extra:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let root = |container: &str| sim.container_root("default", "two-0", container).unwrap();
    assert_eq!(
        std::fs::read_to_string(root("app").join("by-default/main.txt")).unwrap(),
        "for the app",
        "without -c the default-container annotation decides"
    );
    assert!(
        !root("sidecar").join("by-default").exists(),
        "the other container was written"
    );
    assert_eq!(
        std::fs::read_to_string(root("sidecar").join("by-flag/main.txt")).unwrap(),
        "for the app",
        "-c picks the container"
    );
    assert!(
        !root("app").join("by-flag").exists(),
        "the other container was written"
    );
    sim.shutdown().await;
}
