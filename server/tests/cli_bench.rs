//! `podloop bench --quick` end to end: the real binary starts its own
//! kubesim, drives `podloop lsp` over stdio and runs `kubectl cp` beside it.
//! This checks that every scenario runs and reports coherent numbers; the
//! speed targets are the bench's business, not a test's.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn kubectl_available() -> bool {
    Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33").exists()
        || Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
}

fn figure(report: &Value, name: &str) -> f64 {
    report["figures"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no figure `{name}` in {report:#}"))
}

fn baseline(report: &Value, name: &str) -> f64 {
    report["baseline"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no baseline `{name}` in {report:#}"))
}

#[test]
fn quick_bench_reports_every_scenario_with_coherent_numbers() {
    if !kubectl_available() || !Path::new("/bin/busybox").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "kubectl and busybox are required in CI"
        );
        eprintln!("skipped: the bench needs kubectl and /bin/busybox");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_podloop"))
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(doc["quick"], true);
    assert!(doc["machine"]["cpus"].as_u64().unwrap() >= 1);

    let scenarios = doc["scenarios"].as_object().unwrap();
    let keys: Vec<&str> = scenarios.keys().map(String::as_str).collect();
    for key in [
        "single_save",
        "burst",
        "replacement",
        "fan_out",
        "remote",
        "big_file",
    ] {
        let report = &scenarios[key];
        assert!(report.is_object(), "scenario {key} missing from {keys:?}");
        assert!(report["error"].is_null(), "{key}: {}", report["error"]);
        let targets = report["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{key} has no targets");
        assert!(targets.iter().all(|t| t["met"].is_boolean()));
        assert!(report["ratio"].as_f64().is_some_and(|r| r > 0.0), "{key}");
        // The printed table names the scenario and says whether each target is met.
        let title = report["title"].as_str().unwrap();
        assert!(stdout.contains(title), "{title} not in the table");
        for figures in ["figures", "baseline"] {
            for (name, value) in report[figures].as_object().unwrap() {
                let v = value.as_f64().unwrap();
                assert!(v.is_finite() && v >= 0.0, "{key}.{figures}.{name} = {v}");
            }
        }
    }
    assert!(stdout.contains("MET"), "{stdout}");

    let single = &scenarios["single_save"];
    assert_eq!(figure(single, "saves"), 20.0);
    let (p50, p90, p99, max) = (
        figure(single, "p50"),
        figure(single, "p90"),
        figure(single, "p99"),
        figure(single, "max"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{single:#}"
    );
    assert!(baseline(single, "p50") > 0.0);

    let burst = &scenarios["burst"];
    assert_eq!(figure(burst, "files"), 100.0);
    assert!(figure(burst, "all in pod") > 0.0);
    assert!(baseline(burst, "extrapolated to all files") > baseline(burst, "sample"));

    // The fresh pod received the changed files, and not the whole tree.
    let replacement = &scenarios["replacement"];
    let sent = figure(replacement, "bytes sent to the fresh pod");
    assert!(
        sent >= figure(replacement, "changed bytes"),
        "{replacement:#}"
    );
    assert!(
        sent < baseline(replacement, "bytes (file content)"),
        "{replacement:#}"
    );

    let fan = &scenarios["fan_out"];
    assert_eq!(figure(fan, "replicas"), 3.0);
    assert!(figure(fan, "p50") > 0.0);
    // The floor ran: its saves landed in one pod and in all three, and its
    // transport spent CPU on each.
    assert!(figure(fan, "floor p50, one replica") > 0.0, "{fan:#}");
    assert!(figure(fan, "floor p50, every replica") > 0.0, "{fan:#}");
    assert!(
        figure(fan, "floor transport CPU per save, every replica") > 0.0,
        "{fan:#}"
    );

    // Nothing beats the speed of light: every save pays the added round
    // trip, and the warm session means no new exec per save.
    let remote = &scenarios["remote"];
    assert!(figure(remote, "p50") >= figure(remote, "RTT"), "{remote:#}");
    // The probe's echo crosses the same proxy: never faster than nominal,
    // and a save never beats the link's real round trip either.
    let measured = figure(remote, "RTT measured through the proxy");
    assert!(measured >= figure(remote, "RTT"), "{remote:#}");
    assert!(figure(remote, "p50") >= measured, "{remote:#}");
    assert_eq!(figure(remote, "new exec connections per save"), 0.0);
    // Every replica behind the same link: its saves pay the round trip too.
    assert_eq!(figure(remote, "fan-out replicas"), 3.0);
    assert!(figure(remote, "fan-out p50") >= measured, "{remote:#}");
    assert!(figure(remote, "fan-out p50 vs one replica") > 0.0);

    let big = &scenarios["big_file"];
    assert_eq!(figure(big, "size"), 16.0 * 1024.0 * 1024.0);
    assert!(figure(big, "throughput") > 0.0);
    assert!(figure(big, "server peak RSS") >= figure(big, "server RSS before"));
}
