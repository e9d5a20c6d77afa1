//! Logging for `podloop lsp`: tracing to stderr (stdout carries the
//! protocol), with a level the client can change through `logLevel`.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

use crate::lsp::server::LogLevelSetter;

/// `PODLOOP_LOG` (an `EnvFilter` directive) sets the level before the
/// client can; `info` otherwise.
pub const LOG_ENV: &str = "PODLOOP_LOG";

/// Installs the global subscriber; returns `None` when one was already set
/// (the level then cannot be changed from the client).
pub fn init_stderr() -> Option<LogLevelSetter> {
    let initial = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(initial);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .try_init();
    if installed.is_err() {
        return None;
    }
    Some(Arc::new(move |level: &str| {
        let filter = parse_level(level)?;
        handle
            .reload(filter)
            .map_err(|error| format!("could not change the log level: {error}"))
    }))
}

fn parse_level(level: &str) -> Result<EnvFilter, String> {
    let directive = match level.trim().to_ascii_lowercase().as_str() {
        "off" | "error" | "warn" | "info" | "debug" | "trace" => level.trim().to_ascii_lowercase(),
        "warning" => "warn".to_owned(),
        _ => level.trim().to_owned(),
    };
    EnvFilter::try_new(&directive).map_err(|error| {
        format!(
            "logLevel `{level}` is not understood ({error}): use error, warn, info, debug or trace"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_levels_and_directives_parse() {
        for level in ["info", "WARNING", "debug", "podloop=trace,kube=warn"] {
            assert!(parse_level(level).is_ok(), "{level}");
        }
    }

    #[test]
    fn nonsense_levels_are_refused_with_a_hint() {
        let error = parse_level("loud!!=[").unwrap_err();
        assert!(error.contains("use error, warn, info"), "{error}");
    }
}
