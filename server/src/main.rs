use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lsp { .. } => podloop::lsp::run_stdio(),
    }
}
