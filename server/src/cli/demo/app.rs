//! `podloop demo-app`: the demo's web app, run as PID 1 of each demo pod.
//!
//! It plays the part of a dev server: it serves the files under `--dir`
//! over HTTP and keeps them in memory, re-reading a file when the process
//! gets SIGHUP (the demo's `reload` command) or when the file's mtime or
//! size changed. Plain `std` and blocking I/O: it runs inside a bare
//! container root with nothing but its shared libraries.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DemoAppArgs {
    /// Port on 127.0.0.1 (pods share the host's network, so each replica
    /// needs its own).
    #[arg(long)]
    pub port: u16,
    /// Folder whose files are served.
    #[arg(long, default_value = "/app")]
    pub dir: PathBuf,
    /// Replica name, sent back in the `X-Demo-Replica` header.
    #[arg(long, default_value = "web")]
    pub name: String,
}

static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    RELOAD_REQUESTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_terminate(_: libc::c_int) {
    // PID 1 of a pid namespace gets no default action for SIGTERM: without
    // a handler the pod would only stop after the kill grace period.
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn install_signal_handlers() {
    // SAFETY: the handlers only touch an atomic or call _exit.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            on_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_terminate as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_terminate as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

struct Cached {
    modified: Option<SystemTime>,
    len: u64,
    body: Vec<u8>,
}

struct App {
    dir: PathBuf,
    name: String,
    cache: HashMap<PathBuf, Cached>,
    reloads: u64,
}

impl App {
    /// The file's bytes, from memory unless a reload was asked for or the
    /// file changed under us.
    fn content(&mut self, relative: &Path) -> std::io::Result<Vec<u8>> {
        if RELOAD_REQUESTED.swap(false, Ordering::SeqCst) {
            self.cache.clear();
            self.reloads += 1;
            eprintln!("demo-app {}: SIGHUP, reloading", self.name);
        }
        let path = self.dir.join(relative);
        let meta = std::fs::metadata(&path)?;
        let modified = meta.modified().ok();
        if let Some(c) = self.cache.get(relative) {
            if c.modified == modified && c.len == meta.len() {
                return Ok(c.body.clone());
            }
        }
        let body = std::fs::read(&path)?;
        self.cache.insert(
            relative.to_path_buf(),
            Cached {
                modified,
                len: meta.len(),
                body: body.clone(),
            },
        );
        Ok(body)
    }

    fn answer(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        // Skip the headers: nothing in them matters here.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match requested_file(target) {
            None => ("400 Bad Request", b"bad path\n".to_vec()),
            Some(relative) => match self.content(&relative) {
                Ok(body) => ("200 OK", body),
                Err(e) => (
                    "404 Not Found",
                    format!("{}: {e}\n", relative.display()).into_bytes(),
                ),
            },
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Demo-Replica: {}\r\nX-Demo-Reloads: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            self.name,
            self.reloads
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        stream.flush()
    }
}

/// `/` is `index.html`; anything that could leave the folder is refused.
fn requested_file(target: &str) -> Option<PathBuf> {
    let path = target.split('?').next().unwrap_or("/");
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let relative = PathBuf::from(path);
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(relative)
}

pub fn run(args: DemoAppArgs) -> u8 {
    install_signal_handlers();
    let listener = match TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "demo-app {}: cannot listen on 127.0.0.1:{}: {e}; another process holds the port, restart the demo",
                args.name, args.port
            );
            return 1;
        }
    };
    eprintln!(
        "demo-app {}: serving {} on 127.0.0.1:{}",
        args.name,
        args.dir.display(),
        args.port
    );
    let mut app = App {
        dir: args.dir,
        name: args.name,
        cache: HashMap::new(),
        reloads: 0,
    };
    for stream in listener.incoming() {
        match stream {
            Ok(mut stream) => {
                if let Err(e) = app.answer(&mut stream) {
                    eprintln!("demo-app {}: request failed: {e}", app.name);
                }
            }
            Err(e) => eprintln!("demo-app {}: accept failed: {e}", app.name),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_served_folder() {
        assert_eq!(requested_file("/"), Some(PathBuf::from("index.html")));
        assert_eq!(
            requested_file("/css/a.css?v=1"),
            Some(PathBuf::from("css/a.css"))
        );
        assert_eq!(requested_file("/../etc/passwd"), None);
        assert_eq!(requested_file("/a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(requested_file("/a/../../b"), None);
    }
}
