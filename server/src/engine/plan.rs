//! One batch for one target, run as a spawned task: look at the disk,
//! decide what to send, deliver it, and report back. The main loop never
//! waits on any of this; it gets a [`BatchOutcome`] message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{
    Batch, Cluster, ClusterError, Delivery, Entry, Expected, Manifest, ManifestEntry, Op, RelPath,
    RemoteChange, RemoteHolds, Target,
};
use super::config::OnConflict;
use super::local_reads::LocalReads;
use super::mapping::{link_escapes, LocalKind, Mapping};

/// What podloop believes a target holds at a path (what it last wrote, or
/// what a manifest showed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    File { sha256: [u8; 32], executable: bool },
    Link(Vec<u8>),
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchKind {
    /// Send the given paths.
    Changes,
    /// Compare with the container's manifest and send what differs (plus
    /// the given paths).
    FullSync,
    /// Compare with the manifest and send nothing.
    Check,
}

pub(crate) struct BatchRequest {
    pub mapping: Arc<Mapping>,
    pub target: Target,
    pub paths: Vec<RelPath>,
    pub held: HashMap<RelPath, Held>,
    pub kind: BatchKind,
    /// Run the mapping's `reload` even if no file changed (`Input::Reload`).
    pub force_reload: bool,
    /// Send these over whatever the container holds: no conflict check.
    pub overwrite: BTreeSet<RelPath>,
    /// Shared by the targets dispatched together (see `run_batch`).
    pub reads: Arc<LocalReads>,
}

/// Why a path was not sent, when the user should hear about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    TooLarge(u64),
    Unreadable(String),
    EscapingLink(Vec<u8>),
    ThroughLink,
    NotRegular,
    /// The container's copy changed since podloop wrote it.
    Conflict {
        skipped: bool,
        detail: String,
    },
}

#[derive(Debug)]
pub(crate) struct BatchOutcome {
    pub kind: BatchKind,
    /// Paths in the batch and what the target holds once it is delivered.
    pub sent: Vec<(RelPath, Held)>,
    /// Paths the target already holds (learned from `held` or a manifest).
    pub unchanged: Vec<(RelPath, Held)>,
    pub notes: Vec<(RelPath, Note)>,
    pub drift: Vec<String>,
    pub bytes: u64,
    pub deletes: usize,
    /// `Ok(None)`: nothing needed an exec.
    pub result: Result<Option<Delivery>, ClusterError>,
    pub elapsed: Duration,
}

/// Batches of at most this many changed paths are planned on the async
/// worker itself (see `run_batch`).
const INLINE_PLAN_PATHS: usize = 4;

pub(crate) async fn run_batch<C: Cluster>(cluster: Arc<C>, req: BatchRequest) -> BatchOutcome {
    let started = Instant::now();
    let kind = req.kind;
    let mut outcome = BatchOutcome {
        kind,
        sent: Vec::new(),
        unchanged: Vec::new(),
        notes: Vec::new(),
        drift: Vec::new(),
        bytes: 0,
        deletes: 0,
        result: Ok(None),
        elapsed: Duration::ZERO,
    };
    let manifest = if kind == BatchKind::Changes {
        None
    } else {
        match cluster.manifest(&req.target, &req.mapping.remote).await {
            Ok(m) => Some(m),
            Err(e) => {
                outcome.result = Err(e);
                outcome.elapsed = started.elapsed();
                return outcome;
            }
        }
    };
    let mapping = req.mapping.clone();
    let target = req.target.clone();
    let force_reload = req.force_reload;
    // Hashing files is blocking disk work: keep it off the async workers,
    // unless it is a few saved files (a folder may hold thousands): then the
    // hop to the blocking pool (two thread wake-ups per target) costs more
    // than the reads themselves.
    // Such a batch also shares what it reads with the other targets
    // dispatched with it; a larger one reads for itself, or all of a
    // tree's small files would stay in memory until the last target planned.
    let small = kind == BatchKind::Changes
        && req.paths.len() <= INLINE_PLAN_PATHS
        && req.paths.iter().all(|p| {
            !matches!(
                req.reads.inspect(&req.mapping.local_path(p)),
                Ok(LocalKind::Dir)
            )
        });
    let planned = if small {
        Ok(plan(&req, manifest.as_ref(), &req.reads))
    } else {
        tokio::task::spawn_blocking(move || plan(&req, manifest.as_ref(), &LocalReads::direct()))
            .await
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            outcome.result = Err(ClusterError::Permanent(format!(
                "planning the batch failed: {e}"
            )));
            outcome.elapsed = started.elapsed();
            return outcome;
        }
    };
    outcome.sent = plan.after;
    outcome.unchanged = plan.unchanged;
    outcome.notes = plan.notes;
    outcome.drift = plan.drift;
    outcome.bytes = plan.bytes;
    outcome.deletes = plan
        .entries
        .iter()
        .filter(|e| matches!(e.op, Op::Delete { .. }))
        .count();
    let run_reload = force_reload || !plan.entries.is_empty();
    if kind == BatchKind::Check || !run_reload {
        outcome.elapsed = started.elapsed();
        return outcome;
    }
    // Only checked entries can come back as conflicts: keep just those.
    let checked: HashMap<RelPath, (u64, Expected)> = plan
        .entries
        .iter()
        .filter_map(|e| match &e.op {
            Op::Put {
                size,
                expect: Some(expect),
                ..
            } => Some((e.path.clone(), (*size, *expect))),
            Op::Delete {
                expect: Some(expect),
            } => Some((e.path.clone(), (0, *expect))),
            _ => None,
        })
        .collect();
    let batch = Batch {
        remote_root: mapping.remote.clone(),
        entries: plan.entries,
        reload: mapping.reload.clone(),
        agent: mapping.agent,
    };
    outcome.result = cluster.deliver(&target, batch).await.map(Some);
    let conflicts = match &outcome.result {
        Ok(Some(delivery)) => delivery.conflicts.as_slice(),
        Err(ClusterError::Partial { conflicts, .. }) => conflicts.as_slice(),
        _ => &[],
    };
    for change in conflicts {
        let Some((size, expected)) = checked.get(&change.path) else {
            continue;
        };
        if change.skipped {
            // The target keeps its own copy: podloop's record stays what it
            // wrote, so the next save is checked (and skipped) again.
            outcome.sent.retain(|(rel, _)| *rel != change.path);
            if expected.new.is_none() {
                outcome.deletes = outcome.deletes.saturating_sub(1);
            }
        }
        let detail = conflict_detail(&mapping, change, *size, expected);
        outcome.notes.push((
            change.path.clone(),
            Note::Conflict {
                skipped: change.skipped,
                detail,
            },
        ));
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// A conflict a manifest shows: the container holds `remote` where podloop
/// wrote `ours`; the local tree has `new` (`None`: it is gone locally).
/// Returns whether `on_conflict` keeps the container's copy, and the note.
fn manifest_conflict(
    m: &Mapping,
    rel: &RelPath,
    remote: &ManifestEntry,
    ours: [u8; 32],
    new: Option<[u8; 32]>,
    size: u64,
) -> (bool, Note) {
    let skipped = m.on_conflict == OnConflict::Skip;
    let change = RemoteChange {
        path: rel.clone(),
        now: RemoteHolds::File(remote.sha256),
        size: Some(remote.size),
        skipped,
    };
    let expected = Expected {
        held: Some(ours),
        new,
        skip_if_changed: skipped,
    };
    let detail = conflict_detail(m, &change, size, &expected);
    (skipped, Note::Conflict { skipped, detail })
}

/// "what podloop wrote, what the container has, what is local": one text for
/// a conflict found by a manifest or by the container while delivering.
fn conflict_detail(m: &Mapping, change: &RemoteChange, size: u64, expected: &Expected) -> String {
    let path = m.remote_display(&change.path);
    let wrote = match &expected.held {
        Some(sha) => format!("podloop wrote sha256 {}", short(sha)),
        None => "podloop had removed it".into(),
    };
    let now = match (&change.now, change.size) {
        (RemoteHolds::File(sha), Some(bytes)) => {
            format!("container has {bytes} bytes sha256 {}", short(sha))
        }
        (RemoteHolds::File(sha), None) => format!("container has sha256 {}", short(sha)),
        (RemoteHolds::Absent, _) => "container no longer has it".into(),
        (RemoteHolds::NotAFile, _) => "container has something other than a file there".into(),
    };
    let local = match &expected.new {
        Some(sha) => format!("local is {size} bytes sha256 {}", short(sha)),
        None => "deleted locally".into(),
    };
    format!("{path} changed in the container since podloop wrote it ({wrote}, {now}, {local})")
}

struct Plan {
    entries: Vec<Entry>,
    after: Vec<(RelPath, Held)>,
    unchanged: Vec<(RelPath, Held)>,
    notes: Vec<(RelPath, Note)>,
    drift: Vec<String>,
    bytes: u64,
}

fn plan(req: &BatchRequest, manifest: Option<&Manifest>, reads: &LocalReads) -> Plan {
    let mut p = Plan {
        entries: Vec::new(),
        after: Vec::new(),
        unchanged: Vec::new(),
        notes: Vec::new(),
        drift: Vec::new(),
        bytes: 0,
    };
    let m = &req.mapping;
    // Expand folders and collect local kinds; a BTreeMap keeps the batch in
    // path order and dedups a file named twice.
    let mut local: BTreeMap<RelPath, LocalKind> = BTreeMap::new();
    let mut full_walk = false;
    if let Some(_manifest) = manifest {
        full_walk = true;
        for (rel, kind) in m.walk(None) {
            local.insert(rel, kind);
        }
    }
    for rel in &req.paths {
        if reads.through_symlink(m, rel) {
            p.notes.push((rel.clone(), Note::ThroughLink));
            continue;
        }
        match reads.inspect(&m.local_path(rel)) {
            Ok(LocalKind::Dir) => {
                if m.is_excluded(rel, true) {
                    continue;
                }
                for (child, kind) in m.walk(Some(rel)) {
                    local.insert(child, kind);
                }
                // The folder may have been deleted and made again between
                // two events (git checkout does that): what podloop put
                // under it and is gone now must go in the container too.
                for (held_path, held) in &req.held {
                    if held_path != rel
                        && held_path.is_within(rel)
                        && *held != Held::Absent
                        && !local.contains_key(held_path)
                        && matches!(
                            reads.inspect(&m.local_path(held_path)),
                            Ok(LocalKind::Missing)
                        )
                    {
                        local.insert(held_path.clone(), LocalKind::Missing);
                    }
                }
            }
            Ok(kind) => {
                if !m.is_excluded(rel, false) {
                    local.insert(rel.clone(), kind);
                }
            }
            Err(e) => p.notes.push((
                rel.clone(),
                Note::Unreadable(format!("cannot inspect it: {e}")),
            )),
        }
    }
    // A folder deleted locally (the watcher may name only the folder): each
    // file podloop wrote under it is deleted on its own, checked like any
    // delete, so one the container changed is reported; under `skip` it is
    // kept and so is the folder, otherwise the folder goes after its files.
    let mut gone_folders: BTreeSet<RelPath> = BTreeSet::new();
    if manifest.is_none() {
        let gone: Vec<RelPath> = local
            .iter()
            // A file podloop wrote there holds nothing beneath it: the
            // common delete skips the scan of every held path.
            .filter(|(rel, kind)| {
                matches!(kind, LocalKind::Missing)
                    && !matches!(req.held.get(*rel), Some(Held::File { .. }))
            })
            .map(|(rel, _)| rel.clone())
            .collect();
        for folder in gone {
            let written: Vec<&RelPath> = req
                .held
                .iter()
                .filter(|(path, held)| {
                    **path != folder && path.is_within(&folder) && matches!(held, Held::File { .. })
                })
                .map(|(path, _)| path)
                .collect();
            if written.is_empty() {
                continue;
            }
            for path in written {
                local.entry(path.clone()).or_insert(LocalKind::Missing);
            }
            gone_folders.insert(folder);
        }
    }
    let keep_gone_folders = m.on_conflict == OnConflict::Skip;
    for (rel, kind) in local {
        match kind {
            LocalKind::Missing if keep_gone_folders && gone_folders.contains(&rel) => {}
            LocalKind::Missing => {
                let in_container = manifest.map(|mf| mf.files.keys().any(|f| f.is_within(&rel)));
                let already_gone = match in_container {
                    Some(true) => false,
                    // Manifests list regular files only: a link we wrote
                    // may still be there.
                    Some(false) => !matches!(req.held.get(&rel), Some(Held::Link(_))),
                    None => {
                        req.held.get(&rel) == Some(&Held::Absent)
                            && !req
                                .held
                                .iter()
                                .any(|(p, h)| *h != Held::Absent && p != &rel && p.is_within(&rel))
                    }
                };
                if already_gone {
                    p.unchanged.push((rel, Held::Absent));
                    continue;
                }
                if req.kind == BatchKind::Check {
                    if manifest.is_some_and(|mf| mf.files.contains_key(&rel)) {
                        p.drift.push(format!(
                            "{}: deleted locally, still in the container",
                            m.remote_display(&rel)
                        ));
                    }
                    continue;
                }
                // A file podloop wrote, gone locally: the container checks
                // it was not changed there before removing it.
                let expect = match (manifest, req.held.get(&rel)) {
                    (None, Some(Held::File { sha256: ours, .. }))
                        if !req.overwrite.contains(&rel) =>
                    {
                        Some(Expected {
                            held: Some(*ours),
                            new: None,
                            skip_if_changed: m.on_conflict == OnConflict::Skip,
                        })
                    }
                    _ => None,
                };
                p.entries.push(Entry {
                    path: rel.clone(),
                    op: Op::Delete { expect },
                });
                p.after.push((rel, Held::Absent));
            }
            LocalKind::Symlink(target) => {
                if link_escapes(&rel, &target) {
                    p.notes.push((rel, Note::EscapingLink(target)));
                    continue;
                }
                let held = Held::Link(target.clone());
                if req.held.get(&rel) == Some(&held) {
                    p.unchanged.push((rel, held));
                    continue;
                }
                if req.kind == BatchKind::Check {
                    // A manifest lists regular files only: a link cannot be
                    // compared, so it is neither drift nor in sync.
                    continue;
                }
                p.entries.push(Entry {
                    path: rel.clone(),
                    op: Op::Symlink { target },
                });
                p.after.push((rel, held));
            }
            LocalKind::File { size, mode } => {
                let executable = mode & 0o111 != 0;
                if size > m.max_file_size {
                    p.notes.push((rel, Note::TooLarge(size)));
                    continue;
                }
                let local_path = m.local_path(&rel);
                let (sha256, content) = match reads.read_and_hash(&local_path, size) {
                    Ok(read) => read,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Deleted between the event and now: a later event
                        // (or the next full sync) carries the delete.
                        continue;
                    }
                    Err(e) => {
                        p.notes.push((rel, Note::Unreadable(e.to_string())));
                        continue;
                    }
                };
                let held = Held::File { sha256, executable };
                let remote = manifest.and_then(|mf| mf.files.get(&rel));
                if let Some(remote) = remote {
                    if remote.sha256 == sha256 && remote.executable == executable {
                        p.unchanged.push((rel, held));
                        continue;
                    }
                } else if manifest.is_none() && req.held.get(&rel) == Some(&held) {
                    p.unchanged.push((rel, held));
                    continue;
                }
                if req.kind == BatchKind::Check {
                    p.drift.push(match remote {
                        Some(r) if r.sha256 == sha256 => format!(
                            "{}: executable bit differs (local {}, container {})",
                            m.remote_display(&rel),
                            executable,
                            r.executable
                        ),
                        Some(r) => format!(
                            "{}: content differs (local {} bytes sha256 {}, container {} bytes sha256 {})",
                            m.remote_display(&rel),
                            size,
                            short(&sha256),
                            r.size,
                            short(&r.sha256)
                        ),
                        None => format!("{}: missing in the container", m.remote_display(&rel)),
                    });
                    continue;
                }
                if let (Some(remote), Some(Held::File { sha256: ours, .. }), false) =
                    (remote, req.held.get(&rel), req.overwrite.contains(&rel))
                {
                    if remote.sha256 != *ours && remote.sha256 != sha256 {
                        let (skipped, note) =
                            manifest_conflict(m, &rel, remote, *ours, Some(sha256), size);
                        p.notes.push((rel.clone(), note));
                        if skipped {
                            continue;
                        }
                    }
                }
                // Without a manifest, the container checks what it replaces
                // against what podloop last put there (conflicts).
                let checked = !req.overwrite.contains(&rel);
                let expect = match (manifest, req.held.get(&rel).filter(|_| checked)) {
                    (None, Some(Held::File { sha256: ours, .. })) => Some(Some(*ours)),
                    (None, Some(Held::Absent)) => Some(None),
                    _ => None,
                }
                .map(|held| Expected {
                    held,
                    new: Some(sha256),
                    skip_if_changed: m.on_conflict == OnConflict::Skip,
                });
                p.bytes += size;
                p.entries.push(Entry {
                    path: rel.clone(),
                    op: Op::Put {
                        local: local_path,
                        size,
                        mode,
                        expect,
                        content,
                    },
                });
                p.after.push((rel, held));
            }
            LocalKind::Other => p.notes.push((rel, Note::NotRegular)),
            LocalKind::Dir => {}
        }
    }
    if !gone_folders.is_empty() {
        // A gone folder's own delete comes after its files' checked ones,
        // whatever order a transport applies a batch in.
        let (folders, files): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut p.entries)
            .into_iter()
            .partition(|e| matches!(e.op, Op::Delete { .. }) && gone_folders.contains(&e.path));
        p.entries = files;
        p.entries.extend(folders);
    }
    if let (true, Some(manifest)) = (full_walk, manifest) {
        plan_remote_deletes(req, manifest, reads, &mut p);
    }
    p
}

/// Files the container has and the local tree does not: delete them,
/// collapsed to the shallowest missing folder when nothing excluded lives
/// under it (excluded files are never deleted).
fn plan_remote_deletes(req: &BatchRequest, manifest: &Manifest, reads: &LocalReads, p: &mut Plan) {
    let m = &req.mapping;
    let present: BTreeSet<&RelPath> = p
        .after
        .iter()
        .chain(p.unchanged.iter())
        .map(|(r, _)| r)
        .chain(p.notes.iter().map(|(r, _)| r))
        .collect();
    let mut deletes: BTreeSet<RelPath> = BTreeSet::new();
    // Files the container changed since podloop wrote them and `skip`
    // keeps: neither they nor a folder holding them are deleted.
    let mut kept: BTreeSet<&RelPath> = BTreeSet::new();
    let mut conflicts = Vec::new();
    let mut missing: Vec<&RelPath> = Vec::new();
    for (rel, remote) in &manifest.files {
        if present.contains(rel) || m.is_excluded(rel, false) || reads.through_symlink(m, rel) {
            continue;
        }
        match reads.inspect(&m.local_path(rel)) {
            Ok(LocalKind::Missing) => {}
            // Exists locally but was not planned (e.g. a link or special
            // file): leave the container's copy alone.
            _ => continue,
        }
        if let (Some(Held::File { sha256: ours, .. }), BatchKind::FullSync, false) =
            (req.held.get(rel), req.kind, req.overwrite.contains(rel))
        {
            if remote.sha256 != *ours {
                let (skipped, note) = manifest_conflict(m, rel, remote, *ours, None, 0);
                conflicts.push((rel.clone(), note));
                if skipped {
                    kept.insert(rel);
                    continue;
                }
            }
        }
        missing.push(rel);
    }
    for rel in missing {
        let collapsed = rel
            .ancestors()
            .find(|a| {
                matches!(reads.inspect(&m.local_path(a)), Ok(LocalKind::Missing))
                    && !m.is_excluded(a, true)
                    && manifest
                        .files
                        .keys()
                        .filter(|f| f.is_within(a))
                        .all(|f| !m.is_excluded(f, false) && !kept.contains(f))
            })
            .unwrap_or_else(|| rel.clone());
        deletes.insert(collapsed);
    }
    p.notes.extend(conflicts);
    let chosen: Vec<RelPath> = deletes.iter().cloned().collect();
    for rel in chosen {
        if rel.ancestors().any(|a| deletes.contains(&a)) {
            continue;
        }
        if req.kind == BatchKind::Check {
            p.drift.push(format!(
                "{}: in the container, not in the local tree",
                m.remote_display(&rel)
            ));
            continue;
        }
        p.entries.push(Entry {
            path: rel.clone(),
            op: Op::Delete { expect: None },
        });
        p.after.push((rel, Held::Absent));
    }
}

fn short(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..6])
}
