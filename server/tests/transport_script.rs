//! The remote scripts run locally, with the exact stdin bytes podloop sends:
//! once with the host's `sh` and GNU tar/coreutils, once in a PATH holding
//! only busybox applets, and (sessions) once as a busybox session upgraded
//! to the container agent. No cluster involved: this pins down the script,
//! the agent and the framing; `transport_kubesim.rs` covers the wire.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::tree::{file, paths, tree, Node};
use podloop::transport::agent::{self, Upgrade};
use podloop::transport::ops::{deliver_argv, manifest_argv};
use podloop::transport::payload::{self, UploadEntry, UploadOp};
use podloop::transport::remote::{self, ManifestOutput};
use podloop::transport::session::Dialect;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shell {
    Host,
    Busybox,
    /// A busybox session upgraded to the container agent. The agent exists
    /// only in sessions: one-shot scripts never run under it.
    Agent,
}

/// Every way a warm session can run.
const SESSION_SHELLS: [Shell; 3] = [Shell::Host, Shell::Busybox, Shell::Agent];

const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "tar",
    "dd",
    "find",
    "xargs",
    "mv",
    "rm",
    "mkdir",
    "stat",
    "sha256sum",
    "cat",
    "printf",
    "echo",
    "test",
    "[",
    "touch",
    "wc",
    // The agent's upgrade checks the architecture and marks the agent executable.
    "uname",
    "chmod",
];

fn busybox_bin(dir: &Path, without: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    for applet in BUSYBOX_APPLETS {
        if !without.contains(applet) {
            std::os::unix::fs::symlink("/bin/busybox", bin.join(applet)).unwrap();
        }
    }
    bin
}

/// The `sh` of `shell`, started in `scratch/cwd` (made here) with TMPDIR
/// `scratch/tmp` (see [`tmp_dir`]); a busybox shell gets a PATH of busybox
/// applets without `without`.
fn shell_command(shell: Shell, scratch: &Path, without: &[&str]) -> Command {
    let mut command = match shell {
        Shell::Host => Command::new("/bin/sh"),
        Shell::Busybox | Shell::Agent => {
            let bin = busybox_bin(scratch, without);
            let mut c = Command::new(bin.join("sh"));
            c.env("PATH", bin);
            c
        }
    };
    let cwd = scratch.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    command.current_dir(cwd);
    command.env("TMPDIR", tmp_dir(scratch));
    command
}

/// The session's temporary folder, where the agent is copied to (made here).
fn tmp_dir(scratch: &Path) -> PathBuf {
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    tmp
}

/// What is left in a folder, by name.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `argv` (whose first element is `sh`) the way the container would.
fn run(
    shell: Shell,
    scratch: &Path,
    argv: &[String],
    stdin: &[u8],
    without: &[&str],
) -> (i32, Vec<u8>, Vec<u8>) {
    assert_ne!(
        shell,
        Shell::Agent,
        "one-shot scripts never run under the agent"
    );
    let mut command = shell_command(shell, scratch, without);
    command
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A writer thread, so a script that stops reading early cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

fn os(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

struct Local {
    dir: PathBuf,
    entries: Vec<UploadEntry>,
}

impl Local {
    /// Staged copies of the files to send go in `dir`.
    fn new(dir: &Path) -> Local {
        Local {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        }
    }
    fn put(&mut self, rel: &[u8], content: &[u8], executable: bool) {
        let local = self.dir.join(format!("src-{}", self.entries.len()));
        std::fs::write(&local, content).unwrap();
        // Every other file comes with its bytes already read, as the engine
        // hands small files over; the rest are read from disk.
        let read_already = self.entries.len().is_multiple_of(2);
        self.entries.push(UploadEntry {
            path: rel.to_vec(),
            op: UploadOp::Put {
                local,
                mode: if executable { 0o755 } else { 0o644 },
                expect: None,
                content: read_already.then(|| content.into()),
            },
        });
    }
    /// A delete of a file podloop wrote as `held`, checked first.
    fn delete_checked(&mut self, rel: &[u8], held: &[u8], skip: bool) {
        self.entries.push(UploadEntry {
            path: rel.to_vec(),
            op: UploadOp::Delete {
                expect: Some(payload::Expect {
                    held: Some(sha256(held)),
                    new: None,
                    skip_if_changed: skip,
                }),
            },
        });
    }
    /// A 0644 file whose container copy is checked against `held` first.
    fn put_checked(&mut self, rel: &[u8], content: &[u8], held: Option<&[u8]>, skip: bool) {
        self.put(rel, content, false);
        if let Some(UploadEntry {
            op: UploadOp::Put { expect, .. },
            ..
        }) = self.entries.last_mut()
        {
            *expect = Some(expectation(content, held, skip));
        }
    }
    fn link(&mut self, rel: &[u8], target: &[u8]) {
        self.entries.push(UploadEntry {
            path: rel.to_vec(),
            op: UploadOp::Symlink {
                target: target.to_vec(),
            },
        });
    }
    fn delete(&mut self, rel: &[u8]) {
        self.entries.push(UploadEntry {
            path: rel.to_vec(),
            op: UploadOp::Delete { expect: None },
        });
    }
}

fn sha256(content: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(content).into()
}

/// "podloop last wrote `held` (None: nothing) and now sends `content`".
fn expectation(content: &[u8], held: Option<&[u8]>, skip: bool) -> payload::Expect {
    payload::Expect {
        held: held.map(sha256),
        new: Some(sha256(content)),
        skip_if_changed: skip,
    }
}

async fn payload_bytes(entries: &[UploadEntry]) -> (payload::Payload, Vec<u8>) {
    let plan = payload::plan(entries).unwrap();
    assert!(plan.local_failures.is_empty(), "{:?}", plan.local_failures);
    let mut bytes = Vec::new();
    payload::stream(&plan.pieces, &mut bytes).await.unwrap();
    assert_eq!(bytes.len() as u64, plan.len, "planned length must be exact");
    (plan, bytes)
}

fn hostile_names() -> Vec<&'static [u8]> {
    vec![
        b"with space.txt",
        "unicod\u{e9}-\u{65e5}\u{672c}.txt".as_bytes(),
        b"new\nline",
        b"$(touch PWNED)",
        b"`touch PWNED`; rm -rf x",
        b"-rf",
        b".hidden",
        b"..dots",
        b"quote'\"name",
        b"\xff\xfenot-utf8",
    ]
}

async fn full_tree_case(shell: Shell) {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("app/src");
    std::fs::create_dir_all(root.join("gone-dir/deep")).unwrap();
    std::fs::write(root.join("gone-dir/deep/f"), b"x").unwrap();
    std::fs::write(root.join("gone-file"), b"x").unwrap();
    std::fs::write(root.join("kept"), b"untouched").unwrap();
    std::fs::write(root.join("replaced"), b"old content").unwrap();
    std::fs::create_dir_all(root.join("old name")).unwrap();
    std::fs::write(root.join("old name/renamed"), b"r").unwrap();

    let local_dir = scratch.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let mut local = Local::new(&local_dir);
    let mut expected: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
    expected.insert(b"kept".to_vec(), file(b"untouched", 0o644));
    for (i, name) in hostile_names().into_iter().enumerate() {
        let content = format!("content {i}\n").into_bytes();
        local.put(name, &content, false);
        expected.insert(name.to_vec(), file(&content, 0o644));
    }
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    local.put(b"big.bin", &big, false);
    expected.insert(b"big.bin".to_vec(), file(&big, 0o644));
    local.put(b"empty", b"", false);
    expected.insert(b"empty".to_vec(), file(b"", 0o644));
    local.put(b"run.sh", b"#!/bin/sh\necho hi\n", true);
    expected.insert(b"run.sh".to_vec(), file(b"#!/bin/sh\necho hi\n", 0o755));
    local.put(b"replaced", b"new content", false);
    expected.insert(b"replaced".to_vec(), file(b"new content", 0o644));
    local.put(b"a/b c/d\ne/nested $(x).txt", b"deep", false);
    expected.insert(b"a".to_vec(), Node::Dir);
    expected.insert(b"a/b c".to_vec(), Node::Dir);
    expected.insert(b"a/b c/d\ne".to_vec(), Node::Dir);
    expected.insert(b"a/b c/d\ne/nested $(x).txt".to_vec(), file(b"deep", 0o644));
    let long = format!("long/{}/{}", "d".repeat(120), "n".repeat(150));
    local.put(long.as_bytes(), b"long", false);
    expected.insert(b"long".to_vec(), Node::Dir);
    expected.insert(format!("long/{}", "d".repeat(120)).into_bytes(), Node::Dir);
    expected.insert(long.clone().into_bytes(), file(b"long", 0o644));
    local.link(b"link", b"run.sh");
    expected.insert(b"link".to_vec(), Node::Link(b"run.sh".to_vec()));
    local.delete(b"gone-dir");
    local.delete(b"gone-file");
    local.delete(b"old name");
    local.put(b"new name/renamed", b"r", false);
    expected.insert(b"new name".to_vec(), Node::Dir);
    expected.insert(b"new name/renamed".to_vec(), file(b"r", 0o644));

    let (plan, bytes) = payload_bytes(&local.entries).await;
    let argv = deliver_argv(
        root.to_str().unwrap(),
        &plan,
        Some("echo reloaded; echo to-stderr >&2"),
    );
    let work = scratch.path().join("cwd");
    let (code, stdout, stderr) = run(shell, scratch.path(), &argv, &bytes, &[]);
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(code, 0, "{shell:?}: stderr: {stderr}");
    let report = remote::parse_deliver_output(&stdout).unwrap();
    assert!(report.complete, "{shell:?}: {report:?} {stderr}");
    assert!(report.failed.is_empty(), "{shell:?}: {:?}", report.failed);
    assert_eq!(report.reload_exit, Some(0));
    let output = report.reload_output.clone().unwrap_or_default();
    assert!(
        output.contains("reloaded") && output.contains("to-stderr"),
        "{output}"
    );

    let actual = tree(&root);
    assert_eq!(paths(&actual), paths(&expected), "{shell:?}: tree differs");
    assert_eq!(actual, expected, "{shell:?}: content or modes differ");
    assert!(!scratch.path().join("PWNED").exists());
    assert!(!work.join("PWNED").exists());
    assert!(!root.join("PWNED").exists());
}

#[tokio::test]
async fn deliver_script_applies_a_hostile_tree_with_host_tools() {
    full_tree_case(Shell::Host).await;
}

#[tokio::test]
async fn deliver_script_applies_a_hostile_tree_with_busybox() {
    full_tree_case(Shell::Busybox).await;
}

async fn truncated_case(shell: Shell) {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a"), b"old").unwrap();
    std::fs::write(root.join("doomed"), b"keep me").unwrap();
    let mut local = Local::new(scratch.path());
    local.put(b"a", &vec![b'n'; 100_000], false);
    local.put(b"b", b"b", false);
    local.delete(b"doomed");
    let (plan, bytes) = payload_bytes(&local.entries).await;
    let argv = deliver_argv(root.to_str().unwrap(), &plan, Some("touch RELOADED"));
    // Cut at several places: inside the delete list, inside a file, just
    // before the completion marker. Nothing may change in any of them.
    for cut in [100usize, 700, 50_000, bytes.len() - 2000] {
        let (code, stdout, _) = run(shell, scratch.path(), &argv, &bytes[..cut], &[]);
        let report = remote::parse_deliver_output(&stdout).unwrap();
        assert!(!report.complete, "{shell:?} cut at {cut}");
        // tar itself may notice the cut first ("short read").
        assert!(
            report.truncated.is_some() || report.extract_failed.is_some(),
            "{shell:?} cut at {cut}: {report:?}"
        );
        assert_ne!(code, 0);
        let mut names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["a", "doomed"],
            "{shell:?} cut at {cut}: staging left or partial apply"
        );
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"old");
    }
}

#[tokio::test]
async fn truncated_stream_applies_nothing_with_host_tools() {
    truncated_case(Shell::Host).await;
}

#[tokio::test]
async fn truncated_stream_applies_nothing_with_busybox() {
    truncated_case(Shell::Busybox).await;
}

/// A PATH with the host's tools except `without` (Debian's static busybox
/// runs its applets even when they are not in PATH, so it cannot lack tar).
fn host_bin_without(dir: &Path, without: &str) -> PathBuf {
    let bin = dir.join("hostbin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "dd",
        "find",
        "xargs",
        "mv",
        "rm",
        "mkdir",
        "stat",
        "sha256sum",
        "tar",
    ] {
        if tool != without {
            for prefix in ["/usr/bin", "/bin"] {
                let real = Path::new(prefix).join(tool);
                if real.exists() {
                    std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
                    break;
                }
            }
        }
    }
    bin
}

#[tokio::test]
async fn missing_tar_is_reported_by_name() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let mut local = Local::new(scratch.path());
    local.put(b"a", b"a", false);
    let (plan, bytes) = payload_bytes(&local.entries).await;
    let argv = deliver_argv(root.to_str().unwrap(), &plan, None);
    let bin = host_bin_without(scratch.path(), "tar");
    let out = Command::new("/bin/sh")
        .args(&argv[1..])
        .env("PATH", &bin)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (code, stdout) = (out.status.code().unwrap(), out.stdout);
    drop(bytes);
    assert_eq!(code, remote::EXIT_MISSING_TOOL);
    let report = remote::parse_deliver_output(&stdout).unwrap();
    assert_eq!(report.missing_tool.as_deref(), Some("tar"));
}

#[tokio::test]
async fn failing_reload_reports_its_exit_code() {
    for shell in [Shell::Host, Shell::Busybox] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        let mut local = Local::new(scratch.path());
        local.put(b"a", b"a", false);
        let (plan, bytes) = payload_bytes(&local.entries).await;
        let argv = deliver_argv(root.to_str().unwrap(), &plan, Some("echo boom >&2; exit 7"));
        let (code, stdout, stderr) = run(shell, scratch.path(), &argv, &bytes, &[]);
        assert_eq!(code, 0);
        let report = remote::parse_deliver_output(&stdout).unwrap();
        assert!(report.complete);
        assert_eq!(report.reload_exit, Some(7));
        assert!(
            report.reload_output.unwrap_or_default().contains("boom"),
            "{}",
            String::from_utf8_lossy(&stderr)
        );
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"a");
    }
}

#[tokio::test]
async fn an_entry_the_container_refuses_is_reported_and_the_rest_lands() {
    for shell in [Shell::Host, Shell::Busybox] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        // A non-empty folder where a file should go, without a delete for it.
        std::fs::create_dir_all(root.join("blocked/inner")).unwrap();
        let mut local = Local::new(scratch.path());
        local.put(b"blocked", b"file", false);
        local.put(b"fine", b"fine", false);
        let (plan, bytes) = payload_bytes(&local.entries).await;
        let argv = deliver_argv(root.to_str().unwrap(), &plan, None);
        let (_, stdout, _) = run(shell, scratch.path(), &argv, &bytes, &[]);
        let report = remote::parse_deliver_output(&stdout).unwrap();
        assert!(report.complete, "{shell:?}");
        assert_eq!(report.failed.len(), 1, "{shell:?}: {:?}", report.failed);
        assert_eq!(report.failed[0].0, b"blocked");
        assert_eq!(std::fs::read(root.join("fine")).unwrap(), b"fine");
        assert!(root.join("blocked/inner").is_dir());
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".podloop-stage"))
            .collect();
        assert!(leftovers.is_empty(), "{shell:?}");
    }
}

#[tokio::test]
async fn manifest_script_hashes_every_file_with_odd_names() {
    use sha2::Digest;
    for shell in [Shell::Host, Shell::Busybox] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("sub dir")).unwrap();
        std::fs::create_dir_all(root.join(".podloop-stage-123")).unwrap();
        std::fs::write(root.join(".podloop-stage-123/skip"), b"x").unwrap();
        let mut expected = BTreeMap::new();
        for (i, name) in hostile_names().into_iter().enumerate() {
            let content = vec![b'a' + i as u8; i * 100];
            std::fs::write(root.join(os(name)), &content).unwrap();
            expected.insert(
                name.to_vec(),
                (
                    content.len() as u64,
                    sha2::Sha256::digest(&content).to_vec(),
                ),
            );
        }
        std::fs::write(root.join("sub dir/back\\slash\nnl"), b"z").unwrap();
        expected.insert(
            b"sub dir/back\\slash\nnl".to_vec(),
            (1, sha2::Sha256::digest(b"z").to_vec()),
        );
        std::fs::set_permissions(
            root.join("with space.txt"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("with space.txt", root.join("alink")).unwrap();

        let argv = manifest_argv(root.to_str().unwrap());
        let (code, stdout, stderr) = run(shell, scratch.path(), &argv, b"", &[]);
        assert_eq!(code, 0, "{shell:?}: {}", String::from_utf8_lossy(&stderr));
        let ManifestOutput::Files(files) = remote::parse_manifest_output(&stdout).unwrap() else {
            panic!("{shell:?}: expected files");
        };
        let actual: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = files
            .iter()
            .map(|f| (f.path.clone(), (f.size, f.sha256.to_vec())))
            .collect();
        assert_eq!(actual, expected, "{shell:?}");
        let exe = files.iter().find(|f| f.path == b"with space.txt").unwrap();
        assert_eq!(exe.mode & 0o777, 0o755);

        let missing = scratch.path().join("nope");
        let (_, stdout, _) = run(
            shell,
            scratch.path(),
            &manifest_argv(missing.to_str().unwrap()),
            b"",
            &[],
        );
        assert_eq!(
            remote::parse_manifest_output(&stdout).unwrap(),
            ManifestOutput::NoRoot
        );
    }
}

/// A `sh` running the session script (or the agent it became), fed batch
/// after batch on one stdin.
struct SessionShell {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    buffered: Vec<u8>,
    dialect: Dialect,
}

impl SessionShell {
    /// A session of `shell`; `Shell::Agent` is upgraded at once and must
    /// start. `path` replaces the shell's PATH.
    fn start(shell: Shell, scratch: &Path, path: Option<&Path>) -> SessionShell {
        let mut command = shell_command(shell, scratch, &[]);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let mut child = command
            .args(["-c", &remote::session_script(), "podloop-session"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buffer) {
                if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let mut session = SessionShell {
            child,
            stdin,
            output,
            buffered: Vec::new(),
            dialect: Dialect::Shell,
        };
        assert_eq!(session.read_until(b"H\0"), b"");
        if shell == Shell::Agent {
            assert_eq!(session.upgrade(), Upgrade::Started);
        }
        session
    }

    /// Offers the agent, as `SessionPool::deliver` does; on `Started` the session
    /// speaks the agent's dialect from now on.
    fn upgrade(&mut self) -> Upgrade {
        let binary =
            agent::binary().expect("the agent was not built: see the warning of server/build.rs");
        let nonce = payload::new_nonce();
        self.stdin
            .write_all(&agent::upgrade_request(binary, &nonce))
            .unwrap();
        self.stdin.flush().unwrap();
        let answer = agent::upgrade_answer(&self.read_until(format!("E\0{nonce}\0").as_bytes()));
        if answer == Upgrade::Started {
            self.dialect = Dialect::Agent;
        }
        answer
    }

    /// Everything before `marker`; panics after 20 s without it.
    fn read_until(&mut self, marker: &[u8]) -> Vec<u8> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(at) = self
                .buffered
                .windows(marker.len())
                .position(|w| w == marker)
            {
                let before = self.buffered[..at].to_vec();
                self.buffered.drain(..at + marker.len());
                return before;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.buffered.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "no {:?} from the session; got {:?}",
                    String::from_utf8_lossy(marker),
                    String::from_utf8_lossy(&self.buffered)
                ),
            }
        }
    }

    /// Sends one batch and returns the script's report for it.
    async fn batch(&mut self, root: &Path, entries: &[UploadEntry], reload: &str) -> Vec<u8> {
        self.batch_cut(root, entries, reload, None).await
    }

    /// [`Self::batch`], but stdin ends after `cut` bytes of the tar when given.
    async fn batch_cut(
        &mut self,
        root: &Path,
        entries: &[UploadEntry],
        reload: &str,
        cut: Option<usize>,
    ) -> Vec<u8> {
        let (plan, bytes) = payload_bytes(entries).await;
        let root = root.to_str().unwrap();
        let header = match self.dialect {
            Dialect::Shell => remote::session_header(plan.len, &plan.nonce, root, reload),
            Dialect::Agent => agent::tar_header(plan.len, &plan.nonce, root, reload),
        };
        self.stdin.write_all(&header).unwrap();
        self.send_body(&bytes, cut);
        self.read_until(format!("E\0{}\0", plan.nonce).as_bytes())
    }

    /// Writes `body`, or only its first `cut` bytes and then ends stdin (the
    /// connection drops inside the batch).
    fn send_body(&mut self, body: &[u8], cut: Option<usize>) {
        if let Some(at) = cut {
            self.stdin.write_all(&body[..at]).unwrap();
            let stdin = std::mem::replace(
                &mut self.stdin,
                std::process::ChildStdin::from(std::os::fd::OwnedFd::from(
                    std::fs::File::open("/dev/null").unwrap(),
                )),
            );
            drop(stdin);
        } else if let Err(e) = self.stdin.write_all(body).and_then(|()| self.stdin.flush()) {
            // A shell session stops reading after a failed write (a full
            // disk) and ends: the report it printed is what the test checks.
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }

    /// Sends a one-file batch on the fast path: raw bytes, then the nonce.
    fn file(&mut self, root: &Path, path: &[u8], content: &[u8], cut: Option<usize>) -> Vec<u8> {
        self.file_checked(root, path, content, cut, None)
    }

    fn file_checked(
        &mut self,
        root: &Path,
        path: &[u8],
        content: &[u8],
        cut: Option<usize>,
        expect: Option<payload::Expect>,
    ) -> Vec<u8> {
        self.file_request(root, path, content, cut, expect, "")
    }

    fn file_request(
        &mut self,
        root: &Path,
        path: &[u8],
        content: &[u8],
        cut: Option<usize>,
        expect: Option<payload::Expect>,
        reload: &str,
    ) -> Vec<u8> {
        let nonce = payload::new_nonce();
        let (size, root) = (content.len() as u64, root.to_str().unwrap());
        let header = match self.dialect {
            Dialect::Shell => {
                remote::session_file_header(size, &nonce, root, reload, path, expect.as_ref())
            }
            Dialect::Agent => agent::file_header(size, &nonce, root, reload, path, expect.as_ref()),
        };
        self.stdin.write_all(&header).unwrap();
        let mut rest = content.to_vec();
        rest.extend_from_slice(format!("{nonce}\n").as_bytes());
        self.send_body(&rest, cut);
        self.read_until(format!("E\0{nonce}\0").as_bytes())
    }

    /// The executable the session's process runs now.
    fn exe(&self) -> String {
        std::fs::read_link(format!("/proc/{}/exe", self.child.id()))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// Names in `root` that podloop made for itself (staging folders,
/// temporaries); `root` must exist.
fn podloop_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".podloop"))
        .collect()
}

fn staging_folders(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".podloop-stage"))
                .collect()
        })
        .unwrap_or_default()
}

/// A PATH whose tools log each start to `log` before running the real one,
/// so a test can count the processes a batch costs (dash and GNU tools: a
/// busybox shell runs its applets without looking at PATH).
fn counting_bin(dir: &Path, log: &Path) -> PathBuf {
    let bin = dir.join("countbin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "dd", "head", "tar", "mv", "rm", "mkdir", "cat", "find", "xargs", "sh", "uname", "chmod",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|p| Path::new(p).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool} on this machine"));
        let wrapper = bin.join(tool);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho {tool} >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[tokio::test]
async fn a_session_applies_batch_after_batch_and_a_small_save_costs_four_processes() {
    let scratch = tempfile::tempdir().unwrap();
    let (mut session, log) = counting_session(scratch.path());
    let root = scratch.path().join("app");
    let spawned = || spawned_tools(&log);

    // The first batch creates the root; later ones are the steady state.
    let mut local = Local::new(scratch.path());
    local.put(b"main.rs", b"v0", false);
    let report = remote::parse_deliver_output(&session.batch(&root, &local.entries, "").await);
    assert!(report.unwrap().complete);
    for i in 1..=3 {
        let _ = std::fs::remove_file(&log);
        let mut local = Local::new(scratch.path());
        local.put(b"main.rs", format!("v{i}").as_bytes(), false);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete && report.failed.is_empty(), "{report:?}");
        assert_eq!(
            std::fs::read(root.join("main.rs")).unwrap(),
            format!("v{i}").as_bytes()
        );
        assert_eq!(spawned(), ["dd", "mv", "rm", "tar"], "save {i}");
        assert!(staging_folders(&root).is_empty());
    }

    // Deletes, two folders, hostile names and a reload in one batch, then a
    // batch into another root on the same session.
    std::fs::create_dir_all(root.join("old dir/x")).unwrap();
    std::fs::write(root.join("old file"), b"x").unwrap();
    let mut local = Local::new(scratch.path());
    local.delete(b"old dir");
    local.delete(b"old file");
    for name in hostile_names() {
        local.put(name, b"hostile", false);
        let mut nested = b"sub $(x)/".to_vec();
        nested.extend_from_slice(name);
        local.put(&nested, b"nested", false);
    }
    let _ = std::fs::remove_file(&log);
    let out = session
        .batch(&root, &local.entries, "echo \"it's\"\necho reloaded")
        .await;
    let report = remote::parse_deliver_output(&out).unwrap();
    assert!(report.complete && report.failed.is_empty(), "{report:?}");
    assert_eq!(report.reload_exit, Some(0));
    assert_eq!(
        report.reload_output.as_deref().map(str::trim),
        Some("it's\nreloaded")
    );
    assert!(!root.join("old dir").exists() && !root.join("old file").exists());
    for name in hostile_names() {
        assert_eq!(std::fs::read(root.join(os(name))).unwrap(), b"hostile");
        let mut nested = b"sub $(x)/".to_vec();
        nested.extend_from_slice(name);
        assert_eq!(std::fs::read(root.join(os(&nested))).unwrap(), b"nested");
    }
    assert!(!scratch.path().join("cwd/PWNED").exists() && !root.join("PWNED").exists());
    let mvs = spawned().iter().filter(|t| *t == "mv").count();
    assert_eq!(mvs, 2, "one mv per folder: {:?}", spawned());

    let other = scratch.path().join("other root");
    let mut local = Local::new(scratch.path());
    local.put(b"a", b"other", false);
    let report = remote::parse_deliver_output(&session.batch(&other, &local.entries, "").await);
    assert!(report.unwrap().complete);
    assert_eq!(std::fs::read(other.join("a")).unwrap(), b"other");
    assert!(staging_folders(&root).is_empty() && staging_folders(&other).is_empty());

    drop(session.stdin);
    assert!(session.child.wait().unwrap().success());
}

#[tokio::test]
async fn a_session_survives_an_unwritable_root_and_keeps_reading_in_step() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        // A file where the root's parent folder should be: no root can be made.
        std::fs::write(scratch.path().join("blocked"), b"file").unwrap();
        let blocked = scratch.path().join("blocked/app");
        let root = scratch.path().join("app");
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let mut local = Local::new(scratch.path());
        local.put(b"big", &vec![b'b'; 300_000], false);
        let out = session.batch(&blocked, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.staging_failed.is_some(), "{shell:?}: {report:?}");
        assert!(!report.complete);
        // The next batch is read from the right place in the stream.
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        assert_eq!(std::fs::read(root.join("big")).unwrap().len(), 300_000);
        // The same for a one-file save: refused whole, the next one lands.
        let out = session.file(&blocked, b"one.rs", &[b'o'; 200_000], None);
        let report = remote::parse_deliver_output(&out).unwrap();
        let why = report.staging_failed.clone().expect("an S record");
        assert!(why.contains("blocked"), "{shell:?}: {why}");
        assert!(!report.complete, "{shell:?}: {report:?}");
        let out = session.file(&root, b"one.rs", b"landed", None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        assert_eq!(std::fs::read(root.join("one.rs")).unwrap(), b"landed");
    }
}

#[test]
fn one_saved_file_takes_the_fast_path_dd_and_mv_only() {
    let scratch = tempfile::tempdir().unwrap();
    let (mut session, log) = counting_session(scratch.path());
    let root = scratch.path().join("app");
    let spawned = || spawned_tools(&log);
    // First save creates the root and a folder with a hostile name.
    let deep = b"new $(dir)/it's\nodd.rs";
    let report = remote::parse_deliver_output(&session.file(&root, deep, b"one\n", None)).unwrap();
    assert!(report.complete && report.failed.is_empty(), "{report:?}");
    assert_eq!(std::fs::read(root.join(os(deep))).unwrap(), b"one\n");
    for i in 0..3 {
        let _ = std::fs::remove_file(&log);
        let content = format!("version {i}\n\n").into_bytes();
        let out = session.file(&root, b"main.rs", &content, None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete && report.failed.is_empty(), "{report:?}");
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), content);
        let meta = std::fs::metadata(root.join("main.rs")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(spawned(), ["dd", "mv"], "save {i}");
    }
    // Binary content and an empty file go the same way.
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let report = remote::parse_deliver_output(&session.file(&root, b"bin", &binary, None)).unwrap();
    assert!(report.complete);
    assert_eq!(std::fs::read(root.join("bin")).unwrap(), binary);
    let report = remote::parse_deliver_output(&session.file(&root, b"empty", b"", None)).unwrap();
    assert!(report.complete);
    assert_eq!(std::fs::read(root.join("empty")).unwrap(), b"");
    // A folder where the file should go: refused, the session goes on.
    std::fs::create_dir_all(root.join("blocked/inner")).unwrap();
    let report =
        remote::parse_deliver_output(&session.file(&root, b"blocked", b"x", None)).unwrap();
    assert!(report.complete);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, b"blocked");
    let report =
        remote::parse_deliver_output(&session.file(&root, b"a-file/below", b"x", None)).unwrap();
    assert_eq!(report.failed.len(), 0, "{report:?}");
    let report =
        remote::parse_deliver_output(&session.file(&root, b"main.rs/below", b"x", None)).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    // A cut inside the content or before the nonce line: nothing changes.
    for cut in [3, 700] {
        let before = std::fs::read(root.join("main.rs")).unwrap();
        let (mut session, _) = counting_session(scratch.path());
        let out = session.file(&root, b"main.rs", &[b'n'; 700], Some(cut));
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.truncated.is_some() && !report.complete,
            "cut {cut}: {report:?}"
        );
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), before);
        let leftovers = podloop_entries(&root);
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // It does not read on from a stream that lost its step.
        assert_eq!(session.child.wait().unwrap().code(), Some(5));
    }
    assert!(!root.join("PWNED").exists());
}

/// Each session shell, with `on_conflict = "skip"` (true) and `"overwrite"`.
const EVERY_SHELL_AND_MODE: [(Shell, bool); 6] = [
    (Shell::Host, true),
    (Shell::Busybox, true),
    (Shell::Agent, true),
    (Shell::Host, false),
    (Shell::Busybox, false),
    (Shell::Agent, false),
];

fn conflicts(
    report: &remote::DeliverReport,
) -> Vec<(Vec<u8>, remote::RemoteState, Option<u64>, bool)> {
    report
        .conflicts
        .iter()
        .map(|c| (c.path.clone(), c.now, c.size, c.skipped))
        .collect()
}

#[test]
fn a_save_over_a_file_changed_in_the_container_is_reported_and_follows_on_conflict() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app");
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let save = |session: &mut SessionShell, content: &[u8], held: Option<&[u8]>, skip| {
            let out = session.file_checked(
                &root,
                b"main.rs",
                content,
                None,
                Some(expectation(content, held, skip)),
            );
            let report = remote::parse_deliver_output(&out).unwrap();
            assert!(
                report.complete && report.failed.is_empty(),
                "{shell:?}: {report:?}"
            );
            report
        };
        let first = remote::parse_deliver_output(&session.file(&root, b"main.rs", b"one", None));
        assert!(first.unwrap().complete);
        // Unchanged since podloop wrote it: no report.
        let report = save(&mut session, b"two", Some(b"one"), false);
        assert!(report.conflicts.is_empty(), "{shell:?}: {report:?}");
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"two");

        // Edited in the container, on_conflict = overwrite: reported, replaced.
        std::fs::write(root.join("main.rs"), b"theirs").unwrap();
        let report = save(&mut session, b"three", Some(b"two"), false);
        assert_eq!(
            conflicts(&report),
            [(
                b"main.rs".to_vec(),
                remote::RemoteState::File(sha256(b"theirs")),
                Some(6),
                false
            )],
            "{shell:?}"
        );
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"three");

        // on_conflict = skip: reported, the container's copy stays, no temporary left.
        std::fs::write(root.join("main.rs"), b"theirs again").unwrap();
        let report = save(&mut session, b"four", Some(b"three"), true);
        assert_eq!(conflicts(&report).len(), 1, "{shell:?}: {report:?}");
        assert!(report.conflicts[0].skipped);
        assert_eq!(
            std::fs::read(root.join("main.rs")).unwrap(),
            b"theirs again"
        );
        let leftovers = podloop_entries(&root);
        assert!(leftovers.is_empty(), "{shell:?}: {leftovers:?}");

        // The container already holds what is sent: no conflict.
        std::fs::write(root.join("main.rs"), b"five").unwrap();
        let report = save(&mut session, b"five", Some(b"three"), true);
        assert!(report.conflicts.is_empty(), "{shell:?}: {report:?}");

        // Deleted in the container; created behind podloop's back.
        std::fs::remove_file(root.join("main.rs")).unwrap();
        let report = save(&mut session, b"six", Some(b"five"), false);
        assert_eq!(
            conflicts(&report),
            [(
                b"main.rs".to_vec(),
                remote::RemoteState::Absent,
                None,
                false
            )],
            "{shell:?}"
        );
        std::fs::write(root.join("main.rs"), b"x").unwrap();
        let report = save(&mut session, b"seven", None, true);
        assert_eq!(conflicts(&report).len(), 1, "{shell:?}: {report:?}");
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"x");
        drop(session.stdin);
        assert!(session.child.wait().unwrap().success());
    }
}

#[tokio::test]
async fn a_batch_checks_every_file_it_replaces_with_one_sha256sum() {
    for (shell, skip) in EVERY_SHELL_AND_MODE {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app");
        let names: [&[u8]; 5] = [
            b"plain.rs",
            b"with space",
            b"back\\slash",
            b"new\nline",
            b"sub/it's",
        ];
        std::fs::create_dir_all(root.join("sub")).unwrap();
        for name in names {
            std::fs::write(root.join(os(name)), b"ours").unwrap();
        }
        // Two edited in the container (one with a newline in its name).
        std::fs::write(root.join("with space"), b"theirs").unwrap();
        std::fs::write(root.join(os(b"new\nline")), b"theirs").unwrap();
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let mut local = Local {
            dir: scratch.path().to_path_buf(),
            entries: Vec::new(),
        };
        for name in names {
            local.put_checked(name, b"next", Some(b"ours"), skip);
        }
        local.put_checked(b"brand new", b"next", None, skip);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.complete && report.failed.is_empty(),
            "{shell:?}: {report:?}"
        );
        // With "skip" the container decides and says so; with "overwrite"
        // it only sends the hashes and podloop compares (as `ops` does).
        let mut found = if skip {
            assert!(report.hashes.is_none());
            conflicts(&report)
        } else {
            let checks = payload::plan(&local.entries).unwrap().checks;
            let hashes = report.hashes.clone().expect("an H record");
            remote::conflicts_from_hashes(&checks, &hashes)
                .into_iter()
                .map(|c| (c.path, c.now, c.size, c.skipped))
                .collect()
        };
        found.sort();
        let theirs = remote::RemoteState::File(sha256(b"theirs"));
        let size = if skip { Some(6) } else { None };
        assert_eq!(
            found,
            [
                (b"new\nline".to_vec(), theirs, size, skip),
                (b"with space".to_vec(), theirs, size, skip),
            ],
            "{shell:?}"
        );
        for name in [&b"plain.rs"[..], b"back\\slash", b"sub/it's", b"brand new"] {
            assert_eq!(
                std::fs::read(root.join(os(name))).unwrap(),
                b"next",
                "{shell:?}"
            );
        }
        let kept: &[u8] = if skip { b"theirs" } else { b"next" };
        assert_eq!(std::fs::read(root.join("with space")).unwrap(), kept);
        assert!(staging_folders(&root).is_empty());
    }
}

#[tokio::test]
async fn nothing_is_written_or_deleted_through_a_link_in_the_container() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app");
        let outside = scratch.path().join("etc");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), b"root").unwrap();
        // A folder of the mapping that is a link, in the container only.
        std::os::unix::fs::symlink(&outside, root.join("static")).unwrap();
        let mut session = SessionShell::start(shell, scratch.path(), None);

        let out = session.file(&root, b"static/passwd", b"owned", None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        assert_eq!(report.failed.len(), 1, "{shell:?}: {report:?}");
        assert!(
            report.failed[0].1.contains("`static` is a symbolic link"),
            "{report:?}"
        );

        let mut local = Local::new(scratch.path());
        local.put(b"static/new", b"owned", false);
        local.put(b"static/deeper/x", b"owned", false);
        local.delete(b"static/passwd");
        local.put(b"fine.rs", b"ok", false);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        let mut refused: Vec<Vec<u8>> = report.failed.iter().map(|f| f.0.clone()).collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                b"static/deeper/x".to_vec(),
                b"static/new".to_vec(),
                b"static/passwd".to_vec()
            ],
            "{shell:?}"
        );
        assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"root");
        let outside_now: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert_eq!(outside_now.len(), 1, "{shell:?}: {outside_now:?}");
        assert_eq!(std::fs::read(root.join("fine.rs")).unwrap(), b"ok");
    }
}

/// A tmpfs mounted at `dir` (tests run as root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A disk of `kib` KiB.
    fn small(dir: &Path, kib: u32) -> Tmpfs {
        Tmpfs::mount(dir, &format!("size={kib}k"))
    }

    /// A folder where nothing can be executed.
    fn noexec(dir: &Path) -> Tmpfs {
        Tmpfs::mount(dir, "size=1m,noexec")
    }

    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (root needed) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_applies_nothing_and_says_so() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app");
        let _disk = Tmpfs::small(&root, 256);
        std::fs::write(root.join("main.rs"), b"before").unwrap();
        std::fs::write(root.join("other.rs"), b"before").unwrap();
        std::fs::write(root.join("filler"), vec![0u8; 200 * 1024]).unwrap();
        let big = vec![b'x'; 100 * 1024];

        // The fast path: the write fails, the old file stays. More than a
        // pipe holds: a shell session ends before the test has sent it all.
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let out = session.file(&root, b"main.rs", &vec![b'x'; 1 << 20], None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(!report.complete, "{shell:?}: {report:?}");
        let (path, why) = report.write_failed.clone().expect("a W record");
        assert_eq!(path, b"main.rs");
        assert!(
            why.to_lowercase().contains("no space left"),
            "{shell:?}: {why}"
        );
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"before");
        let leftovers = podloop_entries(&root);
        assert!(leftovers.is_empty(), "{shell:?}: {leftovers:?}");
        let mut session = after_a_failed_write(shell, session, scratch.path());

        // A tar batch: nothing of it lands, no staging folder stays.
        let mut local = Local::new(scratch.path());
        local.put(b"main.rs", &big, false);
        local.put(b"other.rs", b"after", false);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(!report.complete, "{shell:?}: {report:?}");
        let why = report.extract_failed.clone().expect("an X record");
        assert!(
            why.to_lowercase().contains("no space left"),
            "{shell:?}: {why}"
        );
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"before");
        assert_eq!(std::fs::read(root.join("other.rs")).unwrap(), b"before");
        let leftovers = podloop_entries(&root);
        assert!(leftovers.is_empty(), "{shell:?}: {leftovers:?}");
        let mut session = after_a_failed_write(shell, session, scratch.path());

        // Space freed: the same batch lands.
        std::fs::remove_file(root.join("filler")).unwrap();
        let out = session.batch(&root, &local.entries, "").await;
        assert!(remote::parse_deliver_output(&out).unwrap().complete);
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), big);
    }
}

/// A shell session ends after a failed write (the rest of the batch is
/// still unread on its stdin): the next batch needs a new one. The agent
/// reads every batch to its end, so it goes on in step: a save elsewhere
/// proves it.
fn after_a_failed_write(shell: Shell, mut session: SessionShell, scratch: &Path) -> SessionShell {
    if shell != Shell::Agent {
        assert_ne!(session.child.wait().unwrap().code(), Some(0), "{shell:?}");
        return SessionShell::start(shell, scratch, None);
    }
    let elsewhere = scratch.join("elsewhere");
    let out = session.file(&elsewhere, b"probe", b"in step", None);
    let report = remote::parse_deliver_output(&out).unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(std::fs::read(elsewhere.join("probe")).unwrap(), b"in step");
    session
}

/// Sets a path's mtime `minutes` ago (the tests run as root: `touch -d`).
fn age(path: &Path, minutes: u32) {
    let status = Command::new("touch")
        .args(["-h", "-d", &format!("{minutes} minutes ago")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_manifest_hides_a_cut_batchs_leftovers_and_sweeps_old_ones() {
    for shell in [Shell::Host, Shell::Busybox] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("deep/er")).unwrap();
        std::fs::write(root.join("real.txt"), b"kept").unwrap();
        // A user's file that merely looks like podloop's: listed, never removed.
        std::fs::write(root.join(".podloop-notes"), b"mine").unwrap();
        age(&root.join(".podloop-notes"), 60);
        // A killed session's temporary and a cut batch's staging folder,
        // old: swept. A fresh one may belong to a batch in flight: kept.
        let old_tmp = root.join("deep/er/.podloop-0123456789abcdef");
        std::fs::write(&old_tmp, b"half").unwrap();
        age(&old_tmp, 20);
        let old_stage = root.join(".podloop-stage-00112233445566ff");
        std::fs::create_dir_all(old_stage.join("f")).unwrap();
        std::fs::write(old_stage.join("f/x"), b"x").unwrap();
        age(&old_stage, 20);
        let fresh_tmp = root.join(".podloop-fedcba9876543210");
        std::fs::write(&fresh_tmp, b"in flight").unwrap();

        let argv = manifest_argv(root.to_str().unwrap());
        let (code, stdout, stderr) = run(shell, scratch.path(), &argv, b"", &[]);
        assert_eq!(code, 0, "{shell:?}: {}", String::from_utf8_lossy(&stderr));
        let ManifestOutput::Files(files) = remote::parse_manifest_output(&stdout).unwrap() else {
            panic!("{shell:?}: expected files");
        };
        let mut listed: Vec<Vec<u8>> = files.into_iter().map(|f| f.path).collect();
        listed.sort();
        assert_eq!(
            listed,
            [b".podloop-notes".to_vec(), b"real.txt".to_vec()],
            "{shell:?}"
        );
        assert!(!old_tmp.exists() && !old_stage.exists(), "{shell:?}");
        assert!(fresh_tmp.exists(), "{shell:?}");
        assert_eq!(std::fs::read(root.join(".podloop-notes")).unwrap(), b"mine");
    }
}

#[tokio::test]
async fn a_delete_checks_the_file_it_removes_and_skip_keeps_a_changed_one() {
    for (shell, skip) in EVERY_SHELL_AND_MODE {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("untouched.rs"), b"ours").unwrap();
        std::fs::write(root.join("sub/edited it's.rs"), b"theirs").unwrap();
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let mut local = Local::new(scratch.path());
        local.delete_checked(b"untouched.rs", b"ours", skip);
        local.delete_checked(b"sub/edited it's.rs", b"ours", skip);
        local.delete_checked(b"already gone.rs", b"ours", skip);
        local.put(b"other.rs", b"new", false);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.complete && report.failed.is_empty(),
            "{shell:?}: {report:?}"
        );
        let found: Vec<(Vec<u8>, remote::RemoteState, bool)> = if skip {
            report
                .conflicts
                .iter()
                .map(|c| (c.path.clone(), c.now, c.skipped))
                .collect()
        } else {
            let checks = payload::plan(&local.entries).unwrap().checks;
            remote::conflicts_from_hashes(&checks, report.hashes.as_deref().unwrap())
                .into_iter()
                .map(|c| (c.path, c.now, c.skipped))
                .collect()
        };
        // Gone already is what a delete wants: no conflict.
        assert_eq!(
            found,
            [(
                b"sub/edited it's.rs".to_vec(),
                remote::RemoteState::File(sha256(b"theirs")),
                skip
            )],
            "{shell:?}"
        );
        assert!(!root.join("untouched.rs").exists(), "{shell:?}");
        assert_eq!(
            root.join("sub/edited it's.rs").exists(),
            skip,
            "{shell:?}: skip keeps the changed file, overwrite deletes it"
        );
        assert_eq!(std::fs::read(root.join("other.rs")).unwrap(), b"new");
        assert!(staging_folders(&root).is_empty());
    }
}

/// A session under dash and GNU tools whose PATH logs every process it
/// starts (see [`counting_bin`]), and that log.
fn counting_session(scratch: &Path) -> (SessionShell, PathBuf) {
    let log = scratch.join("spawned");
    let bin = counting_bin(scratch, &log);
    (SessionShell::start(Shell::Host, scratch, Some(&bin)), log)
}

/// The tools logged in `log` by [`counting_bin`], sorted.
fn spawned_tools(log: &Path) -> Vec<String> {
    let mut tools: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    tools.sort();
    tools
}

#[tokio::test]
async fn a_one_file_save_through_the_agent_starts_no_process_and_a_tar_batch_still_works() {
    let scratch = tempfile::tempdir().unwrap();
    let (mut session, log) = counting_session(scratch.path());
    let root = scratch.path().join("app");
    assert_eq!(session.upgrade(), Upgrade::Started);
    // The upgrade's own cost, once per session (the probe runs by path).
    assert_eq!(spawned_tools(&log), ["chmod", "dd", "uname"]);

    let _ = std::fs::remove_file(&log);
    let deep = b"new $(dir)/it's\nodd.rs";
    let report = remote::parse_deliver_output(&session.file(&root, deep, b"one\n", None)).unwrap();
    assert!(report.complete && report.failed.is_empty(), "{report:?}");
    assert_eq!(std::fs::read(root.join(os(deep))).unwrap(), b"one\n");
    assert_eq!(
        spawned_tools(&log),
        [] as [&str; 0],
        "root and folders made"
    );
    let mut held = b"one\n".to_vec();
    std::fs::write(root.join("main.rs"), &held).unwrap();
    for i in 0..3 {
        // Checked saves: the agent hashes the old file itself.
        let content = format!("version {i}\n\n").into_bytes();
        let expect = expectation(&content, Some(&held), false);
        let out = session.file_checked(&root, b"main.rs", &content, None, Some(expect));
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete && report.failed.is_empty(), "{report:?}");
        assert!(report.conflicts.is_empty(), "{report:?}");
        assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), content);
        let meta = std::fs::metadata(root.join("main.rs")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(spawned_tools(&log), [] as [&str; 0], "save {i}");
        held = content;
    }
    // A conflict is found and the container's copy kept, still without a process.
    std::fs::write(root.join("main.rs"), b"theirs").unwrap();
    let expect = expectation(b"mine", Some(&held), true);
    let out = session.file_checked(&root, b"main.rs", b"mine", None, Some(expect));
    let report = remote::parse_deliver_output(&out).unwrap();
    assert_eq!(
        conflicts(&report),
        [(
            b"main.rs".to_vec(),
            remote::RemoteState::File(sha256(b"theirs")),
            Some(6),
            true
        )]
    );
    assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"theirs");
    assert_eq!(spawned_tools(&log), [] as [&str; 0]);
    assert!(
        podloop_entries(&root).is_empty(),
        "{:?}",
        podloop_entries(&root)
    );

    // A tar batch goes through the deliver script under sh.
    let mut local = Local::new(scratch.path());
    local.put(b"main.rs", b"from tar", false);
    local.put(b"run.sh", b"#!/bin/sh\n", true);
    local.link(b"link", b"run.sh");
    local.delete(b"new $(dir)");
    let out = session.batch(&root, &local.entries, "echo reloaded").await;
    let report = remote::parse_deliver_output(&out).unwrap();
    assert!(report.complete && report.failed.is_empty(), "{report:?}");
    assert_eq!(report.reload_output.as_deref(), Some("reloaded"));
    assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"from tar");
    let meta = std::fs::metadata(root.join("run.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        Path::new("run.sh")
    );
    assert!(!root.join("new $(dir)").exists());
    let tools = spawned_tools(&log);
    assert!(
        tools.contains(&"sh".to_string()) && tools.contains(&"tar".to_string()),
        "{tools:?}"
    );
    assert!(staging_folders(&root).is_empty());

    // Still in step after a batch: a save is process-free again.
    let _ = std::fs::remove_file(&log);
    let report = remote::parse_deliver_output(&session.file(&root, b"main.rs", b"last", None));
    assert!(report.unwrap().complete);
    assert_eq!(std::fs::read(root.join("main.rs")).unwrap(), b"last");
    assert_eq!(spawned_tools(&log), [] as [&str; 0]);
    assert!(!scratch.path().join("cwd/PWNED").exists() && !root.join("PWNED").exists());

    // The end of stdin is the end of the session, a clean one.
    drop(session.stdin);
    assert_eq!(session.child.wait().unwrap().code(), Some(0));
}

#[test]
fn after_the_upgrade_the_agent_runs_in_the_shells_place_and_nothing_is_left_in_tmpdir() {
    let scratch = tempfile::tempdir().unwrap();
    let mut session = SessionShell::start(Shell::Busybox, scratch.path(), None);
    let busybox = std::fs::canonicalize("/bin/busybox").unwrap();
    assert_eq!(Path::new(&session.exe()), busybox);
    assert_eq!(session.upgrade(), Upgrade::Started);
    // The same process, now the agent, whose file is already gone.
    let exe = session.exe();
    assert!(
        exe.contains("/.podloop-agent-") && exe.ends_with(" (deleted)"),
        "{exe}"
    );
    assert_eq!(names_in(&tmp_dir(scratch.path())), [] as [&str; 0]);
    let root = scratch.path().join("app");
    let report = remote::parse_deliver_output(&session.file(&root, b"a", b"a", None)).unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"a");
}

#[tokio::test]
async fn the_upgrade_is_declined_without_x86_64_or_on_a_noexec_tmpdir_and_the_shell_goes_on() {
    let scratch = tempfile::tempdir().unwrap();
    let fake = scratch.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("uname"), "#!/bin/sh\necho aarch64\n").unwrap();
    std::fs::set_permissions(fake.join("uname"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let arm_path = format!("{}:/usr/bin:/bin", fake.display());

    // (a busybox shell runs its own `uname` whatever PATH says: dash here.)
    let cases: [(&str, Shell, Option<&Path>, &str); 2] = [
        (
            "aarch64",
            Shell::Host,
            Some(Path::new(&arm_path)),
            "not x86_64",
        ),
        ("noexec", Shell::Busybox, None, "noexec"),
    ];
    for (case, shell, path, why_contains) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let tmp = tmp_dir(scratch.path());
        let _noexec = (case == "noexec").then(|| Tmpfs::noexec(&tmp));
        let mut session = SessionShell::start(shell, scratch.path(), path);
        let shell_exe = session.exe();
        match session.upgrade() {
            Upgrade::Declined(why) => assert!(why.contains(why_contains), "{case}: {why}"),
            Upgrade::Started => panic!("{case}: the agent started"),
        }
        assert_eq!(session.dialect, Dialect::Shell);
        assert_eq!(session.exe(), shell_exe, "{case}: still the shell");
        assert_eq!(names_in(&tmp), [] as [&str; 0], "{case}");

        // The shell session reads on in step: a save, a batch, a save.
        let root = scratch.path().join("app");
        let report = remote::parse_deliver_output(&session.file(&root, b"a b", b"1", None));
        assert!(report.unwrap().complete, "{case}");
        let mut local = Local::new(scratch.path());
        local.put(b"a b", b"2", false);
        local.put(b"sub/c", b"3", false);
        let out = session.batch(&root, &local.entries, "").await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.complete && report.failed.is_empty(),
            "{case}: {report:?}"
        );
        let report = remote::parse_deliver_output(&session.file(&root, b"sub/c", b"4", None));
        assert!(report.unwrap().complete, "{case}");
        assert_eq!(std::fs::read(root.join("a b")).unwrap(), b"2");
        assert_eq!(std::fs::read(root.join("sub/c")).unwrap(), b"4");
        drop(session.stdin);
        assert_eq!(session.child.wait().unwrap().code(), Some(0), "{case}");
    }
}

#[tokio::test]
async fn a_reload_reports_its_output_and_exit_code_alike_in_every_session() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        let mut session = SessionShell::start(shell, scratch.path(), None);
        let failing = "echo out; echo boom >&2; exit 7";
        let out = session.file_request(&root, b"a", b"a", None, None, failing);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"a");
        let from_file = (report.reload_output, report.reload_exit);

        let mut local = Local::new(scratch.path());
        local.put(b"b", b"b", false);
        let passing = "printf 'it'\\''s\\n\\n\\n'; pwd >/dev/null";
        let out = session.batch(&root, &local.entries, passing).await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(report.complete, "{shell:?}: {report:?}");
        let from_batch = (report.reload_output, report.reload_exit);
        assert_eq!(
            from_file,
            (Some("out\nboom".to_string()), Some(7)),
            "{shell:?}"
        );
        assert_eq!(from_batch, (Some("it's".to_string()), Some(0)), "{shell:?}");
        // A reload that cannot be found is the shell's 127, with its message.
        let out = session.file_request(&root, b"a", b"c", None, None, "no-such-reload");
        let report = remote::parse_deliver_output(&out).unwrap();
        assert_eq!(report.reload_exit, Some(127), "{shell:?}: {report:?}");
        let output = report.reload_output.unwrap_or_default();
        assert!(output.contains("no-such-reload"), "{shell:?}: {output}");
    }
}

#[tokio::test]
async fn a_cut_stream_applies_nothing_in_any_session() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a"), b"old").unwrap();
        std::fs::write(root.join("doomed"), b"keep me").unwrap();
        let unchanged = |what: &str| {
            assert_eq!(names_in(&root), ["a", "doomed"], "{shell:?} {what}");
            assert_eq!(
                std::fs::read(root.join("a")).unwrap(),
                b"old",
                "{shell:?} {what}"
            );
        };
        // Inside the content, and just before the nonce line.
        for cut in [3, 700] {
            let mut session = SessionShell::start(shell, scratch.path(), None);
            let out = session.file(&root, b"a", &[b'n'; 700], Some(cut));
            let report = remote::parse_deliver_output(&out).unwrap();
            assert!(
                report.truncated.is_some() && !report.complete,
                "{shell:?} cut {cut}: {report:?}"
            );
            unchanged(&format!("file cut at {cut}"));
            // Nothing more is read from a stream that lost its step.
            assert_eq!(session.child.wait().unwrap().code(), Some(5), "{shell:?}");
        }
        let mut local = Local::new(scratch.path());
        local.put(b"a", &vec![b'n'; 100_000], false);
        local.put(b"b", b"b", false);
        local.delete(b"doomed");
        let len = payload_bytes(&local.entries).await.1.len();
        // Inside the delete list, inside a file, just before the end marker.
        for cut in [100usize, 700, 50_000, len - 2000] {
            let mut session = SessionShell::start(shell, scratch.path(), None);
            let out = session
                .batch_cut(&root, &local.entries, "touch RELOADED", Some(cut))
                .await;
            let report = remote::parse_deliver_output(&out).unwrap();
            assert!(!report.complete, "{shell:?} cut at {cut}");
            // tar itself may notice the cut first ("short read").
            assert!(
                report.truncated.is_some() || report.extract_failed.is_some(),
                "{shell:?} cut at {cut}: {report:?}"
            );
            unchanged(&format!("batch cut at {cut}"));
            let code = session.child.wait().unwrap().code();
            match shell {
                // The agent knows the cut itself: it counted the bytes.
                Shell::Agent => assert_eq!(code, Some(5), "cut at {cut}"),
                _ => assert!(
                    matches!(code, Some(5 | 6)),
                    "{shell:?} cut at {cut}: {code:?}"
                ),
            }
        }
    }
}

/// `prefix` + `name` for a flat name, `prefix` + `name` + `/` + `name` when
/// `prefix` ends without a slash (a folder named after the file).
fn nested(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = prefix.to_vec();
    path.extend_from_slice(name);
    if !prefix.ends_with(b"/") {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    path
}

#[tokio::test]
async fn hostile_names_arrive_intact_in_every_session() {
    let mut names = hostile_names();
    names.push(b"back\\slash");
    names.push(b"trailing newline\n");
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("app $(touch PWNED)");
        let mut session = SessionShell::start(shell, scratch.path(), None);
        // One by one on the fast path (also in a folder of their own), then
        // all at once in a tar batch.
        for name in &names {
            for path in [name.to_vec(), nested(b"dir ", name)] {
                let out = session.file(&root, &path, &path, None);
                let report = remote::parse_deliver_output(&out).unwrap();
                assert!(
                    report.complete && report.failed.is_empty(),
                    "{shell:?}: {report:?}"
                );
            }
        }
        let mut local = Local::new(scratch.path());
        for name in &names {
            local.put(&nested(b"tar $(x)/", name), name, false);
        }
        let out = session
            .batch(&root, &local.entries, "echo \"it's\" '$(x)'")
            .await;
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.complete && report.failed.is_empty(),
            "{shell:?}: {report:?}"
        );
        assert_eq!(
            report.reload_output.as_deref(),
            Some("it's $(x)"),
            "{shell:?}"
        );
        for name in &names {
            let shown = String::from_utf8_lossy(name);
            for path in [name.to_vec(), nested(b"dir ", name)] {
                let landed = std::fs::read(root.join(os(&path))).unwrap();
                assert_eq!(landed, path, "{shell:?} {shown:?}");
            }
            let in_tar = std::fs::read(root.join(os(&nested(b"tar $(x)/", name)))).unwrap();
            assert_eq!(in_tar, *name, "{shell:?} {shown:?}");
        }
        assert!(podloop_entries(&root).is_empty(), "{shell:?}");
        for dir in [
            scratch.path().to_path_buf(),
            scratch.path().join("cwd"),
            root.clone(),
        ] {
            assert!(!dir.join("PWNED").exists(), "{shell:?}: {}", dir.display());
        }
    }
}

#[tokio::test]
async fn a_path_too_long_for_its_temporary_file_is_refused_and_the_session_stays_in_step() {
    for shell in SESSION_SHELLS {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        let mut session = SessionShell::start(shell, scratch.path(), None);
        // Folders up to 4,080 bytes with the root, then `f.txt`: the file's
        // path fits in PATH_MAX (4,095 bytes), `.podloop-NONCE` beside it
        // (26 bytes) does not.
        let folders_len = 4080 - root.as_os_str().len() - 1;
        let mut long = Vec::new();
        while long.len() < folders_len {
            let segment = (folders_len - long.len() - 1).min(200);
            long.extend(std::iter::repeat_n(b'd', segment));
            long.push(b'/');
        }
        long.extend_from_slice(b"f.txt");
        let out = session.file(&root, &long, b"long", None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.staging_failed.is_some() || report.failed.len() == 1,
            "{shell:?}: {report:?}"
        );
        // The next save on the same session lands: stdin is still in step.
        let out = session.file(&root, b"after.txt", b"after", None);
        let report = remote::parse_deliver_output(&out).unwrap();
        assert!(
            report.complete && report.failed.is_empty(),
            "{shell:?}: {report:?}"
        );
        assert_eq!(std::fs::read(root.join("after.txt")).unwrap(), b"after");
    }
}
