//! `podloop doctor`: every precondition of a sync, checked in the order a
//! newcomer meets them, each failure with its fix.
//!
//! Reuses the CLI's config loading and the transport's kubeconfig, pod
//! resolution and exec; the only thing of its own is a read-only probe
//! script (a real delivery would create the remote folder).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::ClusterArgs;
use crate::engine::config::Config;
use crate::engine::PodSelector;
use crate::transport::agent::Upgrade;
use crate::transport::error::write_failure_hint;
use crate::transport::exec::{Exec, ExitStatus};
use crate::transport::remote::CONTAINER_TOOLS;
use crate::transport::session::Session;
use crate::transport::{
    pods, ContainerRef, ContextClient, KubeOptions, PodMatch, PodQuery, TransportError,
};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Give up on any single check after this many seconds.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

/// What the checks run against: the CLI fills it from flags and
/// `podloop.toml`, the language server from its workspace and settings.
#[derive(Debug, Clone)]
pub struct DoctorInput {
    /// The loaded config, or why it could not be loaded.
    pub config: Result<Config, String>,
    /// Explicit kubeconfig; `None` means `$KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Overrides the config's `context`.
    pub context: Option<String>,
    pub timeout: Duration,
}

impl DoctorInput {
    /// The language server's view: `file` as the config, the kubeconfig from
    /// `$KUBECONFIG` or `~/.kube/config`, the config's own context.
    pub fn for_config_file(file: &std::path::Path) -> DoctorInput {
        DoctorInput {
            config: crate::engine::config::load(file).map_err(|e| e.to_string()),
            kubeconfig: None,
            context: None,
            timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail {
        fix: String,
    },
    /// Not run because an earlier check failed.
    Skipped,
    /// Worth knowing, not a fault: podloop works, differently.
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub outcome: Outcome,
    pub text: String,
}

impl Check {
    fn pass(text: impl Into<String>) -> Check {
        Check {
            outcome: Outcome::Pass,
            text: text.into(),
        }
    }

    fn fail(text: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            outcome: Outcome::Fail { fix: fix.into() },
            text: text.into(),
        }
    }

    fn note(text: impl Into<String>) -> Check {
        Check {
            outcome: Outcome::Note,
            text: text.into(),
        }
    }

    fn skipped(text: impl Into<String>) -> Check {
        Check {
            outcome: Outcome::Skipped,
            text: text.into(),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }

    /// One line, or two with the fix: how the CLI prints it and the
    /// language server logs it.
    pub fn render(&self) -> String {
        match &self.outcome {
            Outcome::Pass => format!("✓ {}", self.text),
            Outcome::Fail { fix } => format!("✗ {}\n    fix: {fix}", self.text),
            Outcome::Skipped => format!("- {} (skipped)", self.text),
            Outcome::Note => format!("· {}", self.text),
        }
    }
}

/// `podloop doctor`: prints each check as it completes; exit 1 on a failure.
pub async fn doctor(args: DoctorArgs) -> i32 {
    let input = DoctorInput {
        config: super::load_config(&args.cluster).map_err(|e| e.to_string()),
        kubeconfig: args.cluster.kubeconfig.clone(),
        context: args.cluster.context.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let mut failures = 0;
    run_checks(input, &mut |check| {
        if check.failed() {
            failures += 1;
        }
        println!("{}", check.render());
    })
    .await;
    if failures == 0 {
        println!("\nall checks passed: saves will reach every container above");
        0
    } else {
        println!("\n{failures} check(s) failed");
        1
    }
}

/// Runs every check in order, handing each result to `report` as soon as
/// it is known. Later checks that depend on a failed one are skipped.
pub async fn run_checks(input: DoctorInput, report: &mut (dyn FnMut(Check) + Send)) {
    let config = match input.config {
        Ok(c) => {
            let names: Vec<&str> = c.mappings.iter().map(|m| m.name.as_str()).collect();
            report(Check::pass(format!(
                "config {}: {} mapping(s) ({})",
                c.file.display(),
                c.mappings.len(),
                names.join(", ")
            )));
            c
        }
        Err(e) => {
            report(Check::fail(
                format!("config: {e}"),
                "create podloop.toml in the workspace (see docs/config.md) or pass --config FILE",
            ));
            report(Check::skipped(
                "kubeconfig, cluster, RBAC, pods and containers",
            ));
            return;
        }
    };
    let context = input.context.clone().or(config.context.clone());
    let connector = match crate::transport::Connector::new(KubeOptions {
        kubeconfig: input.kubeconfig.clone(),
        context: context.clone(),
    }) {
        Ok(c) => c,
        Err(e) => {
            report(Check::fail(
                format!("kubeconfig: {e}"),
                "point podloop at a kubeconfig with --kubeconfig FILE or KUBECONFIG=FILE; list its contexts with `kubectl config get-contexts`",
            ));
            report(Check::skipped("cluster, RBAC, pods and containers"));
            return;
        }
    };
    let client = match connector.client(None).await {
        Ok(c) => c,
        Err(e) => {
            report(Check::fail(
                format!("kubeconfig: {e}"),
                "fix the context's cluster and user entries; `kubectl --context NAME get pods` must work",
            ));
            report(Check::skipped("cluster, RBAC, pods and containers"));
            return;
        }
    };
    report(Check::pass(format!(
        "kubeconfig: context `{}` exists (server {}, namespace `{}`)",
        client.context, client.server, client.namespace
    )));

    match within(input.timeout, client.client.apiserver_version()).await {
        Ok(Ok(info)) => report(Check::pass(format!(
            "cluster reachable: Kubernetes {} at {}",
            info.git_version, client.server
        ))),
        outcome => {
            let problem = match outcome {
                Ok(Err(e)) => client.map_error(e, "get", "version", "", None).to_string(),
                _ => format!(
                    "cluster unreachable at {}: no answer within {:?}",
                    client.server, input.timeout
                ),
            };
            report(Check::fail(
                problem,
                "start the cluster (or the VPN / port-forward in front of it), or fix `server` in the kubeconfig; `kubectl cluster-info` must answer",
            ));
            report(Check::skipped("RBAC, pods and containers"));
            return;
        }
    }

    let namespace_of = |m: &crate::engine::config::MappingConfig| {
        m.namespace
            .clone()
            .or(config.namespace.clone())
            .unwrap_or_else(|| client.namespace.clone())
    };
    let namespaces: BTreeSet<String> = config.mappings.iter().map(&namespace_of).collect();
    let mut exec_allowed = BTreeSet::new();
    for ns in &namespaces {
        let check = rbac(&client, ns, input.timeout).await;
        if check.exec_allowed {
            exec_allowed.insert(ns.clone());
        }
        report(check.check);
    }

    for mapping in &config.mappings {
        let namespace = namespace_of(mapping);
        let query = PodQuery {
            namespace: namespace.clone(),
            pods: match &mapping.selector {
                PodSelector::Labels(s) => PodMatch::Labels(s.clone()),
                PodSelector::Name(n) => PodMatch::Name(n.clone()),
            },
            container: mapping.container.clone(),
            all_replicas: true,
        };
        let what = match &mapping.selector {
            PodSelector::Labels(s) => format!("selector `{s}`"),
            PodSelector::Name(n) => format!("pod `{n}`"),
        };
        let targets = match within(input.timeout, pods::resolve(&client, &query)).await {
            Ok(Ok(targets)) => targets,
            outcome => {
                let problem = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("listing pods timed out after {:?}", input.timeout),
                };
                report(Check::fail(
                    format!("mapping `{}`: {problem}", mapping.name),
                    format!(
                        "make {what} in podloop.toml match your pods (`kubectl get pods -n {namespace} --show-labels`), and wait until they are Ready"
                    ),
                ));
                report(Check::skipped(format!(
                    "mapping `{}`: container tools, remote folder, reload",
                    mapping.name
                )));
                continue;
            }
        };
        let names: Vec<String> = targets
            .iter()
            .map(|t| format!("{}/{}", t.pod, t.container))
            .collect();
        report(Check::pass(format!(
            "mapping `{}`: {what} matches {} Ready pod(s) in `{namespace}`: {}",
            mapping.name,
            targets.len(),
            names.join(", ")
        )));
        if !exec_allowed.contains(&namespace) {
            report(Check::skipped(format!(
                "mapping `{}`: container tools, remote folder, reload (exec is not allowed)",
                mapping.name
            )));
            continue;
        }
        for target in targets {
            let container = ContainerRef {
                namespace: target.namespace.clone(),
                pod: target.pod.clone(),
                container: target.container.clone(),
            };
            for check in probe_container(
                &client,
                &container,
                &mapping.remote,
                mapping.reload.as_deref(),
                input.timeout,
            )
            .await
            {
                report(check);
            }
            report(agent_check(&client, &container, mapping.agent, input.timeout).await);
        }
    }
}

/// Whether saves into `target` go through podloop's agent or the shell.
async fn agent_check(
    client: &ContextClient,
    target: &ContainerRef,
    enabled: bool,
    timeout: Duration,
) -> Check {
    let at = format!("{}/{}", target.pod, target.container);
    if !enabled {
        return Check::note(format!(
            "{at}: `agent = false`: saves go through `sh` (a few processes per save in the container)"
        ));
    }
    match within(timeout, Session::check_agent(client, target)).await {
        Ok(Ok(Upgrade::Started)) => Check::pass(format!(
            "{at}: podloop's agent runs in the container: a save starts no process there"
        )),
        Ok(Ok(Upgrade::Declined(why))) => Check::note(format!(
            "{at}: podloop's agent cannot run here ({why}): saves go through `sh`, a few processes per save"
        )),
        Ok(Err(e)) => Check::note(format!(
            "{at}: could not try podloop's agent ({e}): saves go through `sh`"
        )),
        Err(_) => Check::note(format!(
            "{at}: podloop's agent gave no answer within {timeout:?}: saves go through `sh`"
        )),
    }
}

async fn within<F: std::future::Future>(
    timeout: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(timeout, future).await
}

struct RbacCheck {
    check: Check,
    exec_allowed: bool,
}

/// The three permissions a sync needs, asked with SelfSubjectAccessReview.
async fn rbac(client: &ContextClient, namespace: &str, timeout: Duration) -> RbacCheck {
    let needed = [
        ("list", "pods", None),
        ("watch", "pods", None),
        ("create", "pods", Some("exec")),
    ];
    let mut denied = Vec::new();
    let mut exec_allowed = true;
    for (verb, resource, subresource) in needed {
        let name = match subresource {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_string(),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(verb.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: subresource.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client.client.clone());
        let answer = within(timeout, api.create(&PostParams::default(), &review)).await;
        let allowed = match answer {
            Ok(Ok(r)) => match r.status {
                Some(s) if s.allowed => Ok(()),
                Some(s) => Err(s.reason.unwrap_or_else(|| "denied".into())),
                None => Err("the review came back without a status".into()),
            },
            Ok(Err(e)) => Err(format!(
                "cannot ask: {}",
                client.map_error(e, "create", "selfsubjectaccessreviews", namespace, None)
            )),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if let Err(reason) = allowed {
            if subresource.is_some() {
                exec_allowed = false;
            }
            denied.push((verb, name, reason));
        }
    }
    let check = if denied.is_empty() {
        Check::pass(format!(
            "RBAC in `{namespace}`: list and watch pods, create pods/exec"
        ))
    } else {
        let listed: Vec<String> = denied
            .iter()
            .map(|(verb, name, reason)| format!("`{verb} {name}` ({reason})"))
            .collect();
        let rules: Vec<String> = denied
            .iter()
            .map(|(verb, name, _)| format!("resources: [\"{name}\"], verbs: [\"{verb}\"]"))
            .collect();
        Check::fail(
            format!("RBAC in `{namespace}`: not allowed to {}", listed.join(", ")),
            format!(
                "bind your user to a Role in `{namespace}` with the rules {{apiGroups: [\"\"], {}}}; check with `kubectl auth can-i create pods/exec -n {namespace}`",
                rules.join("}, {apiGroups: [\"\"], ")
            ),
        )
    };
    RbacCheck {
        check,
        exec_allowed,
    }
}

/// Read-only: reports missing tools, whether the remote folder (or the
/// nearest existing parent podloop would create it under) is writable and
/// how much room it has (`df`, when the image has it), and whether the
/// reload command's program exists. Records are NUL-separated
/// so that any folder name comes back intact.
const PROBE_SCRIPT: &str = r#"
root=$1 reload=$2 nonce=$3 tools=$4
for tool in $tools; do
  command -v "$tool" >/dev/null 2>&1 || printf 'M\0%s\0' "$tool"
done
command -v dd >/dev/null 2>&1 || command -v head >/dev/null 2>&1 || printf 'M\0dd\0'
dir=$root
while [ ! -d "$dir" ]; do dir=${dir%/*}; [ -n "$dir" ] || dir=/; done
if [ "$dir" = "$root" ]; then printf 'E\0'; else printf 'P\0%s\0' "$dir"; fi
if err=$(mkdir -- "$dir/.podloop-doctor-$nonce" 2>&1); then
  rmdir -- "$dir/.podloop-doctor-$nonce"; printf 'W\0'
else
  printf 'U\0%s\0' "$err"
fi
if command -v df >/dev/null 2>&1; then
  df -P -k -- "$dir" 2>/dev/null | { read -r _; read -r _ _ _ avail _ && printf 'F\0%s\0' "$avail"; }
fi
if [ -n "$reload" ]; then
  if ! err=$(sh -n -c "$reload" 2>&1); then printf 'Y\0%s\0' "$err"; fi
  set -f; set -- $reload; set +f
  while [ $# -gt 0 ]; do case $1 in *=*) shift ;; *) break ;; esac; done
  if [ $# -gt 0 ]; then
    if command -v "$1" >/dev/null 2>&1; then printf 'R\0%s\0' "$1"; else printf 'N\0%s\0' "$1"; fi
  fi
fi
printf 'K\0'
"#;

#[derive(Debug, Default, PartialEq, Eq)]
struct ProbeReport {
    missing: Vec<String>,
    /// The nearest existing parent, when the root does not exist yet.
    parent: Option<String>,
    writable: bool,
    write_error: Option<String>,
    /// KiB available on the folder's filesystem.
    free_kib: Option<u64>,
    reload_syntax: Option<String>,
    reload_found: Option<String>,
    reload_missing: Option<String>,
    complete: bool,
}

fn parse_probe(stdout: &[u8]) -> Result<ProbeReport, String> {
    let mut report = ProbeReport::default();
    let trimmed = stdout.strip_suffix(b"\0").unwrap_or(stdout);
    let mut fields = trimmed
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).trim().to_string());
    let mut value = |tag: &str| {
        fields
            .next()
            .ok_or_else(|| format!("probe output ended inside a `{tag}` record"))
    };
    while let Ok(tag) = value("tag") {
        match tag.as_str() {
            "M" => report.missing.push(value("M")?),
            // The root exists: `parent` stays `None`.
            "E" => {}
            "P" => report.parent = Some(value("P")?),
            "W" => report.writable = true,
            "U" => report.write_error = Some(value("U")?),
            "F" => report.free_kib = value("F")?.parse().ok(),
            "Y" => report.reload_syntax = Some(value("Y")?),
            "R" => report.reload_found = Some(value("R")?),
            "N" => report.reload_missing = Some(value("N")?),
            "K" => report.complete = true,
            "" if trimmed.is_empty() => break,
            other => return Err(format!("unexpected probe record `{other}`")),
        }
    }
    Ok(report)
}

/// The container checks for one target: tools, remote folder, reload.
async fn probe_container(
    client: &ContextClient,
    target: &ContainerRef,
    remote: &str,
    reload: Option<&str>,
    timeout: Duration,
) -> Vec<Check> {
    let at = format!("{}/{}", target.pod, target.container);
    let argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        PROBE_SCRIPT.to_string(),
        "podloop-doctor".to_string(),
        remote.to_string(),
        reload.unwrap_or("").to_string(),
        format!("{:016x}", rand::random::<u64>()),
        CONTAINER_TOOLS.to_string(),
    ];
    let run = async {
        let exec = Exec::open(client, target, argv).await?;
        exec.finish().await
    };
    let output = match within(timeout, run).await {
        Ok(Ok(output)) => output,
        outcome => {
            let problem = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("exec gave no answer within {timeout:?}"),
            };
            return vec![Check::fail(
                format!("{at}: cannot run `sh` in the container: {problem}"),
                exec_fix(&problem),
            )];
        }
    };
    let no_shell = match &output.status {
        ExitStatus::Code(126 | 127) => output.stdout.is_empty(),
        ExitStatus::Failure { message, .. } => {
            let lower = message.to_ascii_lowercase();
            lower.contains("not found") || lower.contains("no such file")
        }
        ExitStatus::Code(_) => false,
    };
    if no_shell {
        let error = TransportError::NoShell {
            pod: target.pod.clone(),
            container: target.container.clone(),
            code: 127,
        };
        return vec![Check::fail(
            format!("{at}: {error}"),
            "use an image with a shell and tar (busybox, alpine, debian-slim), or add a sidecar that has them and set `container`",
        )];
    }
    let report = match parse_probe(&output.stdout) {
        Ok(r) if r.complete => r,
        Ok(_) | Err(_) => {
            return vec![Check::fail(
                format!(
                    "{at}: the probe script did not finish: {}",
                    String::from_utf8_lossy(&output.stderr_tail).trim()
                ),
                "run `kubectl exec` into the container and check that `sh -c true` works",
            )]
        }
    };
    let mut checks = Vec::new();
    if report.missing.is_empty() {
        checks.push(Check::pass(format!(
            "{at}: has sh and tar (and find, xargs, mv, rm, mkdir, dd or head)"
        )));
    } else {
        let missing: Vec<String> = report.missing.iter().map(|t| format!("`{t}`")).collect();
        checks.push(Check::fail(
            format!("{at}: container has sh but no {}", missing.join(", ")),
            format!(
                "install them in the image (`apk add tar` on alpine, `apt-get install -y tar` on debian), or use a busybox-based image; podloop streams files as a tar into `{}`",
                report.missing.join(" ")
            ),
        ));
    }
    let detail = report.write_error.clone().unwrap_or_default();
    let folder = match (&report.parent, report.writable) {
        (None, true) => Ok(format!("`{remote}` exists and is writable")),
        (None, false) => Err(format!("`{remote}` exists but is not writable: {detail}")),
        (Some(parent), true) => Ok(format!(
            "`{remote}` does not exist yet; podloop creates it under `{parent}`, which is writable"
        )),
        (Some(parent), false) => Err(format!(
            "`{remote}` does not exist and cannot be created under `{parent}`: {detail}"
        )),
    };
    match folder {
        Ok(text) => checks.push(Check::pass(format!("{at}: {text}"))),
        Err(text) => {
            let hint = write_failure_hint(&detail);
            let fix = if hint.is_empty() {
                "make the folder writable by the container's user, or set `remote` to a folder it can write".to_string()
            } else {
                hint.trim_start_matches(": ").to_string()
            };
            checks.push(Check::fail(format!("{at}: {text}"), fix));
        }
    }
    let place = report.parent.as_deref().unwrap_or(remote);
    match report.free_kib {
        Some(kib) if kib < LOW_SPACE_KIB => checks.push(Check::fail(
            format!("{at}: only {kib} KiB free under `{place}`"),
            "free space in the container or enlarge the volume (an emptyDir's `sizeLimit`): a save that does not fit is not applied, and waits",
        )),
        Some(kib) => checks.push(Check::pass(format!(
            "{at}: {} free under `{place}`",
            crate::engine::human_bytes(kib.saturating_mul(1024))
        ))),
        None => {}
    }
    match (
        reload,
        &report.reload_syntax,
        &report.reload_missing,
        &report.reload_found,
    ) {
        (None, ..) => checks.push(Check::pass(format!("{at}: no `reload` command configured"))),
        (Some(r), Some(error), ..) => checks.push(Check::fail(
            format!("{at}: `reload = {r:?}` is not valid shell: {error}"),
            "fix `reload` in podloop.toml; it runs as `sh -c RELOAD` in the container",
        )),
        (Some(_), None, Some(program), _) => checks.push(Check::fail(
            format!("{at}: the reload command `{program}` is not in the container's PATH"),
            format!("install `{program}` in the image, or change `reload` in podloop.toml"),
        )),
        (Some(r), None, None, found) => checks.push(Check::pass(format!(
            "{at}: reload command found (`{}` for `{r}`)",
            found.as_deref().unwrap_or("?")
        ))),
    }
    checks
}

/// Below this, `podloop doctor` calls the remote folder's disk full.
const LOW_SPACE_KIB: u64 = 1024;

fn exec_fix(problem: &str) -> String {
    if problem.contains("forbidden (403)") {
        "allow `create pods/exec` for your user (see the RBAC check above)".into()
    } else if problem.contains("unreachable") {
        "check the connection to the cluster; `kubectl exec` must work".into()
    } else {
        "check that `kubectl exec POD -c CONTAINER -- sh -c true` works".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_records_parse_with_odd_names() {
        let out = b"M\0tar\0P\0/srv/a\nb\0U\0mkdir: Read-only file system\0R\0kill\0K\0";
        let r = parse_probe(out).unwrap();
        assert_eq!(r.missing, ["tar"]);
        assert_eq!(r.parent.as_deref(), Some("/srv/a\nb"));
        assert!(!r.writable && r.complete);
        assert_eq!(r.reload_found.as_deref(), Some("kill"));
        assert!(parse_probe(b"M\0").is_err());
        assert!(parse_probe(b"Q\0").is_err());
        assert!(!parse_probe(b"").unwrap().complete);
    }

    #[test]
    fn a_failure_renders_its_fix_on_the_next_line() {
        let c = Check::fail("thing broke", "do this");
        assert_eq!(c.render(), "✗ thing broke\n    fix: do this");
        assert!(c.failed());
        assert_eq!(Check::pass("fine").render(), "✓ fine");
    }
}
