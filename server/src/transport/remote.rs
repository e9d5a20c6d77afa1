//! The shell scripts podloop runs inside a container, and the parsers for
//! what they print.
//!
//! Nothing of a file name is ever part of a script: the scripts are constant
//! text, run as `sh -c SCRIPT podloop ARG…`. File names travel inside the
//! tar stream: as member names, and in the batch's list file `l`, where each
//! name is one single-quoted shell word (see [`sh_word`]) that the script
//! turns back into an argument with `eval "set -- …"`. A quoted word can hold
//! any byte but NUL, so names with quotes, `$(…)` or newlines arrive intact
//! and are never run. Every tool used exists in busybox 1.35 and GNU
//! coreutils.
//!
//! The scripts report on stdout as NUL-separated records, so names with
//! newlines come back intact:
//! `M tool` (missing tool), `S message` (staging folder not creatable),
//! `T message` (stream ended early), `X message` (tar failed),
//! `F path message` (one entry refused), `O output` and `R code` (reload),
//! `C path now size skipped` (conflict), `H lines` (hashes of a batch's
//! checked files), `W path message` (a write failed), `K` (batch complete);
//! to an agent upgrade `A` (the agent runs) or `N why` (the shell stays).

use super::payload::Expect;

/// Exit code of the deliver script when a required tool is missing. Chosen
/// apart from 126/127, which mean the exec could not start `sh` itself.
pub const EXIT_MISSING_TOOL: i32 = 3;

// The tools each script checks for, in one place: `podloop doctor` probes
// for the same ones (`CONTAINER_TOOLS`) instead of keeping its own list.
macro_rules! delivery_tools {
    () => {
        "tar mv rm mkdir"
    };
}
macro_rules! manifest_tools {
    () => {
        "find xargs stat sha256sum"
    };
}

/// Every tool delivery and manifests need, besides `dd` or `head`.
pub const CONTAINER_TOOLS: &str = concat!(delivery_tools!(), " ", manifest_tools!());

/// `dd iflag=count_bytes,fullblock` reads exactly `$1` bytes (busybox
/// `head -c` over-reads a pipe), so the same code serves a warm session
/// where the next batch follows on stdin. Images without `dd` fall back to
/// `head -c`, exact in GNU coreutils, and harmless in a one-shot exec.
/// `take_to FILE SIZE` is the same read written to a file with the tool's
/// error kept in `err`: a command substitution of one simple command costs
/// no more processes than the command itself, and the message never has to
/// be written to a disk that may be full. `$reader$SIZE` is the bare
/// command, for pipelines (a function would cost a process more). `nl` lets
/// a quoted word in a one-line record carry a newline.
const PRELUDE: &str = concat!(
    r#"
for tool in "#,
    delivery_tools!(),
    r#"; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'M\0%s\0' "$tool"; exit 3; }
done
if command -v dd >/dev/null 2>&1; then
  reader='dd bs=65536 iflag=count_bytes,fullblock count='
elif command -v head >/dev/null 2>&1; then
  reader='head -c '
else
  printf 'M\0dd\0'; exit 3
fi
take() { $reader$1 2>/dev/null; }
take_to() { err=$($reader$2 2>&1 >"$1"); }
nl='
'
home=$PWD
"#
);

/// Checks shared by both ways of writing, all shell builtins on the common
/// path (no process):
///
/// - `link_in ROOT DIR`: whether a folder on the way from ROOT down to
///   ROOT/DIR is a symbolic link *in the container*; writing or deleting
///   through it could land outside the mapping's `remote`, so podloop
///   refuses (`link` names it). ROOT itself may be a link: the user chose it.
/// - `changed ABS REL OLD NEW SKIP`: the conflict check. OLD is what podloop
///   last wrote there (a sha256, `-` for "nothing", `.` for "never checked"),
///   NEW what it writes now. When the container holds neither (someone
///   edited it in a shell, a generator in the pod), print a `C` record with
///   what it holds instead and return 0. `now` is set by `state_of`, or
///   given (from a batch-wide `sha256sum`) in `$now` when `known` is 1.
const CHECKS: &str = r#"
link_in() {
link= l_at=$1 l_rest=$2
while [ -n "$l_rest" ]; do
  case $l_rest in
  */*) l_seg=${l_rest%%/*} l_rest=${l_rest#*/} ;;
  *) l_seg=$l_rest l_rest= ;;
  esac
  l_at=$l_at/$l_seg
  if [ -L "$l_at" ]; then link=${l_at#"$1"/}; return 0; fi
  [ -d "$l_at" ] || return 1
done
return 1
}
link_refusal() {
printf 'F\0%s\0%s\0' "$1" "\`$link\` is a symbolic link in the container; podloop does not write through links (make it a folder, or exclude the path)"
}
state_of() {
if [ -L "$1" ]; then now='?'
elif [ -f "$1" ]; then
  now=$(sha256sum <"$1" 2>/dev/null) || now=
  now=${now%% *}; [ -n "$now" ] || now='?'
elif [ -e "$1" ]; then now='?'
else now=-
fi
}
changed() {
[ "$3" = . ] && return 1
[ "$known" = 1 ] || state_of "$1"
[ "$now" = "$3" ] || [ "$now" = "$4" ] && return 1
c_size=
case $now in -|'?') ;; *) c_size=$(wc -c <"$1") ;; esac
printf 'C\0%s\0%s\0%s\0%s\0' "$2" "$now" "$c_size" "$5"
return 0
}
"#;

/// `apply ROOT SIZE RELOAD NONCE`: reads SIZE bytes of tar from stdin and
/// applies them. Returns 0 when the batch was applied (maybe with `F` or
/// `C` records); the caller then prints `K`. Returns 4 when nothing was
/// applied and stdin is still in step (a session may go on), 5 or 6 when
/// nothing was applied and stdin may not be (tar stopped reading early: a
/// session must end).
///
/// The tar's members all sit under `.podloop-stage-NONCE/` (the staging
/// folder, so tar itself creates it: no `mkdir`): `l` (what to do, one
/// record a line), `v` (files to check for conflicts first, when podloop
/// knows what they held), `f/<path>` for every file and link, and finally
/// `z` holding the nonce: a `z` that is missing or holds anything else means
/// the stream was cut or tar failed, and nothing is applied.
///
/// Records of `l`, each a letter and shell words:
/// - `D PATH…`: delete these (files or folders), relative to the root;
/// - `M DIR NAME…`: move the staged files `f/DIR/NAME…` into `ROOT/DIR`
///   with one `mv -t` (DIR is `''` for the root itself).
///
/// Lines of `v` (`on_conflict = "skip"`): `OLD NEW SKIP 'PATH'` (see
/// `changed`; NEW `-` for a file deleted locally). One `sha256sum` hashes
/// every regular file among them; a file whose check fails with SKIP = 1
/// loses its staged copy, so the `mv` leaves the container's, and a checked
/// delete is done here (not in `l`) unless it failed its check. `n` instead (the default, overwrite): the names,
/// NUL-separated; their `sha256sum` lines go back in an `H` record and
/// podloop compares them itself.
///
/// So the steady-state cost of a small save is four processes: `dd`, `tar`,
/// one `mv` per folder touched, and the `rm` of the staging folder (and one
/// `sha256sum` when files are checked). `cd` into the folder keeps the
/// argument list linear and the names relative; a refused `mv` is retried
/// file by file only to name the file that was refused. The staging folder
/// is under the root (same filesystem), so a rename is atomic and a reader
/// never sees a half-written file. tar `-m` gives extracted files the
/// current mtime (container watchers fire), `-o` does not force tar's
/// uid/gid onto the container.
const APPLY: &str = r#"
apply() {
root=$1 size=$2 reload=$3 nonce=$4
stage=$1/.podloop-stage-$4
if [ ! -d "$root" ] && ! err=$(mkdir -p -- "$root" 2>&1); then
  take "$size" >/dev/null
  printf 'S\0%s\0' "$err"; return 4
fi
# A cut stream and a failing disk both make tar fail; either way nothing
# is applied, and a cut connection carries no report anyway.
err=$($reader$size 2>/dev/null | tar -x -m -o -f - -C "$root" 2>&1)
code=$?
got=
if [ -f "$stage/z" ]; then read -r got <"$stage/z"; fi
if [ "$code" != 0 ] || [ "$got" != "$nonce" ]; then
  rm -rf -- "$stage"
  [ "$code" != 0 ] || { printf 'T\0%s\0' "tar ended before the batch's end marker"; return 5; }
  # Slow path only: tell "cannot create the staging folder" apart.
  if ! e=$(mkdir -p -- "$stage" 2>&1); then printf 'S\0%s\0' "$e"; return 6; fi
  rm -rf -- "$stage"
  printf 'X\0%s\0' "$err"; return 6
fi
cd -- "$root" 2>/dev/null || cd /
if [ -f "$stage/v" ]; then verify
elif [ -f "$stage/n" ] && command -v xargs >/dev/null 2>&1; then
  printf 'H\0'; xargs -0 -r sha256sum -- <"$stage/n" 2>/dev/null; printf '\0'
fi
while IFS= read -r line; do
  eval "set -- ${line#? }"
  case $line in
  D*)
    cd -- "$root" 2>/dev/null || continue
    for p; do
      case $p in */*) if link_in "$root" "${p%/*}"; then link_refusal "$p"; continue; fi ;; esac
      e=$(rm -rf -- "$p" 2>&1) || printf 'F\0%s\0%s\0' "$p" "$e"
    done ;;
  M*)
    dir=$1; shift
    if [ -n "$dir" ]; then src=$stage/f/$dir dest=$root/$dir at=$dir/; else src=$stage/f dest=$root at=; fi
    if [ -n "$dir" ] && link_in "$root" "$dir"; then
      for n; do link_refusal "$at$n"; done; continue
    fi
    if [ ! -d "$dest" ] && ! e=$(mkdir -p -- "$dest" 2>&1); then
      for n; do printf 'F\0%s\0%s\0' "$at$n" "$e"; done; continue
    fi
    if ! cd -- "$src" 2>/dev/null; then
      for n; do printf 'F\0%s\0%s\0' "$at$n" "staged files missing"; done; continue
    fi
    mv -f -t "$dest" -- "$@" 2>/dev/null && continue
    for n; do
      [ -L "$n" ] || [ -e "$n" ] || continue
      e=$(mv -f -T -- "$n" "$dest/$n" 2>&1) || printf 'F\0%s\0%s\0' "$at$n" "$e"
    done ;;
  esac
done <"$stage/l"
cd -- "$home" 2>/dev/null || cd /
rm -rf -- "$stage"
run_reload "$reload"
}
verify() {
hashed=
set --
while IFS=' ' read -r old new skip word; do
  eval "p=$word"
  if [ -f "$p" ] && [ ! -L "$p" ]; then
    case $p in *"$nl"*) hashed=${hashed}0 ;; *) hashed=${hashed}1; set -- "$@" "$p" ;; esac
  else hashed=${hashed}0
  fi
done <"$stage/v"
if [ $# -gt 0 ]; then sha256sum -- "$@" >"$stage/h" 2>/dev/null; fi
exec 4<"$stage/v"
if [ -f "$stage/h" ]; then exec 5<"$stage/h"; else exec 5</dev/null; fi
while IFS=' ' read -r old new skip word <&4; do
  eval "p=$word"
  known=0
  case $hashed in
  1*) IFS= read -r now <&5; now=${now#\\}; now=${now%% *}; [ -n "$now" ] && known=1 ;;
  esac
  hashed=${hashed#?}
  if changed "$p" "$p" "$old" "$new" "$skip" && [ "$skip" = 1 ]; then
    [ "$new" = - ] || rm -f -- "$stage/f/$p"
  elif [ "$new" = - ]; then
    # A checked delete (skip mode): done here, not in `l`, so a changed
    # file can be kept.
    case $p in */*) if link_in "$root" "${p%/*}"; then link_refusal "$p"; continue; fi ;; esac
    e=$(rm -rf -- "$p" 2>&1) || printf 'F\0%s\0%s\0' "$p" "$e"
  fi
done
known=0
exec 4<&- 5<&-
}
run_reload() {
if [ -n "$1" ]; then
  out=$(sh -c "$1" 2>&1 </dev/null); code=$?
  printf 'O\0%s\0R\0%s\0' "$out" "$code"
fi
return 0
}
"#;

/// `put_one ROOT SIZE RELOAD NONCE PATH OLD NEW SKIP`, the session's fast
/// path for the most common batch, one saved file: SIZE raw bytes follow on
/// stdin (no tar), then the line `NONCE`. `dd` writes them to a temporary
/// file next to the destination and `mv` renames it into place: two
/// processes, both a bare fork in busybox (three when podloop knows what the
/// file held and `sha256sum` checks it: OLD, NEW, SKIP as for `changed`).
/// The trailing nonce is the completion marker: `dd` stops short only at the
/// end of stdin, and then the line is missing, so a cut stream is never
/// renamed into place. A write that fails (a full disk) leaves the rest of
/// the file unread on stdin: return 7, and the session ends. The file is
/// created under umask 022 (mode 0644, as tar would set it); executables,
/// links and deletes go through `apply`.
const PUT_ONE: &str = r#"
put_one() {
root=$1 size=$2 reload=$3 nonce=$4 path=$5 old=${6:-.} new=$7 skip=$8
if [ ! -d "$root" ] && ! err=$(mkdir -p -- "$root" 2>&1); then
  take "$size" >/dev/null; read -r got
  printf 'S\0%s\0' "$err"; return 4
fi
dir=$root refused=
case $path in
*/*)
  dir=$root/${path%/*}
  if link_in "$root" "${path%/*}"; then
    take "$size" >/dev/null; read -r got
    link_refusal "$path"; run_reload "$reload"; return 0
  fi ;;
esac
if [ ! -d "$dir" ] && ! refused=$(mkdir -p -- "$dir" 2>&1); then dir=$root; fi
tmp=$dir/.podloop-$nonce
umask 022
# `true`, not `:`: a failed redirection of a special builtin such as `:`
# ends a non-interactive shell (the whole session), of a regular one not.
if ! { true >"$tmp"; } 2>/dev/null; then
  err=$({ true >"$tmp"; } 2>&1); umask "$mask"
  take "$size" >/dev/null; read -r got
  printf 'S\0%s\0' "$err"; return 4
fi
umask "$mask"
if ! take_to "$tmp" "$size"; then
  err=${err%%"$nl"*}
  rm -f -- "$tmp"; printf 'W\0%s\0%s\0' "$path" "${err##*: }"; return 7
fi
if ! read -r got || [ "$got" != "$nonce" ]; then
  rm -f -- "$tmp"; printf 'T\0%s\0' "the stream ended inside the file"; return 5
fi
if [ -n "$refused" ]; then
  rm -f -- "$tmp"; printf 'F\0%s\0%s\0' "$path" "$refused"
elif changed "$root/$path" "$path" "$old" "$new" "$skip" && [ "$skip" = 1 ]; then
  rm -f -- "$tmp"
elif ! mv -f -T -- "$tmp" "$root/$path" 2>/dev/null; then
  err=$(mv -f -T -- "$tmp" "$root/$path" 2>&1) || { rm -f -- "$tmp"; printf 'F\0%s\0%s\0' "$path" "$err"; }
fi
run_reload "$reload"
}
"#;

/// `agent_start SIZE NONCE`: SIZE bytes of the agent (see
/// `transport/agent.rs`) follow. When this container can run it (x86_64, a
/// writable temporary folder that allows executing, `sh` on PATH), it is
/// written there under a name of its own and `exec`ed in place of this
/// shell: it deletes its file and answers `A`. Otherwise `N` and why, and
/// the shell session goes on (the `I` request that follows is read past).
/// Three processes, once per session: `uname`, `chmod` and the probe.
const AGENT_START: &str = r#"
agent_start() {
why= agent= shell=
case $(uname -m 2>/dev/null) in
x86_64|amd64) ;;
*) why='the container is not x86_64' ;;
esac
if [ -z "$why" ]; then
  # busybox may name its applet without a path; the agent needs one.
  shell=$(command -v sh)
  case $shell in /*) ;; *) shell=/bin/sh ;; esac
  [ -x "$shell" ] || why='no sh to run reload commands with'
fi
if [ -z "$why" ]; then
  for d in "${TMPDIR:-/tmp}" /dev/shm; do
    if [ -d "$d" ] && [ -w "$d" ]; then agent=$d/.podloop-agent-$2; break; fi
  done
  [ -n "$agent" ] || why='no writable temporary folder (/tmp, /dev/shm)'
fi
if [ -n "$why" ]; then
  take "$1" >/dev/null; printf 'N\0%s\0' "$why"; return 0
fi
if ! take_to "$agent" "$1"; then
  rm -f -- "$agent"; printf 'N\0%s\0' "cannot write $agent: ${err##*: }"; return 7
fi
if ! chmod 700 "$agent" 2>/dev/null || ! "$agent" probe >/dev/null 2>&1; then
  rm -f -- "$agent"; printf 'N\0%s\0' "$agent cannot run (a noexec mount?)"; return 0
fi
exec "$agent" serve "$2" "$shell"
}
"#;

/// One batch in one exec. Positional parameters: `$1` remote root, `$2` tar
/// size in bytes, `$3` reload command (may be empty), `$4` the batch's nonce.
pub fn deliver_script() -> String {
    format!(
        "{PRELUDE}{CHECKS}{APPLY}\n{}",
        r#"apply "$1" "$2" "$3" "$4"; code=$?
if [ "$code" = 0 ]; then printf 'K\0'; fi
exit "$code"
"#
    )
}

/// A warm session: a long-lived `sh` that applies batch after batch from
/// stdin, so a save costs one round trip instead of a new connection, TLS
/// handshake and process. Each batch is one header line
/// `KIND SIZE NONCE 'ROOT' 'RELOAD' ['PATH']` (words as [`sh_word`]s): kind
/// `T` is followed by a tar of SIZE bytes for `apply`, kind `F` by one
/// file's SIZE bytes and a line with the nonce for `put_one`, kind `A` by
/// the agent to start in the shell's place (`agent_start`), kind `I` by
/// SIZE bytes meant for the agent, read past when the shell stayed. The
/// answer is the usual records followed by `E\0NONCE\0` (the nonce makes
/// the end marker unforgeable by a name); `I` has none.
pub fn session_script() -> String {
    format!(
        "{PRELUDE}{CHECKS}{APPLY}{PUT_ONE}{AGENT_START}\n{}",
        r#"mask=$(umask)
printf 'H\0'
while IFS=' ' read -r kind size nonce rest; do
  eval "set -- $rest"
  case $kind in
    F) put_one "$1" "$size" "$2" "$nonce" "$3" "$4" "$5" "$6" ;;
    A) agent_start "$size" "$nonce" ;;
    I) take "$size" >/dev/null; continue ;;
    *) apply "$1" "$size" "$2" "$nonce" ;;
  esac
  code=$?
  if [ "$code" = 0 ]; then
    printf 'K\0E\0%s\0' "$nonce"
  else
    printf 'E\0%s\0' "$nonce"
  fi
  # Whatever stopped reading early left stdin out of step: never read on.
  case $code in 0|4) ;; *) exit "$code" ;; esac
done
"#
    )
}

/// The line that starts a tar batch in a session (see [`session_script`]).
pub fn session_header(tar_len: u64, nonce: &str, root: &str, reload: &str) -> Vec<u8> {
    let mut header = format!("T {tar_len} {nonce} ").into_bytes();
    header.extend_from_slice(&sh_word(root.as_bytes()));
    header.push(b' ');
    header.extend_from_slice(&sh_word(reload.as_bytes()));
    header.push(b'\n');
    header
}

/// The line that starts a one-file batch in a session: `size` raw bytes of
/// the file at `path` (relative to `root`) follow, then the line `nonce`.
/// `expect`, when podloop knows what the container held there, turns on the
/// conflict check (see `put_one`).
pub fn session_file_header(
    size: u64,
    nonce: &str,
    root: &str,
    reload: &str,
    path: &[u8],
    expect: Option<&Expect>,
) -> Vec<u8> {
    let mut header = format!("F {size} {nonce} ").into_bytes();
    for word in [root.as_bytes(), reload.as_bytes(), path] {
        header.extend_from_slice(&sh_word(word));
        header.push(b' ');
    }
    header.extend_from_slice(&expect_words(expect));
    header.push(b'\n');
    header
}

/// `OLD NEW SKIP` for the scripts' `changed` check: plain tokens (hex, `-`,
/// `.`, digits), never quoted.
pub fn expect_words(expect: Option<&Expect>) -> Vec<u8> {
    expect_tokens(expect).join(&b' ')
}

/// The three tokens of [`expect_words`], apart (the agent takes them as
/// separate fields).
pub fn expect_tokens(expect: Option<&Expect>) -> [Vec<u8>; 3] {
    let sha = |sha: &Option<[u8; 32]>| match sha {
        Some(sha) => hex::encode(sha).into_bytes(),
        None => b"-".to_vec(),
    };
    match expect {
        None => [b".".to_vec(), b".".to_vec(), b"0".to_vec()],
        Some(e) => [
            sha(&e.held),
            sha(&e.new),
            vec![b'0' + u8::from(e.skip_if_changed)],
        ],
    }
}

/// `bytes` as one single-quoted shell word that stays on one line: `'` is
/// written `'\''` and a newline `'"$nl"'` (the scripts set `nl`). Every other
/// byte is literal inside single quotes, so `eval "set -- WORD"` gives back
/// exactly `bytes` and runs nothing. `bytes` holds no NUL (paths are checked).
pub fn sh_word(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        match b {
            b'\'' => out.extend_from_slice(b"'\\''"),
            b'\n' => out.extend_from_slice(b"'\"$nl\"'"),
            other => out.push(other),
        }
    }
    out.push(b'\'');
    out
}

/// Lists every regular file under `$1` with size, mode and sha256, skipping
/// podloop's own: staging folders (`.podloop-stage-*`) and the one-file
/// temporaries of a batch whose connection died (`.podloop-NONCE`, exactly
/// 16 hex digits, so a user's `.podloop-notes` is listed as any file).
/// Leftovers with podloop's exact names older than 10 minutes (no batch is
/// still writing them) are removed first. Per `xargs` chunk it prints `C\0<n>\0`, the n
/// names NUL-terminated, n `stat` lines (`size mode`, no names), then n
/// `sha256sum` lines, which the parser matches against the names it already
/// knows: that is what makes names with newlines safe (busybox prints them
/// raw, GNU escapes them).
pub const MANIFEST_SCRIPT: &str = concat!(
    r#"
cd "$1" 2>/dev/null || { printf 'N\0'; exit 0; }
for tool in "#,
    manifest_tools!(),
    r#"; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'M\0%s\0' "$tool"; exit 3; }
done
h='[0-9a-f]'; h=$h$h$h$h; h=$h$h$h$h
find . \( -name ".podloop-$h" -o -name ".podloop-stage-$h" \) -mmin +10 \
  -prune -exec rm -rf -- {} + </dev/null >/dev/null 2>&1
find . \( -name ".podloop-$h" -o -name '.podloop-stage-*' \) -prune -o -type f -print0 </dev/null |
  xargs -0 -r sh -c 'printf "C\0%s\0" "$#"; for f; do printf "%s\0" "$f"; done; stat -c "%s %a" -- "$@" && sha256sum -- "$@"' podloop-manifest
"#
);

/// What the deliver script reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliverReport {
    pub missing_tool: Option<String>,
    pub staging_failed: Option<String>,
    pub truncated: Option<String>,
    pub extract_failed: Option<String>,
    pub failed: Vec<(Vec<u8>, String)>,
    pub write_failed: Option<(Vec<u8>, String)>,
    pub conflicts: Vec<RemoteConflict>,
    /// `sha256sum` output for the `n` list (files that are not there have
    /// no line).
    pub hashes: Option<Vec<u8>>,
    pub reload_exit: Option<i32>,
    /// stdout and stderr of `reload`, interleaved as it wrote them.
    pub reload_output: Option<String>,
    pub complete: bool,
}

/// A file the container changed since podloop wrote it (see `changed` in
/// the scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConflict {
    pub path: Vec<u8>,
    pub now: RemoteState,
    pub size: Option<u64>,
    /// Left as the container has it (`on_conflict = "skip"`).
    pub skipped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteState {
    File([u8; 32]),
    Absent,
    NotAFile,
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
            b"H" => report.hashes = Some(it.next().ok_or_else(|| missing("H"))?.to_vec()),
            b"W" => {
                let path = it.next().ok_or_else(|| missing("W"))?.to_vec();
                let reason = text(it.next().ok_or_else(|| missing("W"))?);
                report.write_failed = Some((path, reason));
            }
            b"C" => {
                let path = it.next().ok_or_else(|| missing("C"))?.to_vec();
                let now = text(it.next().ok_or_else(|| missing("C"))?);
                let size = text(it.next().ok_or_else(|| missing("C"))?);
                let skipped = text(it.next().ok_or_else(|| missing("C"))?) == "1";
                let now = match now.as_str() {
                    "-" => RemoteState::Absent,
                    "?" => RemoteState::NotAFile,
                    hex_sha => {
                        let mut sha = [0u8; 32];
                        hex::decode_to_slice(hex_sha, &mut sha).map_err(|_| {
                            format!("conflict record holds `{hex_sha}`, not a sha256")
                        })?;
                        RemoteState::File(sha)
                    }
                };
                report.conflicts.push(RemoteConflict {
                    path,
                    now,
                    size: size.parse().ok(),
                    skipped,
                });
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

/// The conflicts among `checks`, from the `H` record's `sha256sum` lines
/// (in the same order; a file that is gone or not readable has none).
pub fn conflicts_from_hashes(checks: &[(Vec<u8>, Expect)], hashes: &[u8]) -> Vec<RemoteConflict> {
    let mut rest = hashes;
    let mut found = Vec::new();
    for (path, expect) in checks {
        let now = match take_sha_line(&mut rest, path) {
            Ok(sha) => RemoteState::File(sha),
            Err(_) => RemoteState::Absent,
        };
        let state = |sha: Option<[u8; 32]>| sha.map_or(RemoteState::Absent, RemoteState::File);
        if now != state(expect.held) && now != state(expect.new) {
            found.push(RemoteConflict {
                path: path.clone(),
                now,
                size: None,
                skipped: false,
            });
        }
    }
    found
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
