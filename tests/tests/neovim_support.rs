//! Helpers for the tests that drive a real headless Neovim (`neovim_*.rs`).
//! Included by those files with `mod neovim_support;`; on its own this target
//! has no tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn plugin_dir() -> PathBuf {
    repo_root().join("editors/neovim")
}

pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/neovim")
}

fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The `nvim` to test with (`$PODLOOP_NVIM`, else `nvim` on `$PATH`). Without
/// one the test is skipped locally, but fails under CI (`CI=true`): there a
/// skipped editor test would read as a pass.
pub fn nvim_or_skip(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("PODLOOP_NVIM") {
        Some(explicit) => Some(PathBuf::from(explicit)),
        None => find_in_path("nvim"),
    };
    match found {
        Some(nvim) => Some(nvim),
        None if in_ci() => panic!(
            "{test}: nvim not found and CI=true: install it (apt-get install -y neovim; scripts/setup does) or set PODLOOP_NVIM"
        ),
        None => {
            eprintln!("{test}: SKIPPED: nvim not found (apt-get install -y neovim); under CI=true this fails");
            None
        }
    }
}

/// Point every place Neovim reads or writes user state at `home`, so a
/// developer's own config and plugins never leak into the test.
pub fn isolate(cmd: &mut Command, home: &Path) {
    for (var, sub) in [
        ("HOME", ""),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ] {
        let dir = home.join(sub);
        std::fs::create_dir_all(&dir).expect("create isolated home");
        cmd.env(var, dir);
    }
    cmd.env("NVIM_LOG_FILE", home.join("nvim.log"));
    cmd.env_remove("NVIM");
    cmd.env_remove("NVIM_LISTEN_ADDRESS");
    cmd.env_remove("VIMINIT");
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run to completion, or kill it and fail after `timeout`.
pub fn run_with_deadline(mut cmd: Command, timeout: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Poll `probe` until it returns Some, or fail with `what` and the last
/// observation after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `podloop` binary of this build (`$PODLOOP_BIN` overrides), rebuilt
/// when stale so the editors never run an old server.
pub fn podloop_binary() -> PathBuf {
    podloop_e2e::workspace_binary("podloop")
}

/// A headless Neovim listening on a socket, driven the way a user's other
/// terminal would: `nvim --server SOCK --remote-send/--remote-expr`.
pub struct Nvim {
    nvim: PathBuf,
    child: Child,
    socket: PathBuf,
    home: PathBuf,
    stderr_path: PathBuf,
}

impl Nvim {
    /// Start `nvim --headless -u <fixtures>/init.lua` with `env`, in `cwd`.
    pub fn start(nvim: &Path, home: &Path, cwd: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Nvim {
        let socket = home.join("nvim.sock");
        let stderr_path = home.join("nvim.stderr");
        let mut cmd = Command::new(nvim);
        cmd.current_dir(cwd)
            .arg("--headless")
            .args(["-i", "NONE", "-n", "--listen"])
            .arg(&socket)
            .arg("-u")
            .arg(fixtures_dir().join("init.lua"))
            .env("PODLOOP_PLUGIN_DIR", plugin_dir())
            .env("PODLOOP_FIXTURES_DIR", fixtures_dir())
            .env("PODLOOP_E2E_REPLY", home.join("e2e-reply.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        isolate(&mut cmd, home);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("spawn nvim");
        let mut started = Nvim {
            nvim: nvim.to_path_buf(),
            child,
            socket,
            home: home.to_path_buf(),
            stderr_path,
        };
        wait_for(
            "nvim to listen on its socket",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = started.child.try_wait() {
                    panic!("nvim exited early with {status}: {}", started.stderr());
                }
                if !started.socket.exists() {
                    return Err("no socket yet".into());
                }
                let answer = started.try_expr("1+1")?;
                if answer.trim() == "2" {
                    Ok(())
                } else {
                    Err(format!("answered {answer:?}"))
                }
            },
        );
        started
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn try_expr(&self, expr: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.nvim);
        cmd.arg("--server")
            .arg(&self.socket)
            .arg("--remote-expr")
            .arg(expr);
        isolate(&mut cmd, &self.home.join("remote"));
        let done = run_with_deadline(cmd, Duration::from_secs(30));
        if done.status.success() {
            // 0.7's remote client prints the value on stderr, newer ones on
            // stdout: the other stream is empty.
            Ok(format!("{}{}", done.stdout, done.stderr))
        } else {
            Err(format!(
                "remote-expr {expr:?} failed ({}): {}{}",
                done.status, done.stdout, done.stderr
            ))
        }
    }

    /// Evaluate a Vimscript expression in the running Neovim.
    pub fn expr(&self, expr: &str) -> String {
        self.try_expr(expr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Call `require('podloop_e2e').<function>(<argument>)` (the fixture
    /// module) and parse the JSON it answers with.
    pub fn call(&self, function: &str, argument: Option<&str>) -> serde_json::Value {
        let expr = match argument {
            None => format!("luaeval(\"require('podloop_e2e').{function}()\")"),
            Some(arg) => format!(
                "luaeval(\"require('podloop_e2e').{function}(_A)\", '{}')",
                arg.replace('\'', "''")
            ),
        };
        let length = self.expr(&expr);
        let text = std::fs::read_to_string(self.reply_path()).unwrap_or_default();
        assert_eq!(
            length.trim(),
            text.len().to_string(),
            "podloop_e2e.{function}: the reply file does not match the call's answer; nvim stderr: {}",
            self.stderr()
        );
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "podloop_e2e.{function}() answered non-JSON {text:?}: {e}\nnvim stderr: {}",
                self.stderr()
            )
        })
    }

    fn reply_path(&self) -> PathBuf {
        self.home.join("e2e-reply.json")
    }

    /// Type keys as a user would (`nvim --server … --remote-send`).
    pub fn send_keys(&self, keys: &str) {
        let mut cmd = Command::new(&self.nvim);
        cmd.arg("--server")
            .arg(&self.socket)
            .arg("--remote-send")
            .arg(keys);
        isolate(&mut cmd, &self.home.join("remote"));
        let done = run_with_deadline(cmd, Duration::from_secs(30));
        assert!(done.status.success(), "remote-send failed: {}", done.stderr);
    }

    /// Ask Neovim to quit, then make sure it is gone.
    pub fn quit(mut self) {
        let _ = self.try_expr("execute('qall!')");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nvim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
