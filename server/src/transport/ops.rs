//! The two things podloop does in a container, each one exec: apply a batch,
//! and hash what is there.

use super::client::ContextClient;
use super::error::{write_failure_hint, TransportError};
use super::exec::{ContainerRef, Exec, ExecOutput, ExitStatus};
use super::payload::{self, Upload};
use super::remote::{self, DeliverReport, ManifestOutput, RemoteConflict, RemoteFile};

/// How long to wait for the status of a command that stopped reading stdin.
const EARLY_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How much of the reload command's output is reported.
const RELOAD_TAIL_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverOutcome {
    pub bytes_sent: u64,
    pub files: usize,
    pub deletes: usize,
    /// Exit code and output tail of `reload`, when it ran.
    pub reload: Option<(i32, String)>,
    /// Files the container changed since podloop wrote them.
    pub conflicts: Vec<RemoteConflict>,
}

pub fn deliver_argv(root: &str, plan: &payload::Payload, reload: Option<&str>) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        remote::deliver_script(),
        "podloop".into(),
        root.into(),
        plan.len.to_string(),
        reload.unwrap_or("").into(),
        plan.nonce.clone(),
    ]
}

pub async fn deliver(
    client: &ContextClient,
    target: &ContainerRef,
    upload: Upload,
) -> Result<DeliverOutcome, TransportError> {
    let root = payload::check_root(&upload.remote_root)?;
    let plan = payload::plan(&upload.entries)?;
    let argv = deliver_argv(&root, &plan, upload.reload.as_deref());
    let mut exec = Exec::open(client, target, argv).await?;
    if let Err(e) = payload::stream(&plan.pieces, &mut exec).await {
        if !matches!(e, TransportError::StreamCut { .. }) {
            exec.abort();
            return Err(e);
        }
        // The command may have ended early on purpose; its own report is the
        // better error. A batch is never called delivered from here.
        let early = exec.output_after_failure(EARLY_EXIT_WAIT).await;
        return match early.map(|out| interpret_deliver(target, &root, plan.len, &plan, out)) {
            Some(Err(specific)) if !matches!(specific, TransportError::StreamCut { .. }) => {
                Err(specific)
            }
            _ => Err(e),
        };
    }
    let output = exec.finish().await?;
    interpret_deliver(target, &root, plan.len, &plan, output)
}

pub(crate) fn interpret_deliver(
    target: &ContainerRef,
    root: &str,
    bytes_sent: u64,
    plan: &payload::Payload,
    output: ExecOutput,
) -> Result<DeliverOutcome, TransportError> {
    let stderr = String::from_utf8_lossy(&output.stderr_tail).to_string();
    let code = match &output.status {
        ExitStatus::Code(code) => *code,
        ExitStatus::Failure { reason, message } => {
            return Err(start_failure(target, reason, message));
        }
    };
    if (code == 126 || code == 127) && output.stdout.is_empty() {
        return Err(TransportError::NoShell {
            pod: target.pod.clone(),
            container: target.container.clone(),
            code,
        });
    }
    let report: DeliverReport = remote::parse_deliver_output(&output.stdout).map_err(|detail| {
        TransportError::Protocol {
            pod: target.pod.clone(),
            container: target.container.clone(),
            detail,
        }
    })?;
    if let Some(tool) = report.missing_tool {
        return Err(TransportError::MissingTool {
            pod: target.pod.clone(),
            container: target.container.clone(),
            tool,
        });
    }
    let write_failure = report
        .write_failed
        .map(|(path, why)| format!("writing `{}`: {why}", String::from_utf8_lossy(&path)));
    if let Some(detail) = report
        .staging_failed
        .or(report.extract_failed)
        .or(write_failure)
    {
        if detail.to_ascii_lowercase().contains("no space left") {
            return Err(TransportError::NoSpace {
                pod: target.pod.clone(),
                container: target.container.clone(),
                root: root.to_string(),
                detail,
            });
        }
        return Err(TransportError::RemoteWrite {
            pod: target.pod.clone(),
            container: target.container.clone(),
            root: root.to_string(),
            hint: write_failure_hint(&detail),
            detail,
        });
    }
    if let Some(detail) = report.truncated {
        return Err(TransportError::StreamCut {
            pod: target.pod.clone(),
            detail: format!("the container received a truncated stream: {detail}"),
        });
    }
    if !report.complete {
        return Err(TransportError::ExecFailed {
            pod: target.pod.clone(),
            container: target.container.clone(),
            detail: format!(
                "the deliver script stopped with exit code {code} before finishing: {}",
                tail(&stderr, 500)
            ),
        });
    }
    let mut conflicts = report.conflicts;
    if let Some(hashes) = &report.hashes {
        conflicts.extend(remote::conflicts_from_hashes(&plan.checks, hashes));
    }
    let mut failed = plan.local_failures.clone();
    failed.extend(report.failed);
    if !failed.is_empty() {
        let total = plan.files + plan.deletes + plan.local_failures.len();
        let first = &failed[0];
        let hint = write_failure_hint(&first.1);
        let more = if failed.len() > 1 {
            format!(" (and {} more)", failed.len() - 1)
        } else {
            String::new()
        };
        return Err(TransportError::Partial {
            message: format!(
                "{} of {total} entries were not applied in pod `{}` container `{}`: `{}/{}`: {}{hint}{more}",
                failed.len(),
                target.pod,
                target.container,
                root,
                String::from_utf8_lossy(&first.0),
                first.1,
            ),
            failed,
            conflicts,
        });
    }
    Ok(DeliverOutcome {
        bytes_sent,
        files: plan.files,
        deletes: plan.deletes,
        reload: report.reload_exit.map(|code| {
            let output = report.reload_output.unwrap_or_default();
            (code, tail(&output, RELOAD_TAIL_CHARS))
        }),
        conflicts,
    })
}

fn start_failure(target: &ContainerRef, reason: &str, message: &str) -> TransportError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("executable file not found")
        || lower.contains("no such file or directory")
        || lower.contains("not found in $path")
    {
        return TransportError::NoShell {
            pod: target.pod.clone(),
            container: target.container.clone(),
            code: 127,
        };
    }
    TransportError::ExecFailed {
        pod: target.pod.clone(),
        container: target.container.clone(),
        detail: format!("{reason}: {message}"),
    }
}

fn tail(text: &str, chars: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(chars)).collect()
}

pub fn manifest_argv(root: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        remote::MANIFEST_SCRIPT.into(),
        "podloop".into(),
        root.into(),
    ]
}

pub async fn manifest(
    client: &ContextClient,
    target: &ContainerRef,
    remote_root: &[u8],
) -> Result<Vec<RemoteFile>, TransportError> {
    let root = payload::check_root(remote_root)?;
    let exec = Exec::open(client, target, manifest_argv(&root)).await?;
    let output = exec.finish().await?;
    interpret_manifest(target, output)
}

fn interpret_manifest(
    target: &ContainerRef,
    output: ExecOutput,
) -> Result<Vec<RemoteFile>, TransportError> {
    match &output.status {
        ExitStatus::Failure { reason, message } => {
            return Err(start_failure(target, reason, message))
        }
        ExitStatus::Code(code @ (126 | 127)) if output.stdout.is_empty() => {
            return Err(TransportError::NoShell {
                pod: target.pod.clone(),
                container: target.container.clone(),
                code: *code,
            })
        }
        ExitStatus::Code(_) => {}
    }
    let parsed = remote::parse_manifest_output(&output.stdout).map_err(|detail| {
        TransportError::Protocol {
            pod: target.pod.clone(),
            container: target.container.clone(),
            detail,
        }
    })?;
    let files = match parsed {
        ManifestOutput::NoRoot => Vec::new(),
        ManifestOutput::MissingTool(tool) => {
            return Err(TransportError::MissingTool {
                pod: target.pod.clone(),
                container: target.container.clone(),
                tool,
            })
        }
        ManifestOutput::Files(files) => files,
    };
    if let ExitStatus::Code(code) = output.status {
        if code != 0 {
            return Err(TransportError::Protocol {
                pod: target.pod.clone(),
                container: target.container.clone(),
                detail: format!(
                    "hashing files exited with {code}: {}",
                    tail(&String::from_utf8_lossy(&output.stderr_tail), 500)
                ),
            });
        }
    }
    Ok(files)
}
