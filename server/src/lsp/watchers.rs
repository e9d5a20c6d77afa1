//! Dynamic `workspace/didChangeWatchedFiles` registration for clients that
//! support it: one registration covering every mapped folder plus
//! `**/podloop.toml`, replaced whenever the engine's mapped folders change.

use std::path::PathBuf;

use tokio::sync::watch;
use tower_lsp_server::ls_types::{
    DidChangeWatchedFilesRegistrationOptions, FileSystemWatcher, GlobPattern, OneOf, Registration,
    RelativePattern, Unregistration,
};
use tower_lsp_server::Client;

use crate::convert::lsp::path_to_uri;
use crate::lsp::server::CONFIG_FILE_NAME;

const METHOD: &str = "workspace/didChangeWatchedFiles";

pub async fn keep_registered(
    client: Client,
    mut mapped_folders: watch::Receiver<Vec<PathBuf>>,
    relative_patterns: bool,
) {
    let mut generation = 0u64;
    let mut registered: Option<String> = None;
    loop {
        let folders = mapped_folders.borrow_and_update().clone();
        if let Some(id) = registered.take() {
            let unregistration = Unregistration {
                id,
                method: METHOD.to_owned(),
            };
            if let Err(error) = client.unregister_capability(vec![unregistration]).await {
                tracing::debug!(%error, "unregistering file watchers failed");
            }
        }
        generation += 1;
        let id = format!("podloop-watched-files-{generation}");
        let options = DidChangeWatchedFilesRegistrationOptions {
            watchers: watchers_for(&folders, relative_patterns),
        };
        let registration = Registration {
            id: id.clone(),
            method: METHOD.to_owned(),
            register_options: serde_json::to_value(options).ok(),
        };
        match client.register_capability(vec![registration]).await {
            Ok(()) => registered = Some(id),
            Err(error) => tracing::warn!(
                %error,
                "the client refused file watchers: changes made outside the editor will not sync"
            ),
        }
        if mapped_folders.changed().await.is_err() {
            return;
        }
    }
}

pub fn watchers_for(folders: &[PathBuf], relative_patterns: bool) -> Vec<FileSystemWatcher> {
    let mut watchers: Vec<FileSystemWatcher> = folders
        .iter()
        .filter_map(|folder| {
            let glob_pattern = if relative_patterns {
                GlobPattern::Relative(RelativePattern {
                    base_uri: OneOf::Right(path_to_uri(folder)?),
                    pattern: "**/*".to_owned(),
                })
            } else {
                // Without relative patterns the folder becomes part of the
                // glob, so glob characters in its name must be escaped.
                let folder = folder.to_str()?;
                GlobPattern::String(format!("{}/**/*", escape_glob(folder)))
            };
            Some(FileSystemWatcher {
                glob_pattern,
                kind: None,
            })
        })
        .collect();
    watchers.push(FileSystemWatcher {
        glob_pattern: GlobPattern::String(format!("**/{CONFIG_FILE_NAME}")),
        kind: None,
    });
    watchers
}

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '{' | '}') {
            escaped.push('[');
            escaped.push(character);
            escaped.push(']');
        } else {
            escaped.push(character);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_globs_escape_glob_characters_in_folder_names() {
        let watchers = watchers_for(&[PathBuf::from("/ws/[app]")], false);
        assert_eq!(
            watchers[0].glob_pattern,
            GlobPattern::String("/ws/[[]app[]]/**/*".to_owned())
        );
    }

    #[test]
    fn the_config_file_is_always_watched() {
        let watchers = watchers_for(&[], true);
        assert_eq!(
            watchers,
            vec![FileSystemWatcher {
                glob_pattern: GlobPattern::String("**/podloop.toml".to_owned()),
                kind: None
            }]
        );
    }
}
