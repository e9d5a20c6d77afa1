//! The shell scripts podloop runs inside a container, and the parsers for
//! what they print.
//!
//! Nothing of a file name is ever part of a script: the scripts are constant
//! text, run as `sh -c SCRIPT podloop ARG…` with the remote root, byte counts
//! and the user's `reload` command as positional parameters, and file names
//! travel inside the tar stream (or as NUL-separated data read by
//! `xargs -0`). Every tool used exists in busybox 1.35 and GNU coreutils.
//!
//! The scripts report on stdout as NUL-separated records, so names with
//! newlines come back intact:
//! `M tool` (missing tool), `S message` (staging folder not creatable),
//! `T message` (stream ended early), `X message` (tar failed),
//! `F path message` (one entry refused), `R code` (reload exit code),
//! `K` (batch complete).

/// Exit code of the deliver script when a required tool is missing. Chosen
/// apart from 126/127, which mean the exec could not start `sh` itself.
pub const EXIT_MISSING_TOOL: i32 = 3;

/// The deliver script applies one batch. The tar holds `d` (NUL-separated paths to delete), `f/<path>` for
/// every file and link, and finally `z`: when `z` is missing the stream was
/// cut and nothing is applied.
///
/// Why the parts are shaped like this:
/// - `dd iflag=count_bytes,fullblock` reads exactly `$2` bytes (busybox
///   `head -c` over-reads a pipe), so the same code serves a warm session
///   where the next batch follows on stdin. Images without `dd` fall back to
///   `head -c`, exact in GNU coreutils, and harmless in a one-shot exec.
/// - files land in a staging folder under the root (same filesystem), then
///   `mv` renames them into place: a reader never sees a half-written file.
/// - `mv -t DIR` moves a folder's files in one process; only when it fails is
///   each file moved alone to find which one was refused.
/// - tar `-m` gives extracted files the current mtime (container watchers
///   fire), `-o` does not force tar's uid/gid onto the container.
const PRELUDE: &str = r#"
for tool in tar find xargs mv rm mkdir; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'M\0%s\0' "$tool"; exit 3; }
done
if command -v dd >/dev/null 2>&1; then
  take() { dd bs=65536 count="$1" iflag=count_bytes,fullblock 2>/dev/null; }
elif command -v head >/dev/null 2>&1; then
  take() { head -c "$1"; }
else
  printf 'M\0dd\0'; exit 3
fi
"#;

/// `apply ROOT SIZE RELOAD STAGE`: reads SIZE bytes of tar from stdin and
/// applies them; nothing else reads stdin, so a session can go on reading
/// the next batch.
const APPLY: &str = r#"
apply() {
root=$1 size=$2 reload=$3 stage=$4
if ! err=$(mkdir -p -- "$stage" 2>&1); then printf 'S\0%s\0' "$err"; return 4; fi
err=$(take "$size" | tar -x -m -o -f - -C "$stage" 2>&1)
code=$?
{
if [ ! -e "$stage/z" ]; then rm -rf -- "$stage"; printf 'T\0%s\0' "$err"; return 5; fi
if [ "$code" != 0 ]; then rm -rf -- "$stage"; printf 'X\0%s\0' "$err"; return 6; fi
if [ -s "$stage/d" ]; then
  ( cd "$root" && xargs -0 rm -rf -- <"$stage/d" ) >/dev/null 2>&1 ||
  ( cd "$root" && xargs -0 sh -c 'for p; do e=$(rm -rf -- "$p" 2>&1) || printf "F\0%s\0%s\0" "$p" "$e"; done' podloop-rm <"$stage/d" )
fi
if [ -d "$stage/f" ]; then
  ( cd "$stage/f" && find . -type d -print0 ) | xargs -0 sh -c '
base=$1 r=$2; shift 2
movedir() {
  src=$base/${1#./} dest=$r/${1#./}
  [ "$1" = . ] && src=$base dest=$r
  set --
  for f in "$src"/* "$src"/.[!.]* "$src"/..?*; do
    if [ -L "$f" ] || { [ -e "$f" ] && [ ! -d "$f" ]; }; then set -- "$@" "$f"; fi
  done
  [ $# = 0 ] && return
  if [ ! -d "$dest" ] && ! e=$(mkdir -p -- "$dest" 2>&1); then
    for f; do printf "F\0%s\0%s\0" "${f#"$base"/}" "$e"; done
    return
  fi
  mv -f -t "$dest" -- "$@" 2>/dev/null && return
  for f; do
    [ -L "$f" ] || [ -e "$f" ] || continue
    e=$(mv -f -T -- "$f" "$dest/${f##*/}" 2>&1) || printf "F\0%s\0%s\0" "${f#"$base"/}" "$e"
  done
}
for d; do movedir "$d"; done
' podloop-mv "$stage/f" "$root"
fi
rm -rf -- "$stage"
if [ -n "$reload" ]; then
  out=$(sh -c "$reload" 2>&1); code=$?
  printf 'O\0%s\0R\0%s\0' "$out" "$code"
fi
printf 'K\0'
} </dev/null
}
"#;

/// One batch in one exec. Positional parameters: `$1` remote root, `$2` tar
/// size in bytes, `$3` reload command (may be empty), `$4` nonce for the
/// staging folder.
pub fn deliver_script() -> String {
    format!("{PRELUDE}{APPLY}\napply \"$1\" \"$2\" \"$3\" \"$1/.podloop-stage-$4\"\nexit $?\n")
}

/// A warm session: a long-lived `sh` that applies batch after batch from
/// stdin, so a save costs one round trip instead of a new connection, TLS
/// handshake and process. Each batch is a header line
/// `TARSIZE RELOADLEN ROOTLEN NONCE`, then the root, the reload command and
/// the tar, each exactly that long; the answer is the usual records followed
/// by `E\0NONCE\0` (the nonce makes the end marker unforgeable by a name).
pub fn session_script() -> String {
    format!(
        "{PRELUDE}{APPLY}\nprintf 'H\\0'\n{}",
        r#"while IFS=' ' read -r size rlen rootlen nonce; do
  root=$(take "$rootlen"; echo x); root=${root%x}
  reload=$(take "$rlen"; echo x); reload=${reload%x}
  apply "$root" "$size" "$reload" "$root/.podloop-stage-$nonce"
  printf 'E\0%s\0' "$nonce"
done
"#
    )
}

/// Lists every regular file under `$1` with size, mode and sha256, skipping
/// podloop's staging folders. Per `xargs` chunk it prints `C\0<n>\0`, the n
/// names NUL-terminated, n `stat` lines (`size mode`, no names), then n
/// `sha256sum` lines, which the parser matches against the names it already
/// knows: that is what makes names with newlines safe (busybox prints them
/// raw, GNU escapes them).
pub const MANIFEST_SCRIPT: &str = r#"
cd "$1" 2>/dev/null || { printf 'N\0'; exit 0; }
for tool in find xargs stat sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'M\0%s\0' "$tool"; exit 3; }
done
find . -path './.podloop-stage-*' -prune -o -type f -print0 </dev/null |
  xargs -0 -r sh -c 'printf "C\0%s\0" "$#"; for f; do printf "%s\0" "$f"; done; stat -c "%s %a" -- "$@" && sha256sum -- "$@"' podloop-manifest
"#;

/// What the deliver script reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliverReport {
    pub missing_tool: Option<String>,
    pub staging_failed: Option<String>,
    pub truncated: Option<String>,
    pub extract_failed: Option<String>,
    pub failed: Vec<(Vec<u8>, String)>,
    pub reload_exit: Option<i32>,
    /// stdout and stderr of `reload`, interleaved as it wrote them.
    pub reload_output: Option<String>,
    pub complete: bool,
}

fn fields(stdout: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = stdout.strip_suffix(b"\0").unwrap_or(stdout);
    trimmed.split(|b| *b == 0)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

pub fn parse_deliver_output(stdout: &[u8]) -> Result<DeliverReport, String> {
    let mut report = DeliverReport::default();
    if stdout.is_empty() {
        return Ok(report);
    }
    let mut it = fields(stdout);
    let missing = |what: &str| format!("deliver script output ended inside a `{what}` record");
    while let Some(tag) = it.next() {
        match tag {
            b"M" => report.missing_tool = Some(text(it.next().ok_or_else(|| missing("M"))?)),
            b"S" => report.staging_failed = Some(text(it.next().ok_or_else(|| missing("S"))?)),
            b"T" => report.truncated = Some(text(it.next().ok_or_else(|| missing("T"))?)),
            b"X" => report.extract_failed = Some(text(it.next().ok_or_else(|| missing("X"))?)),
            b"F" => {
                let path = it.next().ok_or_else(|| missing("F"))?.to_vec();
                let reason = text(it.next().ok_or_else(|| missing("F"))?);
                report.failed.push((path, reason));
            }
            b"R" => {
                let code = text(it.next().ok_or_else(|| missing("R"))?);
                report.reload_exit = Some(
                    code.parse()
                        .map_err(|_| format!("reload exit code `{code}` is not a number"))?,
                );
            }
            b"O" => {
                let out = it.next().ok_or_else(|| missing("O"))?;
                report.reload_output = Some(String::from_utf8_lossy(out).into_owned());
            }
            b"K" => report.complete = true,
            other => {
                return Err(format!(
                    "unexpected record `{}` from the deliver script",
                    String::from_utf8_lossy(other)
                ))
            }
        }
    }
    Ok(report)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Relative to the root, without the leading `./`.
    pub path: Vec<u8>,
    pub size: u64,
    pub mode: u32,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutput {
    /// The root does not exist: nothing is there.
    NoRoot,
    MissingTool(String),
    Files(Vec<RemoteFile>),
}

pub fn parse_manifest_output(stdout: &[u8]) -> Result<ManifestOutput, String> {
    let mut rest = stdout;
    if rest == b"N\0" {
        return Ok(ManifestOutput::NoRoot);
    }
    if let Some(tool) = rest.strip_prefix(b"M\0") {
        let tool = tool.strip_suffix(b"\0").unwrap_or(tool);
        return Ok(ManifestOutput::MissingTool(text(tool)));
    }
    let mut files = Vec::new();
    while !rest.is_empty() {
        rest = rest
            .strip_prefix(b"C\0")
            .ok_or("manifest output lost its framing (expected a chunk header)")?;
        let count_field = take_until(&mut rest, 0)?;
        let count: usize = text(count_field)
            .parse()
            .map_err(|_| "manifest chunk count is not a number".to_string())?;
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            names.push(take_until(&mut rest, 0)?.to_vec());
        }
        let mut stats = Vec::with_capacity(count);
        for _ in 0..count {
            let line = text(take_until(&mut rest, b'\n')?);
            let (size, mode) = line
                .split_once(' ')
                .ok_or_else(|| format!("unexpected stat line `{line}`"))?;
            let size: u64 = size
                .parse()
                .map_err(|_| format!("unexpected stat size `{size}`"))?;
            let mode = u32::from_str_radix(mode, 8)
                .map_err(|_| format!("unexpected stat mode `{mode}`"))?;
            stats.push((size, mode));
        }
        for (name, (size, mode)) in names.into_iter().zip(stats) {
            let sha256 = take_sha_line(&mut rest, &name)?;
            let path = name.strip_prefix(b"./").unwrap_or(&name).to_vec();
            files.push(RemoteFile {
                path,
                size,
                mode,
                sha256,
            });
        }
    }
    Ok(ManifestOutput::Files(files))
}

fn take_until<'a>(rest: &mut &'a [u8], delimiter: u8) -> Result<&'a [u8], String> {
    let at = rest
        .iter()
        .position(|b| *b == delimiter)
        .ok_or("manifest output ended early: files changed while hashing?")?;
    let field = &rest[..at];
    *rest = &rest[at + 1..];
    Ok(field)
}

/// One `sha256sum` line for a name we already know: `HASH  NAME\n`, or GNU's
/// escaped form `\HASH  ESCAPED\n` for names with a newline or backslash.
fn take_sha_line(rest: &mut &[u8], name: &[u8]) -> Result<[u8; 32], String> {
    let escaped = rest.first() == Some(&b'\\');
    let line = if escaped { &rest[1..] } else { *rest };
    if line.len() < 66 {
        return Err("manifest output ended inside a sha256sum line".into());
    }
    let mut sha = [0u8; 32];
    hex::decode_to_slice(&line[..64], &mut sha)
        .map_err(|_| "unexpected sha256sum output: not a hash".to_string())?;
    let after = &line[66..];
    let expected: Vec<u8> = if escaped {
        let mut e = Vec::with_capacity(name.len() + 4);
        for b in name {
            match b {
                b'\\' => e.extend_from_slice(b"\\\\"),
                b'\n' => e.extend_from_slice(b"\\n"),
                b'\r' => e.extend_from_slice(b"\\r"),
                other => e.push(*other),
            }
        }
        e
    } else {
        name.to_vec()
    };
    let consumed = after
        .strip_prefix(expected.as_slice())
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or_else(|| {
            format!(
                "sha256sum output does not match file `{}`: files changed while hashing?",
                String::from_utf8_lossy(name)
            )
        })?;
    *rest = consumed;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_records_with_odd_names_parse() {
        let out = b"F\0dir/a\nb\0mv: can't rename: Permission denied\n\0R\x000\0K\0";
        let report = parse_deliver_output(out).unwrap();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, b"dir/a\nb");
        assert_eq!(report.reload_exit, Some(0));
        assert!(report.complete);
    }

    #[test]
    fn manifest_matches_escaped_and_raw_names() {
        let hash = "a".repeat(64);
        let mut out = Vec::new();
        out.extend_from_slice(b"C\x002\0./x\ny\0./plain\0");
        out.extend_from_slice(b"3 755\n0 644\n");
        out.extend_from_slice(format!("\\{hash}  ./x\\ny\n").as_bytes());
        out.extend_from_slice(format!("{hash}  ./plain\n").as_bytes());
        let ManifestOutput::Files(files) = parse_manifest_output(&out).unwrap() else {
            panic!("expected files");
        };
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, b"x\ny");
        assert_eq!(files[0].mode, 0o755);
        assert_eq!(files[1].size, 0);

        let mut raw = Vec::new();
        raw.extend_from_slice(b"C\x001\0./x\ny\0");
        raw.extend_from_slice(b"3 644\n");
        raw.extend_from_slice(format!("{hash}  ./x\ny\n").as_bytes());
        let ManifestOutput::Files(files) = parse_manifest_output(&raw).unwrap() else {
            panic!("expected files");
        };
        assert_eq!(files[0].path, b"x\ny");
    }

    #[test]
    fn manifest_with_a_vanished_file_is_an_error_not_a_guess() {
        let out = b"C\x002\0./a\0./b\x001 644\n".to_vec();
        assert!(parse_manifest_output(&out).is_err());
    }
}
