//! `podloop.toml`: parsing and validation with positions.
//!
//! Parsed with `toml_edit` rather than serde so that every error can point at
//! the exact key (0-based line and column for diagnostics; 1-based in the
//! `Display` text the CLI prints).

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::api::PodSelector;

pub const FILE_NAME: &str = "podloop.toml";
pub const DEFAULT_MAX_FILE_SIZE: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    #[default]
    Overwrite,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodsMode {
    #[default]
    All,
    First,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (absolute), or a synthetic name for a mapping
    /// given on the command line.
    pub file: PathBuf,
    /// Folder that `local` paths are relative to.
    pub root: PathBuf,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub batch_window: Duration,
    pub max_file_size: u64,
    pub mappings: Vec<MappingConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig {
    pub name: String,
    /// Absolute local folder.
    pub local: PathBuf,
    /// Absolute, normalised container folder; never `/`.
    pub remote: String,
    pub selector: PodSelector,
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub exclude: Vec<String>,
    pub reload: Option<String>,
    pub on_conflict: OnConflict,
    pub pods: PodsMode,
    /// The top-level `agent`: whether a warm session may copy podloop's
    /// container agent into the containers of this mapping (default true;
    /// false for clusters whose policy forbids running a copied binary).
    pub agent: bool,
    /// 0-based line of the `[[sync]]` header, for errors found later
    /// (e.g. when the mapping's targets are resolved).
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 0-based.
    pub line: u32,
    /// 0-based, in characters.
    pub column: u32,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file.display(),
            self.line + 1,
            self.column + 1
        )?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one file (parsing stops at the first syntax error,
/// validation reports them all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Read and validate a config file.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    let file = absolute(file);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    parse(&file, &text)
}

/// Validate `text` as the content of `file` (used for positions and to
/// resolve relative `local` paths).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let file = absolute(file);
    let root = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut p = Parser {
        file: file.clone(),
        text,
        errors: Vec::new(),
    };
    let doc = match toml_edit::Document::parse(text.to_owned()) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_owned();
            p.error_at(span, None, format!("invalid TOML: {message}"));
            return Err(ConfigErrors(p.errors));
        }
    };
    let top: &dyn TableLike = doc.as_table();
    p.unknown_keys(
        top,
        &[
            "context",
            "namespace",
            "batch_window_ms",
            "max_file_size",
            "on_conflict",
            "pods",
            "agent",
            "sync",
        ],
        "",
    );
    let context = p.opt_string(top, "context", "");
    let namespace = p.opt_string(top, "namespace", "");
    if let Some(ns) = &namespace {
        p.check_namespace(top, "namespace", "", ns);
    }
    let batch_window_ms = p
        .opt_int(top, "batch_window_ms", "", 0, 60_000)
        .unwrap_or(0);
    let max_file_size = p
        .size(top, "max_file_size")
        .unwrap_or(DEFAULT_MAX_FILE_SIZE);
    let on_conflict = p.on_conflict(top, "").unwrap_or_default();
    let pods = p.pods(top, "").unwrap_or_default();
    let agent = p.opt_bool(top, "agent", "").unwrap_or(true);

    let mut mappings = Vec::new();
    let mut sync_spans = Vec::new();
    match top.get_key_value("sync") {
        None => p.error_at(
            0..0,
            None,
            "no `[[sync]]` mapping: add one with `local`, `remote` and `selector` (see docs/config.md)"
                .into(),
        ),
        Some((key, item)) => {
            let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match item {
                Item::ArrayOfTables(arr) => arr
                    .iter()
                    .map(|t| (t as &dyn TableLike, t.span()))
                    .collect(),
                Item::Value(Value::Array(arr)) => {
                    let mut out = Vec::new();
                    for v in arr.iter() {
                        match v.as_inline_table() {
                            Some(t) => out.push((t as &dyn TableLike, v.span())),
                            None => p.error_at(
                                v.span().unwrap_or(0..0),
                                Some("sync"),
                                "each `sync` entry must be a table".into(),
                            ),
                        }
                    }
                    out
                }
                _ => {
                    p.error_at(
                        key.span().unwrap_or(0..0),
                        Some("sync"),
                        "`sync` must be an array of tables: write `[[sync]]`".into(),
                    );
                    Vec::new()
                }
            };
            for (index, (table, span)) in tables.into_iter().enumerate() {
                let span = span.unwrap_or(0..0);
                let (line, _) = p.position(span.start);
                if let Some(m) = p.mapping(table, index, &root, on_conflict, pods, span.clone(), line)
                {
                    mappings.push(MappingConfig { agent, ..m });
                    sync_spans.push(span);
                }
            }
        }
    }
    p.check_mappings(&mappings, &sync_spans, namespace.as_deref());
    if !p.errors.is_empty() {
        return Err(ConfigErrors(p.errors));
    }
    Ok(Config {
        file,
        root,
        context,
        namespace,
        batch_window: Duration::from_millis(batch_window_ms as u64),
        max_file_size,
        mappings,
    })
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

struct Parser<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() as u32;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() as u32;
        (line, column)
    }

    fn error_at(&mut self, span: Range<usize>, key: Option<&str>, message: String) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.map(str::to_owned),
            message,
        });
    }

    /// Points at the key itself (where an editor shows the squiggle).
    fn error_key(&mut self, table: &dyn TableLike, key: &str, prefix: &str, message: String) {
        let span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| table.get(key).and_then(Item::span))
            .unwrap_or(0..0);
        self.error_at(span, Some(&format!("{prefix}{key}")), message);
    }

    fn unknown_keys(&mut self, table: &dyn TableLike, allowed: &[&str], prefix: &str) {
        let unknown: Vec<String> = table
            .iter()
            .map(|(k, _)| k.to_owned())
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        for key in unknown {
            let hint = closest(&key, allowed)
                .map(|c| format!(": did you mean `{c}`?"))
                .unwrap_or_else(|| format!(": allowed keys are {}", allowed.join(", ")));
            self.error_key(table, &key, prefix, format!("unknown key{hint}"));
        }
    }

    fn opt_string(&mut self, table: &dyn TableLike, key: &str, prefix: &str) -> Option<String> {
        let item = table.get(key)?;
        match item.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                let got = item.type_name();
                self.error_key(
                    table,
                    key,
                    prefix,
                    format!("expected a string, found {got}"),
                );
                None
            }
        }
    }

    fn opt_int(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        prefix: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let item = table.get(key)?;
        match item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error_key(
                    table,
                    key,
                    prefix,
                    format!("{n} is out of range: use a value from {min} to {max}"),
                );
                None
            }
            None => {
                let got = item.type_name();
                self.error_key(
                    table,
                    key,
                    prefix,
                    format!("expected an integer, found {got}"),
                );
                None
            }
        }
    }

    fn opt_bool(&mut self, table: &dyn TableLike, key: &str, prefix: &str) -> Option<bool> {
        let item = table.get(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                let got = match item.as_str() {
                    Some(s) => format!("the string \"{s}\""),
                    None => item.type_name().to_owned(),
                };
                self.error_key(
                    table,
                    key,
                    prefix,
                    format!("expected true or false (no quotes), found {got}"),
                );
                None
            }
        }
    }

    fn size(&mut self, table: &dyn TableLike, key: &str) -> Option<u64> {
        let item = table.get(key)?;
        if let Some(n) = item.as_integer() {
            if n > 0 {
                return Some(n as u64);
            }
            self.error_key(table, key, "", "must be a positive number of bytes".into());
            return None;
        }
        if let Some(s) = item.as_str() {
            if let Some(n) = parse_size(s) {
                return Some(n);
            }
            self.error_key(
                table,
                key,
                "",
                format!("cannot read `{s}` as a size: write bytes (1048576) or e.g. \"100MB\", \"512KiB\""),
            );
            return None;
        }
        let got = item.type_name();
        self.error_key(table, key, "", format!("expected a size, found {got}"));
        None
    }

    fn on_conflict(&mut self, table: &dyn TableLike, prefix: &str) -> Option<OnConflict> {
        match self.opt_string(table, "on_conflict", prefix)?.as_str() {
            "overwrite" => Some(OnConflict::Overwrite),
            "skip" => Some(OnConflict::Skip),
            other => {
                self.error_key(
                    table,
                    "on_conflict",
                    prefix,
                    format!("`{other}` is not a policy: use \"overwrite\" or \"skip\""),
                );
                None
            }
        }
    }

    fn pods(&mut self, table: &dyn TableLike, prefix: &str) -> Option<PodsMode> {
        match self.opt_string(table, "pods", prefix)?.as_str() {
            "all" => Some(PodsMode::All),
            "first" => Some(PodsMode::First),
            other => {
                self.error_key(
                    table,
                    "pods",
                    prefix,
                    format!(
                        "`{other}` is not a choice: use \"all\" (every Ready replica) or \"first\""
                    ),
                );
                None
            }
        }
    }

    fn check_namespace(&mut self, table: &dyn TableLike, key: &str, prefix: &str, ns: &str) {
        if !is_dns_label(ns) {
            self.error_key(
                table,
                key,
                prefix,
                format!("`{ns}` is not a valid namespace: lowercase letters, digits and `-`, at most 63"),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mapping(
        &mut self,
        table: &dyn TableLike,
        index: usize,
        root: &Path,
        default_conflict: OnConflict,
        default_pods: PodsMode,
        span: Range<usize>,
        line: u32,
    ) -> Option<MappingConfig> {
        let prefix = format!("sync[{index}].");
        let errors_before = self.errors.len();
        self.unknown_keys(
            table,
            &[
                "name",
                "local",
                "remote",
                "selector",
                "pod",
                "container",
                "namespace",
                "exclude",
                "reload",
                "on_conflict",
                "pods",
            ],
            &prefix,
        );
        let local = self.opt_string(table, "local", &prefix);
        let remote = self.opt_string(table, "remote", &prefix);
        let selector = self.opt_string(table, "selector", &prefix);
        let pod = self.opt_string(table, "pod", &prefix);
        let container = self.opt_string(table, "container", &prefix);
        let namespace = self.opt_string(table, "namespace", &prefix);
        let reload = self.opt_string(table, "reload", &prefix);
        let name = self.opt_string(table, "name", &prefix);
        let on_conflict = self.on_conflict(table, &prefix).unwrap_or(default_conflict);
        let pods = self.pods(table, &prefix).unwrap_or(default_pods);

        let local = match local {
            None => {
                self.error_at(
                    span.clone(),
                    Some(&format!("{prefix}local")),
                    "missing `local`: the folder to sync, relative to podloop.toml".into(),
                );
                None
            }
            Some(l) if l.is_empty() => {
                self.error_key(
                    table,
                    "local",
                    &prefix,
                    "is empty: use \".\" for the folder of podloop.toml".into(),
                );
                None
            }
            Some(l) => Some(normalize_local(&root.join(l))),
        };
        let remote = match remote {
            None => {
                self.error_at(
                    span.clone(),
                    Some(&format!("{prefix}remote")),
                    "missing `remote`: the absolute folder in the container, e.g. \"/app/src\""
                        .into(),
                );
                None
            }
            Some(r) => match validate_remote(&r) {
                Ok(r) => Some(r),
                Err(why) => {
                    self.error_key(table, "remote", &prefix, why);
                    None
                }
            },
        };
        let selector = match (selector, pod) {
            (Some(_), Some(_)) => {
                self.error_key(
                    table,
                    "pod",
                    &prefix,
                    "both `selector` and `pod` are set: keep one".into(),
                );
                None
            }
            (None, None) => {
                self.error_at(
                    span.clone(),
                    Some(&format!("{prefix}selector")),
                    "missing `selector` (e.g. \"app=api\") or `pod` (an exact pod name)".into(),
                );
                None
            }
            (Some(s), None) => match validate_selector(&s) {
                Ok(()) => Some(PodSelector::Labels(s.trim().to_owned())),
                Err(why) => {
                    self.error_key(
                        table,
                        "selector",
                        &prefix,
                        format!("bad label selector `{s}`: {why}"),
                    );
                    None
                }
            },
            (None, Some(p)) => {
                if is_dns_subdomain(&p) {
                    Some(PodSelector::Name(p))
                } else {
                    self.error_key(
                        table,
                        "pod",
                        &prefix,
                        format!("`{p}` is not a valid pod name"),
                    );
                    None
                }
            }
        };
        if let Some(ns) = &namespace {
            self.check_namespace(table, "namespace", &prefix, ns);
        }
        let exclude = self.excludes(table, &prefix);
        if self.errors.len() > errors_before {
            return None;
        }
        let local = local?;
        let name = name.unwrap_or_else(|| {
            local
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("sync{index}"))
        });
        Some(MappingConfig {
            name,
            local,
            remote: remote?,
            selector: selector?,
            container,
            namespace,
            exclude,
            reload,
            on_conflict,
            pods,
            agent: true,
            line,
        })
    }

    fn excludes(&mut self, table: &dyn TableLike, prefix: &str) -> Vec<String> {
        let Some(item) = table.get("exclude") else {
            return Vec::new();
        };
        let Some(arr) = item.as_array() else {
            self.error_key(
                table,
                "exclude",
                prefix,
                "expected an array of glob patterns".into(),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            let span = v.span().unwrap_or(0..0);
            match v.as_str() {
                Some(s) => match globset::Glob::new(s) {
                    Ok(_) => out.push(s.to_owned()),
                    Err(e) => self.error_at(
                        span,
                        Some(&format!("{prefix}exclude")),
                        format!("bad glob `{s}`: {}", e.kind()),
                    ),
                },
                None => self.error_at(
                    span,
                    Some(&format!("{prefix}exclude")),
                    "each exclude must be a string glob".into(),
                ),
            }
        }
        out
    }

    /// Two mappings that write into the same container folder would fight
    /// over the files: one of them would delete what the other puts.
    fn check_mappings(
        &mut self,
        mappings: &[MappingConfig],
        spans: &[Range<usize>],
        ns: Option<&str>,
    ) {
        for (i, a) in mappings.iter().enumerate() {
            for (j, b) in mappings.iter().enumerate().skip(i + 1) {
                if a.name == b.name {
                    self.error_at(
                        spans[j].clone(),
                        Some(&format!("sync[{j}].name")),
                        format!("two mappings are named `{}`: names must be unique", b.name),
                    );
                    continue;
                }
                let same_target = a.selector == b.selector
                    && a.container == b.container
                    && a.namespace.as_deref().or(ns) == b.namespace.as_deref().or(ns);
                if same_target && remote_overlaps(&a.remote, &b.remote) {
                    self.error_at(
                        spans[j].clone(),
                        Some(&format!("sync[{j}].remote")),
                        format!(
                            "overlaps mapping `{}`: both write `{}` and `{}` in the same containers; make the remote folders disjoint",
                            a.name, a.remote, b.remote
                        ),
                    );
                }
            }
        }
    }
}

fn remote_overlaps(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

fn normalize_local(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Absolute, not `/`, no `.`/`..` segments, no NUL; returned without
/// duplicate or trailing slashes.
pub fn validate_remote(remote: &str) -> Result<String, String> {
    if !remote.starts_with('/') {
        return Err(format!(
            "`{remote}` is relative: `remote` must be an absolute folder in the container, e.g. \"/app/src\""
        ));
    }
    if remote.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let segments: Vec<&str> = remote.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Err(
            "`/` would let a sync delete the container's whole filesystem: name a folder, e.g. \"/app\""
                .into(),
        );
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!(
            "`{remote}` has `.` or `..` segments: write the folder plainly"
        ));
    }
    Ok(format!("/{}", segments.join("/")))
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1024,
        "mb" | "m" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" | "g" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult).filter(|n| *n > 0)
}

fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Kubernetes label *name* (the part after an optional `prefix/`) and
/// label values: alphanumeric at both ends, `-_.` inside, at most 63.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// Validates the Kubernetes label selector grammar: `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a)`, `k`, `!k`, joined by commas.
pub fn validate_selector(selector: &str) -> Result<(), String> {
    let selector = selector.trim();
    if selector.is_empty() {
        return Err("it is empty and would match every pod in the namespace".into());
    }
    let mut requirements = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced `)`".to_string())?
            }
            ',' if depth == 0 => {
                requirements.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    requirements.push(&selector[start..]);
    for req in requirements {
        validate_requirement(req.trim())?;
    }
    Ok(())
}

fn validate_requirement(req: &str) -> Result<(), String> {
    if req.is_empty() {
        return Err("empty requirement (a stray comma?)".into());
    }
    let key_ok = |k: &str| -> Result<(), String> {
        if is_label_key(k) {
            Ok(())
        } else {
            Err(format!(
                "`{k}` is not a label key (letters, digits, `-_.`, optional `prefix/`)"
            ))
        }
    };
    let value_ok = |v: &str| -> Result<(), String> {
        if is_label_value(v) {
            Ok(())
        } else {
            Err(format!("`{v}` is not a label value"))
        }
    };
    if let Some(k) = req.strip_prefix('!') {
        return key_ok(k.trim());
    }
    for op in ["!=", "==", "="] {
        if let Some((k, v)) = req.split_once(op) {
            key_ok(k.trim())?;
            return value_ok(v.trim());
        }
    }
    let words: Vec<&str> = req.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        for op in ["notin", "in"] {
            if let Some(set) = rest.strip_prefix(op) {
                let set = set.trim();
                let inner = set
                    .strip_prefix('(')
                    .and_then(|s| s.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!(
                            "`{op}` needs a parenthesised list, e.g. `{} {op} (a,b)`",
                            words[0]
                        )
                    })?;
                key_ok(words[0])?;
                for v in inner.split(',') {
                    value_ok(v.trim())?;
                }
                return Ok(());
            }
        }
        return Err(format!(
            "cannot read `{req}`: use `key=value`, `key!=value`, `key in (a,b)`, `key notin (a)`, `key` or `!key`"
        ));
    }
    key_ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(Path::new("/w/podloop.toml"), text).unwrap_err().0
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            Path::new("/w/podloop.toml"),
            r#"
context = "dev"
namespace = "development"
batch_window_ms = 20
max_file_size = "10MB"

[[sync]]
name = "api"
local = "services/api/src"
remote = "/app/src/"
selector = "app=api"
container = "api"
exclude = ["node_modules/**", "*.log"]
reload = "kill -HUP 1"
pods = "first"

[[sync]]
local = "web"
remote = "/usr/share/nginx/html"
pod = "web-0"
on_conflict = "skip"
"#,
        )
        .unwrap();
        assert_eq!(c.context.as_deref(), Some("dev"));
        assert_eq!(c.batch_window, Duration::from_millis(20));
        assert_eq!(c.max_file_size, 10_000_000);
        assert_eq!(c.mappings.len(), 2);
        let api = &c.mappings[0];
        assert_eq!(api.local, PathBuf::from("/w/services/api/src"));
        assert_eq!(api.remote, "/app/src");
        assert_eq!(api.selector, PodSelector::Labels("app=api".into()));
        assert_eq!(api.pods, PodsMode::First);
        assert_eq!(api.line, 6);
        let web = &c.mappings[1];
        assert_eq!(web.name, "web");
        assert_eq!(web.selector, PodSelector::Name("web-0".into()));
        assert_eq!(web.on_conflict, OnConflict::Skip);
    }

    #[test]
    fn unknown_key_points_at_its_line_with_a_suggestion() {
        let e = errors("[[sync]]\nlocal = \".\"\nremote = \"/app\"\nselectr = \"app=api\"\n");
        let unknown = e
            .iter()
            .find(|e| e.key.as_deref() == Some("sync[0].selectr"))
            .unwrap();
        assert_eq!((unknown.line, unknown.column), (3, 0));
        assert!(
            unknown.message.contains("did you mean `selector`"),
            "{}",
            unknown.message
        );
        assert!(unknown
            .to_string()
            .starts_with("/w/podloop.toml:4:1: `sync[0].selectr`"));
    }

    #[test]
    fn remote_must_be_absolute_and_not_root() {
        let e = errors("[[sync]]\nlocal = \".\"\nremote = \"app\"\nselector = \"a=b\"\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 2);
        assert!(e[0].message.contains("relative"));
        let e = errors("[[sync]]\nlocal = \".\"\nremote = \"//\"\nselector = \"a=b\"\n");
        assert!(e[0].message.contains("whole filesystem"));
        let e = errors("[[sync]]\nlocal = \".\"\nremote = \"/app/../etc\"\nselector = \"a=b\"\n");
        assert!(e[0].message.contains(".."));
    }

    #[test]
    fn selector_and_pod_exclusive() {
        let e =
            errors("[[sync]]\nlocal = \".\"\nremote = \"/a\"\nselector = \"a=b\"\npod = \"p\"\n");
        assert!(e[0].message.contains("both"));
        assert_eq!(e[0].line, 4);
        let e = errors("[[sync]]\nlocal = \".\"\nremote = \"/a\"\n");
        assert!(e[0].message.contains("missing `selector`"));
        assert_eq!(e[0].line, 0);
    }

    #[test]
    fn bad_selectors_are_rejected() {
        for bad in [
            "",
            "app=",
            "=x",
            "app in a,b",
            "a==b==c",
            "ap p=x",
            "a,,b",
            "a in (x",
            "-a=b",
        ] {
            let r = validate_selector(bad);
            if bad == "app=" {
                assert!(r.is_ok(), "empty value is legal");
                continue;
            }
            assert!(r.is_err(), "{bad:?} accepted");
        }
        for good in [
            "app=api",
            "app==api,tier!=db",
            "env in (dev, qa)",
            "!canary",
            "app.kubernetes.io/name=api",
            "x notin (a)",
        ] {
            assert!(validate_selector(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn overlapping_mappings_name_the_second() {
        let e = errors(
            "[[sync]]\nlocal = \"a\"\nremote = \"/app\"\nselector = \"x=y\"\n\n[[sync]]\nlocal = \"b\"\nremote = \"/app/sub\"\nselector = \"x=y\"\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 5);
        assert!(e[0].message.contains("overlaps mapping `a`"));
        // Different workloads may share a remote path.
        assert!(parse(
            Path::new("/w/podloop.toml"),
            "[[sync]]\nlocal = \"a\"\nremote = \"/app\"\nselector = \"x=y\"\n[[sync]]\nlocal = \"b\"\nremote = \"/app\"\nselector = \"x=z\"\n"
        )
        .is_ok());
    }

    #[test]
    fn agent_is_on_by_default_and_can_be_turned_off() {
        let mapping = "[[sync]]\nlocal = \"a\"\nremote = \"/app\"\nselector = \"x=y\"\n[[sync]]\nlocal = \"b\"\nremote = \"/b\"\nselector = \"x=y\"\n";
        let c = parse(Path::new("/w/podloop.toml"), mapping).unwrap();
        assert!(c.mappings.iter().all(|m| m.agent));
        let c = parse(
            Path::new("/w/podloop.toml"),
            &format!("agent = false\n{mapping}"),
        )
        .unwrap();
        assert_eq!(c.mappings.len(), 2);
        assert!(c.mappings.iter().all(|m| !m.agent));
        let c = parse(
            Path::new("/w/podloop.toml"),
            &format!("agent = true\n{mapping}"),
        )
        .unwrap();
        assert!(c.mappings.iter().all(|m| m.agent));
    }

    #[test]
    fn an_agent_that_is_not_a_boolean_points_at_its_line() {
        let mapping = "[[sync]]\nlocal = \"a\"\nremote = \"/app\"\nselector = \"x=y\"\n";
        for (value, found) in [("\"no\"", "the string \"no\""), ("0", "integer")] {
            let e = errors(&format!("namespace = \"dev\"\nagent = {value}\n{mapping}"));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].key.as_deref(), Some("agent"));
            assert_eq!((e[0].line, e[0].column), (1, 0));
            assert!(
                e[0].message.contains("expected true or false") && e[0].message.contains(found),
                "{}",
                e[0].message
            );
        }
        // Only at the top: a mapping's own `agent` is an unknown key.
        let e = errors(&format!("{mapping}agent = false\n"));
        assert_eq!(e[0].key.as_deref(), Some("sync[0].agent"));
        assert_eq!(e[0].line, 4);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errors("namespace = \"dev\"\n[[sync]\n");
        assert_eq!(e[0].line, 1);
        assert!(e[0].message.starts_with("invalid TOML"));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new("/w/podloop.toml"), &text);
        }

        #[test]
        fn accepted_remotes_are_clean(remote in "[/a-z.]{0,20}") {
            if let Ok(r) = validate_remote(&remote) {
                proptest::prop_assert!(r.starts_with('/') && r != "/");
                proptest::prop_assert!(r.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."));
            }
        }
    }
}
