//! Properties over arbitrary input: filename encoding through real shells
//! (no byte of a name is ever run), path mapping (nothing lands outside
//! `remote`), config parser (errors point inside the file).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use podloop::engine::config;
use podloop::engine::mapping::link_escapes;
use podloop::engine::RelPath;
use podloop::transport::remote::sh_word;
use proptest::prelude::*;

/// The shells a container may have: the host's `sh` (dash) and busybox.
fn shells() -> Vec<Vec<String>> {
    let mut out = vec![vec!["sh".to_string()]];
    for busybox in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(busybox).exists() {
            out.push(vec![busybox.to_string(), "sh".to_string()]);
            break;
        }
    }
    out
}

/// What the delivery script does with a quoted name: `eval "set -- WORD"`,
/// then uses `$1`. A canary file shows whether anything ran.
fn round_trip(shell: &[String], name: &[u8], canary_dir: &Path) -> Vec<u8> {
    let mut word = b"nl='\n'\neval \"set -- ".to_vec();
    // The word goes inside double quotes for eval: as the script reads it
    // from a record line, escape what double quotes would interpret.
    for &b in &sh_word(name) {
        if matches!(b, b'"' | b'\\' | b'$' | b'`') {
            word.push(b'\\');
        }
        word.push(b);
    }
    word.extend_from_slice(b"\"\nprintf '%s' \"$1\"\n");
    let out = Command::new(&shell[0])
        .args(&shell[1..])
        .arg("-c")
        .arg(OsStr::from_bytes(&word))
        .current_dir(canary_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_file_name_survives_the_shell_quoting_and_runs_nothing(
        name in proptest::collection::vec(1u8..=255, 1..40)
            .prop_map(|mut v| { v.retain(|b| *b != b'/'); if v.is_empty() { v.push(b'x'); } v }),
        hostile in prop_oneof![
            Just(&b"$(touch pwned)"[..]), Just(&b"`touch pwned`"[..]), Just(&b"'; touch pwned; '"[..]),
            Just(&b"\"$(touch pwned)\""[..]), Just(&b"\n touch pwned \n"[..]), Just(&b"$nl"[..]),
            Just(&b"\\'\\\\"[..]), Just(&b"-n"[..]), Just(&b"*"[..]),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        for candidate in [name.clone(), [&name[..], hostile].concat(), hostile.to_vec()] {
            for shell in shells() {
                let back = round_trip(&shell, &candidate, dir.path());
                prop_assert_eq!(&back, &candidate, "{:?} changed the name", shell);
            }
        }
        prop_assert!(!dir.path().join("pwned").exists(), "a name ran as a command");
    }

    #[test]
    fn a_link_that_does_not_escape_resolves_inside_the_mapping(
        link in proptest::collection::vec("[a-z]{1,3}|\\.\\.|\\.", 1..5),
        target in proptest::collection::vec("[a-z]{1,3}|\\.\\.|\\.|", 0..6),
        absolute in any::<bool>(),
    ) {
        let link_path = link.join("/");
        let Some(link_rel) = RelPath::from_relative(Path::new(&link_path)) else {
            return Ok(());
        };
        let mut target_text = target.join("/");
        if absolute {
            target_text.insert(0, '/');
        }
        if !link_escapes(&link_rel, target_text.as_bytes()) {
            prop_assert!(!absolute || target_text.is_empty(), "absolute target accepted: {}", target_text);
            // Resolve lexically from the link's folder inside a root.
            let mut depth: Vec<&[u8]> = link_rel.segments().collect();
            depth.pop();
            for seg in target_text.as_bytes().split(|b| *b == b'/') {
                match seg {
                    b"" | b"." => {}
                    b".." => {
                        prop_assert!(depth.pop().is_some(), "{} from {} escapes", target_text, link_path);
                    }
                    s => depth.push(s),
                }
            }
        }
    }

    #[test]
    fn no_local_path_maps_outside_the_mapping(
        segments in proptest::collection::vec(prop_oneof![
            Just("..".to_string()), Just(".".to_string()), Just("".to_string()),
            "[a-z $()'\\n]{1,5}",
        ], 0..8),
    ) {
        if let Some(rel) = RelPath::from_relative(Path::new(&segments.join("/"))) {
            // The remote path is root + rel: no segment may climb.
            let remote = [&b"/app/"[..], rel.as_bytes()].concat();
            let mut depth = 0i32;
            for seg in remote[1..].split(|b| *b == b'/') {
                prop_assert!(seg != b".." && seg != b"." && !seg.is_empty(), "{:?}", remote);
                depth += 1;
            }
            prop_assert!(depth >= 2);
        }
    }

    #[test]
    fn config_errors_point_inside_the_file(
        lines in proptest::collection::vec(prop_oneof![
            Just("[[sync]]".to_string()),
            Just("local = \"src\"".to_string()),
            Just("remote = \"/app\"".to_string()),
            Just("remote = \"app\"".to_string()),
            Just("remote = \"/\"".to_string()),
            Just("selector = \"app=api\"".to_string()),
            Just("selector = \"app==\"".to_string()),
            Just("pod = \"x\"".to_string()),
            Just("bogus = 1".to_string()),
            Just("max_file_size = \"12XB\"".to_string()),
            Just("on_conflict = \"maybe\"".to_string()),
            Just("exclude = [\"[\"]".to_string()),
            Just("[[sync]".to_string()),
            "[a-z_]{1,8} = \"[a-z/]{0,6}\"",
        ], 0..14),
    ) {
        let text = lines.join("\n");
        let line_count = lines.len().max(1) as u32;
        if let Err(config::ConfigErrors(errors)) = config::parse(Path::new("/w/podloop.toml"), &text) {
            prop_assert!(!errors.is_empty());
            for e in errors {
                prop_assert!(e.line < line_count, "line {} of {}: {}", e.line, line_count, e.message);
                prop_assert!(!e.message.is_empty());
            }
        } else if let Ok(cfg) = config::parse(Path::new("/w/podloop.toml"), &text) {
            for m in &cfg.mappings {
                prop_assert!(m.remote.starts_with('/') && m.remote != "/", "{}", m.remote);
                prop_assert!(m.local.starts_with("/w"), "{}", m.local.display());
            }
        }
    }
}
