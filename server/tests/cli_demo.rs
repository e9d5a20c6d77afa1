//! `podloop demo` as a newcomer runs it: the real binary, its embedded
//! kubesim, the app replicas and the scripted save through `podloop lsp`.
//! What the replicas serve is read over HTTP by the test itself, and
//! cleanup is checked on disk and on the ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

fn demo(tmp: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_podloop"))
        .arg("demo")
        .args(args)
        // Everything the demo creates goes under TMPDIR: the test can see
        // that it is all gone afterwards.
        .env("TMPDIR", tmp)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("podloop binary")
}

/// Stdout lines, read on a thread so the demo never blocks on a full pipe.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            eprintln!("demo| {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line until stdout closes; a process that outlives the demo and
/// holds its stdout fails the test instead of hanging it.
fn until_eof(lines: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => out.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("stdout stayed open after the demo exited: a process leaked")
            }
        }
    }
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_string())
}

/// `http://127.0.0.1:PORT/` from a line of the demo's output.
fn addr_in(line: &str) -> SocketAddr {
    let start = line.find("http://").expect("a URL") + "http://".len();
    let rest = &line[start..];
    let end = rest.find('/').unwrap();
    rest[..end].parse().unwrap()
}

fn assert_all_cleaned_up(tmp: &Path, addrs: &[SocketAddr]) {
    let left: Vec<PathBuf> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
    for addr in addrs {
        assert!(
            TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_err(),
            "a replica still answers on {addr}"
        );
    }
}

#[test]
fn exit_after_loop_shows_the_edit_served_by_both_replicas_on_the_host_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = demo(tmp.path(), &["--exit-after-loop", "--image", "host"]);
    let lines = lines_of(&mut child);
    let status = wait_exit(&mut child, DEADLINE);
    let output = until_eof(&lines);
    let text = output.join("\n");
    assert!(status.success(), "exit {status:?}:\n{text}");
    assert!(text.contains("image `host`"), "{text}");
    let mut addrs = Vec::new();
    for pod in ["web-1", "web-2"] {
        let line = output
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{pod} (http://")))
            .unwrap_or_else(|| panic!("no result line for {pod}:\n{text}"));
        assert!(
            line.contains("now answers \"hello from podloop v2: edited and saved in the editor\""),
            "{line}"
        );
        assert!(line.ends_with("ms after the save"), "{line}");
        addrs.push(addr_in(line));
    }
    assert_ne!(addrs[0], addrs[1], "each replica has its own port");
    let summary = output
        .iter()
        .find(|l| l.starts_with("✓ save → served in both replicas: "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let millis: u64 = summary["✓ save → served in both replicas: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(millis < 30_000, "{summary}");
    assert!(summary.contains("web-1/web synced") && summary.contains("web-2/web synced"));
    assert_all_cleaned_up(tmp.path(), &addrs);
}

#[test]
fn interactive_demo_keeps_serving_the_edit_until_ctrl_c_then_removes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    // The default image: busybox when installed, else the host's tools.
    let mut child = demo(tmp.path(), &[]);
    let lines = lines_of(&mut child);
    let deadline = Instant::now() + DEADLINE;
    let mut replicas = Vec::new();
    let mut workspace = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo never reached its interactive part"));
        if line.starts_with("  curl http://") {
            replicas.push(addr_in(&line));
        }
        if let Some(path) = line.trim().strip_prefix("code ") {
            workspace = Some(PathBuf::from(path));
        }
        if line.starts_with("Stop with Ctrl+C") {
            break;
        }
    }
    assert_eq!(replicas.len(), 2, "two replicas listed");
    let workspace = workspace.expect("the workspace path is printed for `code`");
    let saved = std::fs::read_to_string(workspace.join("site/index.html")).unwrap();
    assert!(saved.contains("v2"), "{saved}");
    for addr in &replicas {
        assert_eq!(http_get(*addr).unwrap(), saved, "replica {addr}");
    }
    // The instructions point at files that exist.
    assert!(workspace.join("podloop.toml").is_file());
    assert!(workspace.parent().unwrap().join("kubeconfig").is_file());

    // Ctrl+C.
    let pid = child.id() as i32;
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit after Ctrl+C: {status:?}");
    assert_all_cleaned_up(tmp.path(), &replicas);
}
