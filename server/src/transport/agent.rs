//! The container agent (`agent/`): a static x86_64 executable of a few
//! kilobytes that a warm session copies into the container once and
//! `exec`s in place of its `sh`. It speaks the session's batches and
//! records, but applies a one-file save without starting a process (the
//! shell needs `dd`, `sha256sum` and `mv`, about 1 ms of a container's CPU
//! per save). Anything the agent cannot be used for (another architecture,
//! no writable temporary folder, a `noexec` mount, `agent = false`) leaves
//! the shell session in place: same results, more processes.
//!
//! Requests are a line `KIND SIZE NONCE HLEN`, HLEN bytes of netstrings,
//! then SIZE bytes of body (see `agent/src/serve.rs`). The upgrade itself
//! is a shell-session request (`A`, see `remote::session_script`).

use super::payload::Expect;
use super::remote;

/// The freestanding agent, built by `server/build.rs`; empty when this
/// build could not make it.
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/podloop-agent"));

pub fn binary() -> Option<&'static [u8]> {
    (!BINARY.is_empty()).then_some(BINARY)
}

/// What a shell session sends to become an agent session: the `A` request
/// with the binary, then the `I` request with the deliver script the agent
/// runs tar batches with (a shell that declined reads past it). The answer
/// ends with `E\0NONCE\0`; see [`upgrade_answer`].
pub fn upgrade_request(binary: &[u8], nonce: &str) -> Vec<u8> {
    let script = remote::deliver_script();
    let mut request = format!("A {} {nonce}\n", binary.len()).into_bytes();
    request.extend_from_slice(binary);
    request.extend_from_slice(format!("I {} {nonce} 0\n", script.len()).as_bytes());
    request.extend_from_slice(script.as_bytes());
    request
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// The agent runs: the session now speaks its dialect.
    Started,
    /// The shell stays, for this reason.
    Declined(String),
}

/// The records before `E\0NONCE\0` of an upgrade.
pub fn upgrade_answer(records: &[u8]) -> Upgrade {
    let mut fields = records.split(|b| *b == 0);
    match fields.next() {
        Some(b"A") => Upgrade::Started,
        Some(b"N") => Upgrade::Declined(
            String::from_utf8_lossy(fields.next().unwrap_or_default())
                .trim()
                .to_string(),
        ),
        _ => Upgrade::Declined(format!(
            "unexpected answer `{}`",
            String::from_utf8_lossy(records).escape_debug()
        )),
    }
}

fn netstring(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(format!("{}:", field.len()).as_bytes());
    out.extend_from_slice(field);
    out.push(b',');
}

fn request(kind: char, size: u64, nonce: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut header = Vec::new();
    for field in fields {
        netstring(&mut header, field);
    }
    let mut request = format!("{kind} {size} {nonce} {}\n", header.len()).into_bytes();
    request.extend_from_slice(&header);
    request
}

/// Starts a one-file batch: `size` bytes of the file follow, then the line
/// `nonce` (as on the shell session).
pub fn file_header(
    size: u64,
    nonce: &str,
    root: &str,
    reload: &str,
    path: &[u8],
    expect: Option<&Expect>,
) -> Vec<u8> {
    let [old, new, skip] = remote::expect_tokens(expect);
    request(
        'F',
        size,
        nonce,
        &[root.as_bytes(), reload.as_bytes(), path, &old, &new, &skip],
    )
}

/// Starts a tar batch of `tar_len` bytes.
pub fn tar_header(tar_len: u64, nonce: &str, root: &str, reload: &str) -> Vec<u8> {
    request('T', tar_len, nonce, &[root.as_bytes(), reload.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_names_as_netstrings() {
        let header = file_header(3, "00ff", "/app", "", b"a\nb c", None);
        assert_eq!(
            header,
            b"F 3 00ff 30\n4:/app,0:,5:a\nb c,1:.,1:.,1:0,".to_vec()
        );
        assert_eq!(
            tar_header(1024, "00ff", "/app", "make"),
            b"T 1024 00ff 14\n4:/app,4:make,".to_vec()
        );
    }

    #[test]
    fn upgrade_answers() {
        assert_eq!(upgrade_answer(b"A\0"), Upgrade::Started);
        assert_eq!(
            upgrade_answer(b"N\0the container is not x86_64\0K\0"),
            Upgrade::Declined("the container is not x86_64".into())
        );
        assert!(matches!(upgrade_answer(b"huh"), Upgrade::Declined(_)));
    }
}
