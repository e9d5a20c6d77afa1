//! The language server end to end over in-memory JSON-RPC pipes, with the
//! real engine and an in-memory cluster (`common::fake_cluster`).

mod common;

use common::fake_cluster::FakeCluster;
use common::{write_file, TestServer, TestServerBuilder};
use podloop::engine::ClusterError;
use serde_json::{json, Value};

const CONFIG: &str = r#"[[sync]]
name = "api"
local = "src"
remote = "/app"
selector = "app=api"
"#;

fn workspace_with_config(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("podloop.toml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    dir
}

fn one_pod_cluster() -> FakeCluster {
    let cluster = FakeCluster::new();
    cluster.add_pod("default", "api-1", &[("app", "api")], "app");
    cluster
}

/// The `CONFIG` workspace and `one_pod_cluster`, served to a client that
/// `client` may give other capabilities or initialization options.
async fn one_pod_server(
    client: impl FnOnce(TestServerBuilder) -> TestServerBuilder,
) -> (tempfile::TempDir, FakeCluster, TestServer) {
    one_pod_server_in(workspace_with_config(CONFIG), client).await
}

async fn one_pod_server_in(
    workspace: tempfile::TempDir,
    client: impl FnOnce(TestServerBuilder) -> TestServerBuilder,
) -> (tempfile::TempDir, FakeCluster, TestServer) {
    let cluster = one_pod_cluster();
    let builder = TestServer::builder()
        .workspace(workspace.path())
        .engine(cluster.starter());
    let server = client(builder).build().await;
    (workspace, cluster, server)
}

/// A client that watches files itself (dynamic registration), so the server
/// runs no watcher of its own.
fn self_watching_client() -> Value {
    json!({
        "window": {"workDoneProgress": true},
        "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}}
    })
}

fn is_settled_ok(status: &Value) -> bool {
    status["quiescent"] == true && status["health"] == "ok"
}

#[tokio::test]
async fn initialize_advertises_save_sync_commands_and_file_operations() {
    let (_workspace, _cluster, server) = one_pod_server(|client| client).await;
    let response = json!({"result": server.initialize_result().clone()});
    let capabilities = &response["result"]["capabilities"];
    assert_eq!(
        capabilities["textDocumentSync"],
        json!({"openClose": true, "change": 0, "save": {"includeText": false}})
    );
    let commands = capabilities["executeCommandProvider"]["commands"]
        .as_array()
        .unwrap();
    for command in [
        "podloop.syncAll",
        "podloop.reload",
        "podloop.pause",
        "podloop.resume",
        "podloop.status",
    ] {
        assert!(commands.contains(&json!(command)), "{command} missing");
    }
    let file_operations = &capabilities["workspace"]["fileOperations"];
    for operation in ["didCreate", "didRename", "didDelete"] {
        assert!(
            file_operations[operation].is_object(),
            "{operation} missing"
        );
    }
    assert_eq!(response["result"]["serverInfo"]["name"], "podloop");
}

#[tokio::test]
async fn a_saved_file_lands_in_the_pod_and_status_reports_it() {
    let (workspace, cluster, server) = one_pod_server(|client| client).await;

    let file = write_file(workspace.path(), "src/main.py", "print('v1')\n");
    server.save(&file).await;

    let content = server
        .eventually("main.py in the pod", || {
            cluster.file("api-1", "/app/main.py")
        })
        .await;
    assert_eq!(content, b"print('v1')\n");
    let status = server.wait_for_status(is_settled_ok).await;
    // The batch that carried the file was reported with its size.
    assert!(
        server.statuses().iter().any(|status| {
            status["targets"][0]["lastSync"]["files"] == 1
                && status["targets"][0]["lastSync"]["bytes"] == 12
        }),
        "no status reported the batch: {:?}",
        server.statuses()
    );
    let target = &status["targets"][0];
    assert_eq!(target["pod"], "api-1");
    assert_eq!(target["mapping"], "api");
    assert_eq!(target["state"], "synced");
    assert_eq!(status["state"], "idle");
    assert_eq!(status["pending"], 0);
    let at = target["lastSync"]["at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "not RFC 3339: {at}");

    // One logMessage line per batch.
    server
        .wait_for_notification("window/logMessage", |params| {
            params["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty())
        })
        .await;
    let outcome = server.shutdown().await;
    assert!(outcome.shutdown_requested);
    assert_eq!(outcome.exit_code(), 0);
}

#[tokio::test]
async fn a_burst_of_fifty_saves_costs_fewer_deliveries_and_every_file_arrives() {
    let (workspace, cluster, server) = one_pod_server(|client| client).await;

    let files: Vec<_> = (0..50)
        .map(|index| {
            write_file(
                workspace.path(),
                &format!("src/module_{index:02}.py"),
                &format!("value = {index}\n"),
            )
        })
        .collect();
    for file in &files {
        server.save_only(file).await;
    }
    server
        .wait_for_status(|status| is_settled_ok(status) && status["pending"] == 0)
        .await;
    // Quiescent can be seen between two batches only if nothing is pending;
    // every file must be there once it is.
    for (index, _) in files.iter().enumerate() {
        let remote = format!("/app/module_{index:02}.py");
        assert_eq!(
            cluster.file("api-1", &remote),
            Some(format!("value = {index}\n").into_bytes()),
            "{remote}"
        );
    }
    let deliveries = cluster.deliveries();
    assert!(
        deliveries.len() < 50,
        "50 saves took {} deliveries",
        deliveries.len()
    );
}

#[tokio::test]
async fn a_failed_delivery_puts_an_error_on_the_file_and_recovery_clears_it() {
    let (workspace, cluster, server) = one_pod_server(|client| client).await;
    let file = write_file(workspace.path(), "src/app.py", "ok = 1\n");
    server.save(&file).await;
    server.wait_for_status(is_settled_ok).await;

    cluster.set_failing(Some(ClusterError::Permanent(
        "container `app` has no `tar`: install it in the image".into(),
    )));
    std::fs::write(&file, "ok = 2\n").unwrap();
    server.save(&file).await;
    let diagnostics = server
        .wait_for_diagnostics(&file, |diagnostics| !diagnostics.is_empty())
        .await;
    let error = &diagnostics[0];
    assert_eq!(error["severity"], 1, "{error}");
    assert_eq!(error["source"], "podloop");
    assert_eq!(error["range"]["start"]["line"], 0);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("api-1"),
        "does not name the pod: {message}"
    );
    assert_eq!(
        cluster.file("api-1", "/app/app.py").as_deref(),
        Some(&b"ok = 1\n"[..])
    );

    assert!(
        message.contains("has no `tar`"),
        "does not say why: {message}"
    );

    cluster.set_failing(None);
    // A permanent failure waits for a change: the next save succeeds and
    // clears the error.
    server.save(&file).await;
    server
        .wait_for_diagnostics(&file, |diagnostics| diagnostics.is_empty())
        .await;
    assert_eq!(
        cluster.file("api-1", "/app/app.py").as_deref(),
        Some(&b"ok = 2\n"[..])
    );
}

#[tokio::test]
async fn a_bad_config_gets_a_diagnostic_on_the_offending_line() {
    let workspace = workspace_with_config(
        "[[sync]]\nname = \"api\"\nlocal = \"src\"\nremote = \"/\"\nselector = \"app=api\"\n",
    );
    let (workspace, cluster, server) = one_pod_server_in(workspace, |client| client).await;
    let config = workspace.path().join("podloop.toml");
    let diagnostics = server
        .wait_for_diagnostics(&config, |diagnostics| !diagnostics.is_empty())
        .await;
    assert_eq!(
        diagnostics[0]["range"]["start"]["line"], 3,
        "{diagnostics:?}"
    );
    assert_eq!(diagnostics[0]["severity"], 1);

    // Fixing and saving the config clears it and the mapping starts working.
    std::fs::write(&config, CONFIG).unwrap();
    server.save(&config).await;
    server
        .wait_for_diagnostics(&config, |diagnostics| diagnostics.is_empty())
        .await;
    let file = write_file(workspace.path(), "src/after_fix.txt", "fixed\n");
    server.save(&file).await;
    let content = server
        .eventually("after_fix.txt in the pod", || {
            cluster.file("api-1", "/app/after_fix.txt")
        })
        .await;
    assert_eq!(content, b"fixed\n");
}

#[tokio::test]
async fn the_status_command_returns_the_status_object() {
    let (_workspace, _cluster, server) = one_pod_server(|client| client).await;
    server.wait_for_status(is_settled_ok).await;
    let status = server.execute_command("podloop.status").await;
    for key in [
        "health",
        "state",
        "quiescent",
        "message",
        "pending",
        "targets",
    ] {
        assert!(status.get(key).is_some(), "{key} missing from {status}");
    }
    assert_eq!(status["targets"][0]["pod"], "api-1");

    let unknown = server
        .request(
            "workspace/executeCommand",
            json!({"command": "podloop.nope", "arguments": []}),
        )
        .await;
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|text| text.contains("podloop.syncAll")),
        "{unknown}"
    );
}

#[tokio::test]
async fn sync_all_pushes_files_changed_behind_the_editors_back_and_reports_progress() {
    // A client that can watch files itself, so the server runs no watcher
    // and only syncAll can find the file written below.
    let (workspace, cluster, server) =
        one_pod_server(|client| client.capabilities(self_watching_client())).await;
    server.wait_for_status(is_settled_ok).await;
    write_file(workspace.path(), "src/generated.rs", "// generated\n");

    let report = server.execute_command("podloop.syncAll").await;
    assert!(report["filesSent"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["failures"], json!([]));
    assert_eq!(
        cluster.file("api-1", "/app/generated.rs").as_deref(),
        Some(&b"// generated\n"[..])
    );
    // The command's own work-done progress: created, begun and ended.
    let created = server.server_requests("window/workDoneProgress/create");
    let token = created
        .iter()
        .map(|params| params["token"].clone())
        .find(|token| {
            token
                .as_str()
                .is_some_and(|text| text.starts_with("podloop/command/"))
        })
        .expect("no progress token created for syncAll");
    server
        .wait_for_notification("$/progress", |params| {
            params["token"] == token && params["value"]["kind"] == "end"
        })
        .await;
}

#[tokio::test]
async fn pause_holds_saves_and_resume_delivers_them() {
    let (workspace, cluster, server) = one_pod_server(|client| client).await;
    server.wait_for_status(is_settled_ok).await;

    server.execute_command("podloop.pause").await;
    server
        .wait_for_status(|status| status["state"] == "paused")
        .await;
    let file = write_file(workspace.path(), "src/held.txt", "held\n");
    server.save(&file).await;
    server
        .wait_for_status(|status| status["state"] == "paused" && status["pending"] == 1)
        .await;
    assert_eq!(cluster.file("api-1", "/app/held.txt"), None);

    server.execute_command("podloop.resume").await;
    server.wait_for_status(is_settled_ok).await;
    assert_eq!(
        cluster.file("api-1", "/app/held.txt").as_deref(),
        Some(&b"held\n"[..])
    );
}

#[tokio::test]
async fn initialization_options_can_start_paused() {
    let (_workspace, _cluster, server) =
        one_pod_server(|client| client.init_options(json!({"paused": true, "logLevel": "debug"})))
            .await;
    server
        .wait_for_status(|status| status["state"] == "paused")
        .await;

    server
        .notify(
            "workspace/didChangeConfiguration",
            json!({"settings": {"podloop": {"paused": false}}}),
        )
        .await;
    server.wait_for_status(is_settled_ok).await;
}

#[tokio::test]
async fn clients_with_dynamic_registration_get_watchers_for_mapped_folders() {
    let (workspace, cluster, server) = one_pod_server(|client| {
        client.capabilities(json!({
            "window": {"workDoneProgress": true},
            "workspace": {"didChangeWatchedFiles":
                {"dynamicRegistration": true, "relativePatternSupport": true}}
        }))
    })
    .await;
    server.wait_for_status(is_settled_ok).await;
    let src_uri = common::file_uri(&workspace.path().join("src"));
    let registration = server
        .eventually("a watcher registration for src", || {
            server
                .server_requests("client/registerCapability")
                .into_iter()
                .flat_map(|params| {
                    params["registrations"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .find(|registration| {
                    registration["registerOptions"]["watchers"]
                        .as_array()
                        .is_some_and(|watchers| {
                            watchers.iter().any(|watcher| {
                                watcher["globPattern"]["baseUri"].as_str()
                                    == Some(src_uri.trim_end_matches('/'))
                            })
                        })
                })
        })
        .await;
    assert_eq!(registration["method"], "workspace/didChangeWatchedFiles");
    let watchers = registration["registerOptions"]["watchers"]
        .as_array()
        .unwrap();
    assert!(
        watchers
            .iter()
            .any(|watcher| watcher["globPattern"] == "**/podloop.toml"),
        "{watchers:?}"
    );

    // A change reported by the client's watcher is delivered.
    let file = write_file(workspace.path(), "src/from_git.txt", "checked out\n");
    server
        .notify(
            "workspace/didChangeWatchedFiles",
            json!({"changes": [{"uri": common::file_uri(&file), "type": 1}]}),
        )
        .await;
    server
        .eventually("from_git.txt in the pod", || {
            cluster.file("api-1", "/app/from_git.txt")
        })
        .await;
}

#[tokio::test]
async fn closing_stdin_without_shutdown_is_a_clean_exit() {
    let (_workspace, _cluster, server) = one_pod_server(|client| client).await;
    let outcome = server.close_input().await;
    assert!(outcome.input_closed);
    assert!(!outcome.shutdown_requested);
    assert_eq!(outcome.exit_code(), 0);
}

#[tokio::test]
async fn a_large_batch_shows_server_created_progress_that_ends() {
    // No server watcher: the files below reach the engine as one syncAll.
    let (workspace, _cluster, server) =
        one_pod_server(|client| client.capabilities(self_watching_client())).await;
    server.wait_for_status(is_settled_ok).await;
    for index in 0..80 {
        write_file(
            workspace.path(),
            &format!("src/bulk/{index}.txt"),
            &index.to_string(),
        );
    }
    server.execute_command("podloop.syncAll").await;

    let is_batch_token = |token: &Value| {
        token
            .as_str()
            .is_some_and(|text| text.starts_with("podloop/") && !text.contains("command"))
    };
    let end = server
        .wait_for_notification("$/progress", |params| {
            is_batch_token(&params["token"]) && params["value"]["kind"] == "end"
        })
        .await;
    let token = end["token"].clone();
    let created = server.server_requests("window/workDoneProgress/create");
    assert!(
        created.iter().any(|params| params["token"] == token),
        "progress sent on a token never created: {token}"
    );
    let kinds: Vec<Value> = server
        .notifications("$/progress")
        .into_iter()
        .filter(|params| params["token"] == token)
        .map(|params| params["value"]["kind"].clone())
        .collect();
    assert_eq!(kinds.first(), Some(&json!("begin")), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&json!("end")), "{kinds:?}");
}

#[tokio::test]
async fn renames_and_deletes_from_the_editor_reach_the_pod() {
    let (workspace, cluster, server) = one_pod_server(|client| {
        client.capabilities(json!({
            "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}}
        }))
    })
    .await;
    let old = write_file(workspace.path(), "src/old_name.txt", "moving\n");
    server.save(&old).await;
    server
        .eventually("old_name.txt in the pod", || {
            cluster.file("api-1", "/app/old_name.txt")
        })
        .await;

    let new = workspace.path().join("src/new_name.txt");
    std::fs::rename(&old, &new).unwrap();
    server
        .notify(
            "workspace/didRenameFiles",
            json!({"files": [{"oldUri": common::file_uri(&old), "newUri": common::file_uri(&new)}]}),
        )
        .await;
    server
        .eventually("the rename in the pod", || {
            let renamed = cluster.file("api-1", "/app/new_name.txt")?;
            cluster
                .file("api-1", "/app/old_name.txt")
                .is_none()
                .then_some(renamed)
        })
        .await;

    std::fs::remove_file(&new).unwrap();
    server
        .notify(
            "workspace/didDeleteFiles",
            json!({"files": [{"uri": common::file_uri(&new)}]}),
        )
        .await;
    server
        .eventually("the delete in the pod", || {
            cluster
                .file("api-1", "/app/new_name.txt")
                .is_none()
                .then_some(())
        })
        .await;
}

#[tokio::test]
async fn multi_root_workspaces_sync_the_configured_root_and_ignore_the_other() {
    let configured = workspace_with_config(CONFIG);
    let plain = tempfile::tempdir().unwrap();
    let cluster = one_pod_cluster();
    let server = TestServer::builder()
        .workspace(plain.path())
        .workspace(configured.path())
        .engine(cluster.starter())
        .build()
        .await;
    let stray = write_file(plain.path(), "src/stray.txt", "not mapped\n");
    server.save(&stray).await;
    let mapped = write_file(configured.path(), "src/mapped.txt", "mapped\n");
    server.save(&mapped).await;
    server
        .eventually("mapped.txt in the pod", || {
            cluster.file("api-1", "/app/mapped.txt")
        })
        .await;
    server.wait_for_status(is_settled_ok).await;
    assert_eq!(cluster.file("api-1", "/app/stray.txt"), None);
    assert_eq!(
        cluster
            .deliveries()
            .iter()
            .map(|(_, entries)| entries)
            .sum::<usize>(),
        1
    );
}
