//! `kubesim serve --dir DIR [--port N] [--pods PODS.json]`
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubesim::{PodTemplate, Sim, SimOptions};

#[derive(Parser)]
#[command(
    name = "kubesim",
    about = "A small Kubernetes API server whose pods are namespaced chroots"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT; DIR/kubeconfig appears once the server accepts requests.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// JSON list of pod templates to create at start (the shape of POST /_sim/pods).
        #[arg(long)]
        pods: Option<PathBuf>,
        /// Bearer token; random when absent.
        #[arg(long, env = "KUBESIM_TOKEN")]
        token: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBESIM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve {
        dir,
        port,
        pods,
        token,
    } = Cli::parse().command;
    let templates: Vec<PodTemplate> = match &pods {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a JSON list of pod templates (see docs/kubesim.md)",
                    path.display()
                )
            })?
        }
        None => Vec::new(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The kubeconfig appears only once serving; remove a stale one so waiters don't race it.
    let _ = std::fs::remove_file(dir.join("kubeconfig"));
    // The sim works in DIR/run; DIR/kubeconfig is published only after the --pods are running,
    // so whoever waits for it finds a ready cluster.
    let mut opts = SimOptions::new(dir.join("run"));
    opts.port = port;
    opts.token = token;
    let sim = Sim::start(opts).await?;
    for template in templates {
        let pod = sim.create_pod(template).await?;
        tracing::info!(namespace = %pod.namespace, name = %pod.name, "pod running");
    }
    let kubeconfig = std::fs::read(sim.kubeconfig_path())?;
    let published = dir.join("kubeconfig");
    let staging = dir.join(".kubeconfig.tmp");
    std::fs::write(&staging, kubeconfig)?;
    std::fs::rename(&staging, &published)?;
    eprintln!(
        "kubesim serving {} (kubeconfig {})",
        sim.url(),
        published.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping every pod");
    sim.shutdown().await;
    Ok(())
}
