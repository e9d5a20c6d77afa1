//! podloop's own file watcher, for clients that cannot send
//! `workspace/didChangeWatchedFiles` (Neovim 0.7-0.9) and for
//! `podloop watch`. Every create, write, delete and rename under the mapped
//! folders becomes an `Input::Changed { origin: Watcher }`; the engine looks
//! at the disk when it plans, so the event kind does not matter.

use std::path::PathBuf;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::engine::{ChangeOrigin, EngineHandle, Input};

pub struct FsWatcher {
    watcher: RecommendedWatcher,
    folders: Vec<PathBuf>,
}

impl FsWatcher {
    pub fn new(engine: EngineHandle) -> notify::Result<FsWatcher> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) => {
                    if event.need_rescan() {
                        // The kernel queue overflowed: events were lost, so
                        // compare everything instead of trusting them.
                        tracing::warn!("file watcher lost events; resyncing every mapping");
                        engine.send(Input::SyncAll { reply: None });
                        return;
                    }
                    if matches!(event.kind, EventKind::Access(_)) || event.paths.is_empty() {
                        return;
                    }
                    engine.send(Input::Changed {
                        paths: event.paths,
                        origin: ChangeOrigin::Watcher,
                    });
                }
                Err(e) => tracing::warn!("file watcher error: {e}"),
            }
        })?;
        Ok(FsWatcher {
            watcher,
            folders: Vec::new(),
        })
    }

    /// Watches exactly `folders` (recursively); returns one message per
    /// folder that could not be watched.
    pub fn set_folders(&mut self, folders: &[PathBuf]) -> Vec<String> {
        let mut problems = Vec::new();
        for old in &self.folders {
            if !folders.contains(old) {
                let _ = self.watcher.unwatch(old);
            }
        }
        let mut watching = Vec::new();
        for folder in folders {
            if self.folders.contains(folder) {
                watching.push(folder.clone());
                continue;
            }
            match self.watcher.watch(folder, RecursiveMode::Recursive) {
                Ok(()) => watching.push(folder.clone()),
                Err(e) => problems.push(format!(
                    "cannot watch {}: {e}; changes made outside the editor there are not synced",
                    folder.display()
                )),
            }
        }
        self.folders = watching;
        problems
    }
}
