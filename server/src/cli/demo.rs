//! `podloop demo`: the whole loop on this machine, with no cluster to
//! install. An embedded kubesim runs two replicas of a small web app; a
//! scripted editor saves a file through the real language server; the demo
//! shows both replicas answer with the new content, and how long it took.

pub mod app;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use kubesim::{Image, PodTemplate, Sim, SimOptions};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use super::lsp_client::{file_uri, LspClient};

pub use app::DemoAppArgs;

use super::doctor::DoctorArgs;

/// The first-five-minutes commands, flattened into the binary's own list.
#[derive(Debug, clap::Subcommand)]
pub enum FirstSteps {
    /// Run the whole loop on this machine: an embedded cluster, two app
    /// replicas, a scripted save through the language server.
    Demo(DemoArgs),
    /// Check kubeconfig, cluster, RBAC, pods and containers, with a fix for
    /// each failure.
    Doctor(DoctorArgs),
    /// The demo's web app (runs inside the demo pods).
    #[command(hide = true)]
    DemoApp(DemoAppArgs),
}

impl FirstSteps {
    /// Runs the command; returns the process exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        let code = match self {
            // Inside a pod: no runtime, no threads beyond the accept loop.
            FirstSteps::DemoApp(args) => return Ok(app::run(args)),
            FirstSteps::Demo(args) => tokio::runtime::Runtime::new()?.block_on(demo(args)),
            FirstSteps::Doctor(args) => {
                tokio::runtime::Runtime::new()?.block_on(super::doctor::doctor(args))
            }
        };
        Ok(code.clamp(0, 255) as u8)
    }
}

const NAMESPACE: &str = "default";
const CONTAINER: &str = "web";
const REPLICAS: usize = 2;
/// Where the demo app's executable sits inside each pod.
const APP_EXE: &str = "/opt/podloop-demo/podloop";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"# podloop demo: every save under site/ lands in /app of each `app=web` pod.
namespace = "default"

[[sync]]
name = "web"
local = "site"
remote = "/app"
selector = "app=web"
container = "web"
# The demo app re-reads its files on SIGHUP; PID 1 in the container is the app.
reload = "kill -HUP 1"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoImage {
    /// busybox when /bin/busybox exists, else host.
    Auto,
    /// busybox-static with every applet: an alpine-like container.
    Busybox,
    /// The host's sh, GNU tar and coreutils: a debian-like container.
    Host,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run the scripted edit, print the result, clean up and exit
    /// (non-interactive: for tests and CI).
    #[arg(long)]
    pub exit_after_loop: bool,
    /// The pods' image.
    #[arg(long, value_enum, default_value_t = DemoImage::Auto)]
    pub image: DemoImage,
}

struct Replica {
    pod: String,
    addr: SocketAddr,
}

/// Everything the demo started; `cleanup` removes all of it.
struct Demo {
    sim: Option<Sim>,
    /// Holds the cluster's files and the workspace; removed on drop.
    dir: tempfile::TempDir,
    workspace: PathBuf,
    kubeconfig: PathBuf,
    replicas: Vec<Replica>,
    image: Image,
}

pub async fn demo(args: DemoArgs) -> i32 {
    let mut interrupt = match Interrupt::new() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot listen for Ctrl+C: {e}");
            return 1;
        }
    };
    let mut demo = None;
    let outcome = tokio::select! {
        result = run(&args, &mut demo) => result.map(|()| false),
        () = interrupt.wait() => Ok(true),
    };
    let code = match outcome {
        Ok(false) if !args.exit_after_loop => {
            if let Some(d) = &demo {
                print_attach_help(d);
            }
            interrupt.wait().await;
            0
        }
        Ok(false) => 0,
        Ok(true) => 130,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    if let Some(d) = demo {
        println!(
            "\nstopping the demo cluster and removing {}",
            d.dir.path().display()
        );
        d.cleanup().await;
    }
    code
}

/// SIGINT or SIGTERM, whichever comes first.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> std::io::Result<Interrupt> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

async fn run(args: &DemoArgs, slot: &mut Option<Demo>) -> anyhow::Result<()> {
    let image = match args.image {
        DemoImage::Busybox => Image::Busybox,
        DemoImage::Host => Image::Host,
        DemoImage::Auto if kubesim::image::busybox_available() => Image::Busybox,
        DemoImage::Auto => Image::Host,
    };
    let dir = tempfile::Builder::new()
        .prefix("podloop-demo-")
        .tempdir()
        .context("creating the demo's temporary folder")?;
    println!("podloop demo: everything lives in {}", dir.path().display());
    step("starting an embedded Kubernetes API server (kubesim)");
    let sim = Sim::start(SimOptions::new(dir.path().join("cluster")))
        .await
        .context("starting kubesim")?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(sim.kubeconfig_path(), &kubeconfig).context("writing the kubeconfig")?;
    let workspace = dir.path().join("workspace");
    let demo = slot.insert(Demo {
        sim: Some(sim),
        dir,
        workspace,
        kubeconfig,
        replicas: Vec::new(),
        image,
    });
    println!(
        "  {} (kubeconfig {})",
        demo.sim().url(),
        demo.kubeconfig.display()
    );

    let first = page("v1", "the image's original page");
    step(&format!(
        "starting {REPLICAS} replicas of the web app (image `{}`)",
        image.as_str()
    ));
    for index in 1..=REPLICAS {
        let replica = demo.start_replica(index, &first).await?;
        demo.replicas.push(replica);
    }
    for r in &demo.replicas {
        wait_until_served(r, &first, Instant::now(), STARTUP_TIMEOUT).await?;
        println!("  {} serves http://{}/", r.pod, r.addr);
    }

    step("writing a workspace with podloop.toml");
    let index_html = demo.write_workspace(&first)?;
    println!("  {}", demo.workspace.display());

    step("starting `podloop lsp` with a scripted editor");
    let log = demo.dir.path().join("podloop-lsp.log");
    let mut client = LspClient::spawn(&demo.workspace, &demo.kubeconfig, &log)?;
    client.initialize(&demo.workspace, "demo").await?;
    client
        .wait_for_status(STARTUP_TIMEOUT, "both replicas as targets", |s| {
            s["targets"].as_array().is_some_and(|t| {
                t.len() == REPLICAS
                    && t.iter()
                        .all(|t| !t["pod"].as_str().unwrap_or("").is_empty())
            })
        })
        .await
        .with_context(|| format!("the server log is {}", log.display()))?;
    let uri = file_uri(&index_html)?;
    client.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "html", "version": 1, "text": first}}),
    )?;

    let edited = page("v2", "edited and saved in the editor");
    step("editing site/index.html and saving it");
    std::fs::write(&index_html, &edited).context("editing site/index.html")?;
    let saved_at = Instant::now();
    client.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": uri}, "text": edited}),
    )?;
    let mut slowest = Duration::ZERO;
    for r in &demo.replicas {
        let took = wait_until_served(r, &edited, saved_at, SYNC_TIMEOUT)
            .await
            .with_context(|| format!("the server log is {}", log.display()))?;
        slowest = slowest.max(took);
        println!(
            "  {} (http://{}/) now answers {:?}: {} ms after the save",
            r.pod,
            r.addr,
            headline(&edited),
            took.as_millis()
        );
    }
    let status = client
        .wait_for_status(SYNC_TIMEOUT, "the synced status", |s| {
            s["quiescent"] == true && s["health"] == "ok"
        })
        .await?;
    println!(
        "✓ save → served in both replicas: {} ms; podloop/status: {}",
        slowest.as_millis(),
        status_line(&status)
    );
    client.stop().await?;
    Ok(())
}

impl Demo {
    fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("the sim runs until cleanup")
    }

    async fn start_replica(&self, index: usize, first_page: &str) -> anyhow::Result<Replica> {
        let pod = format!("web-{index}");
        let port = free_port()?;
        // The app's executable is put into the root once the pod exists (a
        // template file is text); PID 1 waits for it, then becomes the app.
        let command = format!(
            "until [ -x {APP_EXE} ]; do sleep 0.1; done; exec {APP_EXE} demo-app --port {port} --dir /app --name {pod}"
        );
        self.sim()
            .create_pod(
                PodTemplate::new(&pod)
                    .namespace(NAMESPACE)
                    .label("app", "web")
                    .container(CONTAINER, self.image)
                    .command(&command)
                    .file("/app/index.html", first_page),
            )
            .await
            .with_context(|| format!("creating pod {pod}"))?;
        let root = self.sim().container_root(NAMESPACE, &pod, CONTAINER)?;
        install_app(&root).with_context(|| format!("installing the demo app into pod {pod}"))?;
        Ok(Replica {
            pod,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn write_workspace(&self, first_page: &str) -> anyhow::Result<PathBuf> {
        let site = self.workspace.join("site");
        std::fs::create_dir_all(&site)?;
        std::fs::write(self.workspace.join("podloop.toml"), CONFIG)?;
        let index = site.join("index.html");
        std::fs::write(&index, first_page)?;
        Ok(index)
    }

    async fn cleanup(mut self) {
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        let path = self.dir.path().to_path_buf();
        if let Err(e) = self.dir.close() {
            eprintln!("warning: could not remove {}: {e}", path.display());
        }
    }
}

fn step(text: &str) {
    println!("▸ {text}");
}

fn page(version: &str, what: &str) -> String {
    format!("hello from podloop {version}: {what}\n")
}

fn headline(page: &str) -> &str {
    page.lines().next().unwrap_or("")
}

fn status_line(status: &Value) -> String {
    let targets: Vec<String> = status["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}/{} {} ({} ms)",
                        t["pod"].as_str().unwrap_or("?"),
                        t["container"].as_str().unwrap_or("?"),
                        t["state"].as_str().unwrap_or("?"),
                        t["lastSync"]["ms"].as_u64().unwrap_or(0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}, {}",
        status["health"].as_str().unwrap_or("?"),
        targets.join(", ")
    )
}

/// A port nobody listens on right now. Pods share the host's network, so
/// each replica needs its own.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Puts this executable and the shared libraries it needs into a container
/// root. A hard link when the root is on the same filesystem (the debug
/// binary is large), else a copy.
fn install_app(root: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the podloop executable")?;
    for lib in shared_libraries(&exe)? {
        let target = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if target.exists() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&lib, &target).with_context(|| format!("copying {}", lib.display()))?;
    }
    let target = root.join(APP_EXE.trim_start_matches('/'));
    let parent = target.parent().expect("APP_EXE has a folder");
    std::fs::create_dir_all(parent)?;
    // Linked or copied under a temporary name, then renamed: PID 1 polls
    // for an executable file and must never start a half-copied one.
    let staging = parent.join(".podloop.partial");
    if std::fs::hard_link(&exe, &staging).is_err() {
        std::fs::copy(&exe, &staging).with_context(|| format!("copying {}", exe.display()))?;
    }
    std::fs::rename(&staging, &target)?;
    Ok(())
}

/// The libraries the dynamic loader maps for `binary`, from `ldd`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (glibc's `libc-bin` package) to find the app's libraries")?;
    if !out.status.success() {
        // A static binary: nothing to copy.
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            path.filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect())
}

/// One plain HTTP GET, blocking (run on a blocking thread).
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// Polls the replica until it serves `expected`; returns the time since
/// `start`.
async fn wait_until_served(
    replica: &Replica,
    expected: &str,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let addr = replica.addr;
        let answer = tokio::task::spawn_blocking(move || http_get(addr))
            .await
            .map_err(|e| anyhow!("the HTTP probe panicked: {e}"))?;
        let last = match answer {
            Ok(body) if body == expected => return Ok(start.elapsed()),
            Ok(body) => format!("{:?}", headline(&body)),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > timeout {
            bail!(
                "pod {} (http://{}/) did not serve {:?} within {timeout:?}; last answer: {last}",
                replica.pod,
                replica.addr,
                headline(expected)
            );
        }
        // A short pause between probes keeps the measurement fine-grained
        // without spinning a core.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn print_attach_help(demo: &Demo) {
    let ws = demo.workspace.display();
    let kc = demo.kubeconfig.display();
    println!(
        "
The demo keeps running. Try it with your own editor:

  export KUBECONFIG={kc}
  # VS Code (podloop extension installed, `podloop` on PATH):
  code {ws}
  # Neovim (editors/neovim on runtimepath, require('podloop').setup({{}})):
  nvim {ws}/site/index.html
  # no editor: push every change as it happens
  podloop watch --config {ws}/podloop.toml

Edit site/index.html, save, then see each replica answer:"
    );
    for r in &demo.replicas {
        println!("  curl http://{}/    # {}", r.addr, r.pod);
    }
    println!(
        "
Check the setup any time with `podloop doctor --config {ws}/podloop.toml`.
Stop with Ctrl+C: it stops the pods and removes {}.",
        demo.dir.path().display()
    );
}
