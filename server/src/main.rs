use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podloop::cli::{self, StatusArgs, SyncArgs, WatchArgs};
use podloop::convert::kube::{KubeCluster, KubeOptions};

/// podloop: saved files land in your pods, and the result lands in your editor.
#[derive(Debug, Parser)]
#[command(name = "podloop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the language server over stdio.
    Lsp {
        /// Accepted and ignored: vscode-languageclient appends it.
        #[arg(long)]
        stdio: bool,
    },
    /// Push files into every matching container, print a summary per target.
    Sync(SyncArgs),
    /// Watch the mapped folders and push every change until interrupted.
    Watch(WatchArgs),
    /// Show each mapping's pods and containers and whether they can be synced.
    Status(StatusArgs),
    #[command(flatten)]
    FirstSteps(cli::demo::FirstSteps),
    /// Measure the save-to-pod loop against `kubectl cp` on an embedded cluster.
    Bench(cli::bench::BenchArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::Lsp { .. } = cli.command {
        podloop::lsp::run_stdio()?;
        return Ok(ExitCode::SUCCESS);
    }
    // stdout carries the summary; logs go to stderr, off unless asked for.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODLOOP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    if let Command::Bench(args) = cli.command {
        return Ok(ExitCode::from(cli::bench::run(args)?));
    }
    if let Command::FirstSteps(command) = cli.command {
        return Ok(ExitCode::from(command.run()?));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let code = runtime.block_on(run(cli.command));
    Ok(ExitCode::from(code))
}

async fn run(command: Command) -> u8 {
    let (cluster_args, result) = match &command {
        Command::Sync(args) => {
            let adhoc = args.selector.is_some() || args.pod.is_some();
            let config = if adhoc {
                cli::adhoc_config(args)
            } else {
                cli::load_config(&args.cluster)
            };
            (&args.cluster, config)
        }
        Command::Watch(args) => (&args.cluster, cli::load_config(&args.cluster)),
        Command::Status(args) => (&args.cluster, cli::load_config(&args.cluster)),
        Command::Lsp { .. } | Command::FirstSteps(_) | Command::Bench(_) => {
            unreachable!("handled in main")
        }
    };
    let config = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let cluster = match KubeCluster::new(KubeOptions {
        kubeconfig: cluster_args.kubeconfig.clone(),
        context: cluster_args.context.clone(),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let code = match command {
        Command::Sync(args) => cli::sync(cluster, args, config).await,
        Command::Watch(args) => cli::watch(cluster, args, config).await,
        Command::Status(args) => cli::status(cluster, args, config).await,
        Command::Lsp { .. } | Command::FirstSteps(_) | Command::Bench(_) => {
            unreachable!("handled in main")
        }
    };
    code.clamp(0, 255) as u8
}
