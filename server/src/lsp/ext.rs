//! Every podloop-specific piece of the protocol: the `podloop/status`
//! notification, the `workspace/executeCommand` command names and their
//! results, and the settings clients pass in `initializationOptions` and
//! `workspace/didChangeConfiguration`. Documented in `docs/lsp-extensions.md`;
//! keep the two in step.

use serde::{Deserialize, Serialize};
use tower_lsp_server::ls_types::notification::Notification;

/// Server → client notification carrying [`StatusParams`], sent only when
/// the status differs from the last one sent.
#[derive(Debug)]
pub enum StatusNotification {}

impl Notification for StatusNotification {
    type Params = StatusParams;
    const METHOD: &'static str = "podloop/status";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusParams {
    /// `"ok" | "warning" | "error"`
    pub health: String,
    /// `"idle" | "syncing" | "paused" | "disconnected"`
    pub state: String,
    /// True exactly when nothing is pending or in flight.
    pub quiescent: bool,
    pub message: String,
    pub pending: usize,
    pub targets: Vec<TargetStatusParams>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatusParams {
    pub mapping: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `"synced" | "syncing" | "error" | "waiting"`
    pub state: String,
    pub last_sync: Option<LastSyncParams>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastSyncParams {
    pub files: usize,
    pub bytes: u64,
    pub ms: u64,
    /// RFC 3339, UTC, millisecond precision.
    pub at: String,
}

/// Result of the `podloop.syncAll` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncAllResult {
    pub files_sent: usize,
    pub files_deleted: usize,
    pub targets: usize,
    pub failures: Vec<String>,
}

/// The `workspace/executeCommand` commands the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    SyncAll,
    Reload,
    Pause,
    Resume,
    Status,
    Doctor,
    /// `[uri]`: send the file over the container's copy even where it
    /// changed since podloop wrote it (the conflict quick fix).
    Overwrite,
}

impl Command {
    pub const ALL: [Command; 7] = [
        Command::SyncAll,
        Command::Reload,
        Command::Pause,
        Command::Resume,
        Command::Status,
        Command::Doctor,
        Command::Overwrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Command::SyncAll => "podloop.syncAll",
            Command::Reload => "podloop.reload",
            Command::Pause => "podloop.pause",
            Command::Resume => "podloop.resume",
            Command::Status => "podloop.status",
            Command::Doctor => "podloop.doctor",
            Command::Overwrite => "podloop.overwrite",
        }
    }

    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| command.name() == name)
    }
}

/// What clients may set in `initializationOptions` or send in
/// `workspace/didChangeConfiguration` (flat, or nested under `"podloop"` as
/// VS Code does). Empty strings count as unset so that clearing a setting
/// in an editor's UI clears the override.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub paused: Option<bool>,
}

impl Settings {
    const KEYS: [&'static str; 4] = ["context", "namespace", "logLevel", "paused"];

    /// `None` when the value says nothing about podloop (e.g. the `{}` or
    /// `null` some clients send after `initialized`), so that such a message
    /// does not wipe the overrides given at start-up.
    pub fn from_value(value: &serde_json::Value) -> Result<Option<Settings>, String> {
        let scoped = match value.get("podloop") {
            Some(nested) if nested.is_object() => nested,
            _ => value,
        };
        let Some(object) = scoped.as_object() else {
            return Ok(None);
        };
        let mentions_podloop = value.get("podloop").is_some()
            || Self::KEYS.iter().any(|key| object.contains_key(*key));
        if !mentions_podloop {
            return Ok(None);
        }
        let mut settings: Settings = serde_json::from_value(scoped.clone()).map_err(|error| {
            format!(
                "podloop settings are malformed: {error}; expected {{context, namespace, logLevel, paused}}"
            )
        })?;
        for field in [
            &mut settings.context,
            &mut settings.namespace,
            &mut settings.log_level,
        ] {
            if field.as_deref().is_some_and(|text| text.trim().is_empty()) {
                *field = None;
            }
        }
        Ok(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_accept_flat_and_nested_forms() {
        let flat = Settings::from_value(&json!({"context": "kind", "paused": true})).unwrap();
        let nested =
            Settings::from_value(&json!({"podloop": {"context": "kind", "paused": true}})).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.unwrap().context.as_deref(), Some("kind"));
    }

    #[test]
    fn settings_that_do_not_mention_podloop_change_nothing() {
        assert_eq!(Settings::from_value(&json!({})).unwrap(), None);
        assert_eq!(Settings::from_value(&json!(null)).unwrap(), None);
        assert_eq!(
            Settings::from_value(&json!({"rust-analyzer": {}})).unwrap(),
            None
        );
    }

    #[test]
    fn empty_strings_clear_an_override() {
        let settings = Settings::from_value(&json!({"podloop": {"namespace": " "}}))
            .unwrap()
            .unwrap();
        assert_eq!(settings.namespace, None);
    }

    #[test]
    fn malformed_settings_are_reported() {
        let error = Settings::from_value(&json!({"paused": "yes"})).unwrap_err();
        assert!(error.contains("podloop settings are malformed"), "{error}");
    }

    #[test]
    fn command_names_round_trip() {
        for command in Command::ALL {
            assert_eq!(Command::from_name(command.name()), Some(command));
        }
        assert_eq!(Command::from_name("podloop.nope"), None);
    }
}
