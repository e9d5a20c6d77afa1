//! A conflict end to end through the language server: a file edited in the
//! pod is not overwritten under `on_conflict = "skip"`, its diagnostic
//! carries the code `conflict`, the server offers a quick fix for it, and
//! running that fix sends the local file and clears the diagnostic.

mod common;

use common::{file_uri, kube_starter, write_file, TestServer};
use kubesim::{Image, PodTemplate, Sim, SimOptions};
use serde_json::{json, Value};

const CONFIG: &str = r#"namespace = "default"
on_conflict = "skip"

[[sync]]
name = "api"
local = "src"
remote = "/app"
selector = "app=api"
container = "app"
"#;

fn is_conflict(diagnostics: &[Value]) -> bool {
    diagnostics.iter().any(|d| d["code"] == "conflict")
}

#[tokio::test]
async fn a_conflict_diagnostic_offers_a_quick_fix_that_overwrites_the_pods_copy() {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    sim.create_pod(
        PodTemplate::new("api-1")
            .label("app", "api")
            .container("app", Image::Busybox),
    )
    .await
    .unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("podloop.toml"), CONFIG).unwrap();
    let server = TestServer::builder()
        .workspace(workspace.path())
        .engine(kube_starter(&sim))
        .build()
        .await;
    let capabilities = &server.initialize_result()["capabilities"];
    assert_eq!(
        capabilities["codeActionProvider"]["codeActionKinds"],
        json!(["quickfix"])
    );
    assert!(capabilities["executeCommandProvider"]["commands"]
        .as_array()
        .unwrap()
        .contains(&json!("podloop.overwrite")));

    let file = write_file(workspace.path(), "src/conf.txt", "local v1\n");
    server.save(&file).await;
    let in_pod = || {
        sim.read_file("default", "api-1", "app", "/app/conf.txt")
            .ok()
    };
    server
        .eventually("v1 in the pod", || {
            (in_pod().as_deref() == Some(&b"local v1\n"[..])).then_some(())
        })
        .await;
    // Someone edits it in a shell in the pod; the user saves again.
    let root = sim.container_root("default", "api-1", "app").unwrap();
    std::fs::write(root.join("app/conf.txt"), b"edited in the pod\n").unwrap();
    std::fs::write(&file, "local v2\n").unwrap();
    server.save(&file).await;
    let diagnostics = server.wait_for_diagnostics(&file, is_conflict).await;
    let conflict = diagnostics
        .iter()
        .find(|d| d["code"] == "conflict")
        .unwrap()
        .clone();
    assert_eq!(conflict["source"], "podloop");
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{conflict}"
    );
    assert_eq!(in_pod().as_deref(), Some(&b"edited in the pod\n"[..]));

    // No quick fix for other diagnostics; one for the conflict.
    let uri = file_uri(&file);
    let range = json!({"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}});
    let none = server
        .request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": range,
                   "context": {"diagnostics": [{"range": range, "message": "x", "source": "other"}]}}),
        )
        .await;
    assert_eq!(none["result"], Value::Null, "{none}");
    let actions = server
        .request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": range,
                   "context": {"diagnostics": [conflict]}}),
        )
        .await;
    let action = &actions["result"][0];
    assert_eq!(action["kind"], "quickfix", "{actions}");
    assert_eq!(action["command"]["command"], "podloop.overwrite");
    let response = server
        .request(
            "workspace/executeCommand",
            json!({"command": "podloop.overwrite", "arguments": action["command"]["arguments"]}),
        )
        .await;
    assert!(response.get("error").is_none(), "{response}");
    server
        .eventually("the local file over the pod's copy", || {
            (in_pod().as_deref() == Some(&b"local v2\n"[..])).then_some(())
        })
        .await;
    server
        .wait_for_diagnostics(&file, |d| !is_conflict(d))
        .await;

    // Once resolved, the next save is checked against what was just written.
    std::fs::write(&file, "local v3\n").unwrap();
    server.save(&file).await;
    server
        .eventually("v3 in the pod", || {
            (in_pod().as_deref() == Some(&b"local v3\n"[..])).then_some(())
        })
        .await;
    let bad = server
        .request(
            "workspace/executeCommand",
            json!({"command": "podloop.overwrite", "arguments": [42]}),
        )
        .await;
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("podloop.overwrite takes file URIs")),
        "{bad}"
    );
    server.shutdown().await;
}
