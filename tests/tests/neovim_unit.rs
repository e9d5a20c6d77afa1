//! The Neovim plugin's Lua unit tests (option merging and validation,
//! statusline rendering, root detection), run in a real headless Neovim.

mod neovim_support;

use std::process::Command;
use std::time::Duration;

use neovim_support::{isolate, nvim_or_skip, plugin_dir, run_with_deadline, Finished};

fn run_lua_specs(nvim: &std::path::Path, spec_dir: Option<&std::path::Path>) -> Finished {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(nvim);
    cmd.args(["--headless", "-i", "NONE", "-n", "-u"])
        .arg(plugin_dir().join("tests/run.lua"));
    isolate(&mut cmd, home.path());
    if let Some(dir) = spec_dir {
        cmd.env("PODLOOP_LUA_SPEC_DIR", dir);
    }
    run_with_deadline(cmd, Duration::from_secs(60))
}

fn summary(out: &Finished) -> (usize, usize) {
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed"))
        .unwrap_or_else(|| panic!("no summary line in:\n{}\n{}", out.stdout, out.stderr));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn neovim_lua_unit_tests_pass() {
    let Some(nvim) = nvim_or_skip("neovim_lua_unit_tests_pass") else {
        return;
    };
    let out = run_lua_specs(&nvim, None);
    let (passed, failed) = summary(&out);
    assert!(
        out.status.success() && failed == 0,
        "Lua unit tests failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    // Guards against a runner that silently finds no spec files.
    assert!(passed >= 30, "only {passed} Lua tests ran:\n{}", out.stdout);
    for area in [
        "config_spec / bad types",
        "status_spec / render",
        "root_spec / find_root",
    ] {
        assert!(
            out.stdout.contains(area),
            "no `{area}` tests ran:\n{}",
            out.stdout
        );
    }
}

#[test]
fn neovim_lua_runner_reports_a_failing_spec() {
    let Some(nvim) = nvim_or_skip("neovim_lua_runner_reports_a_failing_spec") else {
        return;
    };
    let specs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        specs.path().join("broken_spec.lua"),
        "describe('x', function()\n  it('passes', function() eq(1, 1) end)\n  it('fails', function() eq('a', 'b') end)\nend)\n",
    )
    .expect("write spec");
    let out = run_lua_specs(&nvim, Some(specs.path()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "runner must exit 1:\n{}",
        out.stdout
    );
    assert_eq!(summary(&out), (1, 1), "{}", out.stdout);
    assert!(
        out.stdout.contains("FAIL broken_spec / x: fails"),
        "{}",
        out.stdout
    );
}
