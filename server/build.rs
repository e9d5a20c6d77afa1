//! Builds the container agent (`agent/`) as a freestanding static x86_64
//! executable and leaves it in OUT_DIR for `transport/agent.rs` to embed.
//! Without a Rust toolchain for x86_64 the file stays empty and podloop
//! uses the shell session everywhere (slower per save, same results).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest.join("../agent/src");
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let binary = out.join("podloop-agent");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-name=podloop_agent",
            "--crate-type=bin",
            "--cfg=podloop_agent_freestanding",
            "--target=x86_64-unknown-linux-gnu",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Cstrip=symbols",
            "-Crelocation-model=static",
            "-Ctarget-feature=+crt-static",
            "-Clink-arg=-nostartfiles",
            "-Clink-arg=-nostdlib",
        ])
        .arg(source.join("main.rs"))
        .arg("-o")
        .arg(&binary)
        .status();
    match built {
        Ok(status) if status.success() => {}
        outcome => {
            println!(
                "cargo:warning=the podloop container agent was not built ({outcome:?}); containers will use the shell session"
            );
            std::fs::write(&binary, b"").expect("OUT_DIR is writable");
        }
    }
}
