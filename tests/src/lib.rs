//! Helpers shared by the end-to-end tests: a kubesim in a temp dir, the real kubectl binaries,
//! commands with deadlines, and condition polling.
use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use kubesim::{Image, PodTemplate, Sim, SimOptions};
use tokio::io::AsyncWriteExt;

/// A kubesim serving from its own temp dir; dropping it kills every pod process, then removes
/// the dir.
pub struct TestSim {
    sim: Option<Sim>,
    dir: tempfile::TempDir,
}

impl TestSim {
    pub async fn start() -> TestSim {
        let dir = tempfile::Builder::new()
            .prefix("kubesim-test-")
            .tempdir()
            .expect("creating a temp dir for kubesim");
        let sim = Sim::start(SimOptions::new(dir.path()))
            .await
            .expect("starting kubesim");
        TestSim {
            sim: Some(sim),
            dir,
        }
    }

    /// A sim already holding `pods`, or `None` (after saying why, or failing
    /// in CI) when `/bin/busybox`, which their containers run, is missing.
    pub async fn with_busybox_pods(pods: impl IntoIterator<Item = PodTemplate>) -> Option<TestSim> {
        if !require_busybox() {
            return None;
        }
        let sim = TestSim::start().await;
        for pod in pods {
            sim.create_pod(pod).await.unwrap();
        }
        Some(sim)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the sim and returns once every pod process is gone.
    pub async fn shutdown(mut self) {
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }

    pub async fn kube_client(&self) -> kube::Client {
        kube_client(&self.kubeconfig_path()).await
    }
}

impl Deref for TestSim {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        self.sim.as_ref().expect("sim is running until shutdown")
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        // The Sim must die (killing its pods) before its dir is removed.
        self.sim.take();
    }
}

/// Pod `name`, labelled `app=<app>`, with one busybox container `app`.
pub fn busybox_app_pod(name: &str, app: &str) -> PodTemplate {
    PodTemplate::new(name)
        .label("app", app)
        .container("app", Image::Busybox)
}

pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("reading the sim's kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("the sim's kubeconfig is usable by kube");
    kube::Client::try_from(config).expect("building a kube client")
}

/// `CI=true`: a missing tool fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn missing_tool(what: &str, hint: &str) {
    if in_ci() {
        panic!("{what} is missing and CI=true: {hint}");
    }
    eprintln!("SKIPPED: {what} is missing ({hint}); in CI this fails");
}

pub const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

/// The real kubectl of `version` ("1.33"), or `None` (after printing why) when it is missing
/// outside CI.
pub fn require_kubectl(version: &str) -> Option<PathBuf> {
    let path = Path::new(KUBECTL_DIR).join(format!("kubectl.{version}"));
    if path.is_file() {
        return Some(path);
    }
    missing_tool(
        &format!("kubectl {version} ({})", path.display()),
        "install google-cloud-cli's kubectl components",
    );
    None
}

/// Whether `/bin/busybox` exists; prints why not (or panics in CI).
pub fn require_busybox() -> bool {
    if kubesim::image::busybox_available() {
        return true;
    }
    missing_tool("/bin/busybox", "apt-get install -y busybox-static");
    false
}

/// Runs `cmd` with optional stdin, killing it and failing if it outlives `deadline`.
pub async fn run_with_deadline(
    cmd: &mut tokio::process::Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let described = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {described}: {e}"));
    let feed = {
        let input = stdin.map(<[u8]>::to_vec);
        let pipe = child.stdin.take();
        async move {
            if let (Some(input), Some(mut pipe)) = (input, pipe) {
                // The command may exit without reading everything; that is its business.
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            }
        }
    };
    let run = async {
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    match tokio::time::timeout(deadline, run).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {described}: {e}")),
        Err(_) => panic!("{described} did not finish within {deadline:?}"),
    }
}

/// A kubectl command pointed at the sim (`--kubeconfig`), with a clean environment.
pub fn kubectl_command(kubectl: &Path, kubeconfig: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .arg("--kubeconfig")
        .arg(kubeconfig);
    cmd
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The path of one of the workspace's binaries (`podloop`, `kubesim`), built
/// up to date first. Builds the whole workspace's binaries, as
/// `scripts/test` does, so the dependency features match and nothing is
/// recompiled; a no-op when they are fresh. `PODLOOP_BIN`/`KUBESIM_BIN`
/// override the path.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let env_key = format!("{}_BIN", name.to_uppercase());
    if let Some(explicit) = std::env::var_os(env_key) {
        return PathBuf::from(explicit);
    }
    // tests run from target/<profile>/deps/<test>; binaries sit in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args(["build", "-q", "--workspace", "--bins", "--target-dir"])
            .arg(profile_dir.parent().expect("target dir"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        match build.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(format!("running cargo: {e}")),
        }
    });
    if let Err(stderr) = built {
        panic!("building the workspace binaries failed:\n{stderr}");
    }
    profile_dir.join(name)
}
