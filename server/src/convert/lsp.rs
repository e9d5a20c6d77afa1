//! Engine types <-> LSP types. The engine never sees a `Uri` or a
//! `Diagnostic`; the LSP layer never builds engine state by hand.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use tower_lsp_server::ls_types::{
    Diagnostic, DiagnosticSeverity, MessageType, NumberOrString, Position, Range, Uri,
};

use crate::engine::{
    EngineState, Health, LastSync, Level, Overrides, Problem, ProblemKind, Status, SyncAllReport,
    TargetState, TargetStatus,
};
use crate::lsp::ext::{LastSyncParams, Settings, StatusParams, SyncAllResult, TargetStatusParams};

/// Diagnostics podloop publishes carry this source so users can filter them.
pub const DIAGNOSTIC_SOURCE: &str = "podloop";

pub fn status_to_lsp(status: &Status) -> StatusParams {
    StatusParams {
        health: health_name(status.health).to_owned(),
        state: engine_state_name(status.state).to_owned(),
        quiescent: status.quiescent,
        message: status.message.clone(),
        pending: status.pending,
        targets: status.targets.iter().map(target_to_lsp).collect(),
    }
}

fn target_to_lsp(target: &TargetStatus) -> TargetStatusParams {
    TargetStatusParams {
        mapping: target.mapping.clone(),
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        container: target.container.clone(),
        state: target_state_name(target.state).to_owned(),
        last_sync: target.last_sync.as_ref().map(last_sync_to_lsp),
        error: target.error.clone(),
    }
}

fn last_sync_to_lsp(last: &LastSync) -> LastSyncParams {
    LastSyncParams {
        files: last.files,
        bytes: last.bytes,
        ms: u64::try_from(last.duration.as_millis()).unwrap_or(u64::MAX),
        at: rfc3339(last.at),
    }
}

pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Ok => "ok",
        Health::Warning => "warning",
        Health::Error => "error",
    }
}

pub fn engine_state_name(state: EngineState) -> &'static str {
    match state {
        EngineState::Idle => "idle",
        EngineState::Syncing => "syncing",
        EngineState::Paused => "paused",
        EngineState::Disconnected => "disconnected",
    }
}

pub fn target_state_name(state: TargetState) -> &'static str {
    match state {
        TargetState::Synced => "synced",
        TargetState::Syncing => "syncing",
        TargetState::Error => "error",
        TargetState::Waiting => "waiting",
    }
}

pub fn sync_all_to_lsp(report: &SyncAllReport) -> SyncAllResult {
    SyncAllResult {
        files_sent: report.files_sent,
        files_deleted: report.files_deleted,
        targets: report.targets,
        failures: report.failures.clone(),
    }
}

pub fn settings_to_overrides(settings: &Settings) -> Overrides {
    Overrides {
        context: settings.context.clone(),
        namespace: settings.namespace.clone(),
        paused: settings.paused,
    }
}

pub fn problem_to_diagnostic(problem: &Problem) -> Diagnostic {
    let start = Position::new(problem.line, problem.column);
    // Whole rest of the line: engine problems name a line, not a token, and a
    // zero-width range is invisible in some clients.
    let end = Position::new(problem.line.saturating_add(1), 0);
    Diagnostic {
        range: Range::new(start, end),
        severity: Some(level_to_severity(problem.severity)),
        source: Some(DIAGNOSTIC_SOURCE.to_owned()),
        code: match problem.kind {
            ProblemKind::Conflict => Some(NumberOrString::String(CONFLICT_CODE.to_owned())),
            ProblemKind::Other => None,
        },
        message: problem.message.clone(),
        ..Diagnostic::default()
    }
}

/// `Diagnostic.code` of a conflict: the code action that resolves it looks
/// for it (`lsp::handlers::code_action`).
pub const CONFLICT_CODE: &str = "conflict";

pub fn level_to_severity(level: Level) -> DiagnosticSeverity {
    match level {
        Level::Error => DiagnosticSeverity::ERROR,
        Level::Warning => DiagnosticSeverity::WARNING,
        Level::Info => DiagnosticSeverity::INFORMATION,
        Level::Debug => DiagnosticSeverity::HINT,
    }
}

pub fn level_to_message_type(level: Level) -> MessageType {
    match level {
        Level::Error => MessageType::ERROR,
        Level::Warning => MessageType::WARNING,
        Level::Info => MessageType::INFO,
        Level::Debug => MessageType::LOG,
    }
}

/// A `file:` URI to a local path, keeping non-UTF-8 bytes of percent-encoded
/// names intact (ls-types' own conversion is lossy there).
pub fn uri_to_path(uri: &Uri) -> Option<PathBuf> {
    let url = url::Url::parse(uri.as_str()).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path().ok()
}

pub fn path_to_uri(path: &Path) -> Option<Uri> {
    let url = url::Url::from_file_path(path).ok()?;
    Uri::from_str(url.as_str()).ok()
}

/// RFC 3339 in UTC with millisecond precision, e.g.
/// `2025-03-01T12:00:05.042Z`. Times before 1970 clamp to the epoch: a sync
/// cannot have happened then.
pub fn rfc3339(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX);
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60,
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), so we need no date crate for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.250Z: a leap day, to exercise the month math.
        let leap = UNIX_EPOCH + Duration::from_millis(1_709_251_199_250);
        assert_eq!(rfc3339(leap), "2024-02-29T23:59:59.250Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        assert_eq!(rfc3339(new_year), "2025-01-01T00:00:00.000Z");
    }

    #[test]
    fn status_serializes_with_the_documented_shape() {
        let status = Status {
            health: Health::Warning,
            state: EngineState::Syncing,
            quiescent: false,
            message: "1 pending".into(),
            pending: 1,
            targets: vec![TargetStatus {
                mapping: "api".into(),
                namespace: "default".into(),
                pod: "api-1".into(),
                container: "app".into(),
                state: TargetState::Synced,
                last_sync: Some(LastSync {
                    files: 2,
                    bytes: 30,
                    duration: Duration::from_micros(14_900),
                    at: UNIX_EPOCH,
                }),
                error: None,
            }],
        };
        let json = serde_json::to_value(status_to_lsp(&status)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "health": "warning", "state": "syncing", "quiescent": false,
                "message": "1 pending", "pending": 1,
                "targets": [{
                    "mapping": "api", "namespace": "default", "pod": "api-1",
                    "container": "app", "state": "synced",
                    "lastSync": {"files": 2, "bytes": 30, "ms": 14,
                                 "at": "1970-01-01T00:00:00.000Z"},
                    "error": null
                }]
            })
        );
    }

    #[test]
    fn odd_file_names_survive_the_uri_round_trip() {
        let names: [&[u8]; 4] = [b"$(reboot)", b"new\nline", b"sp ace%20", b"\xff\xfe latin1"];
        for name in names {
            let mut path = PathBuf::from("/work/ws");
            path.push(std::ffi::OsStr::from_bytes(name));
            let uri = path_to_uri(&path).unwrap();
            assert_eq!(uri_to_path(&uri).unwrap(), path, "via {}", uri.as_str());
        }
    }

    #[test]
    fn non_file_uris_are_not_paths() {
        let uri = Uri::from_str("untitled:Untitled-1").unwrap();
        assert_eq!(uri_to_path(&uri), None);
    }

    #[test]
    fn problems_become_podloop_diagnostics_on_their_line() {
        let diagnostic = problem_to_diagnostic(&Problem {
            kind: ProblemKind::Other,
            severity: Level::Error,
            line: 3,
            column: 2,
            message: "bad".into(),
        });
        assert_eq!(diagnostic.range.start, Position::new(3, 2));
        assert_eq!(diagnostic.severity, Some(DiagnosticSeverity::ERROR));
        assert_eq!(diagnostic.source.as_deref(), Some("podloop"));
    }
}
