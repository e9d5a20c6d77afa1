//! A tar stream whose exact length is known before the first byte is sent.
//!
//! The remote script reads exactly that many bytes (`dd count=N`), because a
//! v4 exec cannot signal end of stdin and busybox tar waits for EOF even after
//! the end-of-archive marker. Headers are built here (GNU long names for paths
//! over 100 bytes, so any byte string travels); file content is streamed from
//! disk by the caller between them.

use std::time::{SystemTime, UNIX_EPOCH};

pub const BLOCK: u64 = 512;

/// Bytes of zero padding after `size` bytes of content.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The two zero blocks that end an archive.
pub const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    File { mode: u32 },
    Symlink,
}

/// The header block(s) for one member: an optional GNU long-name and
/// long-link record, then the ustar header itself. Content (for files) and
/// its padding follow separately.
pub fn member_header(name: &[u8], kind: HeaderKind, size: u64, link_target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    if name.len() > 100 {
        long_record(&mut out, tar::EntryType::GNULongName, name);
    }
    if link_target.len() > 100 {
        long_record(&mut out, tar::EntryType::GNULongLink, link_target);
    }
    let mut header = tar::Header::new_gnu();
    {
        let old = header.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link_target.len().min(100);
        old.linkname[..l].copy_from_slice(&link_target[..l]);
    }
    match kind {
        HeaderKind::File { mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_size(size);
        }
        HeaderKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
        }
    }
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(now_secs());
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out
}

fn long_record(out: &mut Vec<u8>, kind: tar::EntryType, value: &[u8]) {
    let mut header = tar::Header::new_gnu();
    let marker = b"././@LongLink";
    header.as_old_mut().name[..marker.len()].copy_from_slice(marker);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    // GNU tar writes the name NUL-terminated; busybox accepts both forms.
    let len = value.len() as u64 + 1;
    header.set_size(len);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(value);
    out.push(0);
    out.resize(out.len() + padding(len) as usize, 0);
}

/// A complete small member (header, content, padding) held in memory: used
/// for podloop's own metadata files inside the stream.
pub fn small_file(name: &[u8], content: &[u8]) -> Vec<u8> {
    let mut out = member_header(
        name,
        HeaderKind::File { mode: 0o600 },
        content.len() as u64,
        b"",
    );
    out.extend_from_slice(content);
    out.resize(out.len() + padding(content.len() as u64) as usize, 0);
    out
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, kind, content, link target)
    type Member<'a> = (&'a [u8], HeaderKind, &'a [u8], &'a [u8]);

    fn archive(members: &[Member]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, content, link) in members {
            out.extend(member_header(name, *kind, content.len() as u64, link));
            if let HeaderKind::File { .. } = kind {
                out.extend_from_slice(content);
                out.resize(out.len() + padding(content.len() as u64) as usize, 0);
            }
        }
        out.extend_from_slice(&END_OF_ARCHIVE);
        out
    }

    #[test]
    fn long_names_and_links_round_trip_through_the_tar_crate() {
        let long_name = [b'x'; 180];
        let long_link = [b'y'; 150];
        let bytes = archive(&[
            (b"f/short", HeaderKind::File { mode: 0o755 }, b"hello", b""),
            (&long_name, HeaderKind::File { mode: 0o644 }, b"", b""),
            (b"f/link", HeaderKind::Symlink, b"", &long_link),
            (
                b"f/\xff\nodd $(x)",
                HeaderKind::File { mode: 0o644 },
                &[7u8; 513],
                b"",
            ),
        ]);
        assert_eq!(bytes.len() % 512, 0);
        let mut reader = tar::Archive::new(&bytes[..]);
        let entries: Vec<_> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let mode = e.header().mode().unwrap();
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut content).unwrap();
                (path, link, mode, content)
            })
            .collect();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, b"f/short");
        assert_eq!(entries[0].2, 0o755);
        assert_eq!(entries[0].3, b"hello");
        assert_eq!(entries[1].0, long_name.to_vec());
        assert_eq!(entries[2].1.as_deref(), Some(&long_link[..]));
        assert_eq!(entries[3].0, b"f/\xff\nodd $(x)".to_vec());
        assert_eq!(entries[3].3, vec![7u8; 513]);
    }

    #[test]
    fn padding_rounds_up_to_a_block() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
