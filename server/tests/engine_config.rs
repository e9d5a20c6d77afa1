//! The published JSON Schema and the parser agree on the keys.

use std::path::Path;

use podloop::engine::config;

fn schema() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/podloop.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sample(value: &serde_json::Value, key: &str) -> String {
    match key {
        "remote" => "\"/app\"".into(),
        "local" => "\"src\"".into(),
        "selector" => "\"app=api\"".into(),
        "namespace" => "\"dev\"".into(),
        "exclude" => "[\"*.log\"]".into(),
        "on_conflict" => "\"skip\"".into(),
        "pods" => "\"first\"".into(),
        "batch_window_ms" => "5".into(),
        "max_file_size" => "\"1MB\"".into(),
        "agent" => "false".into(),
        _ => {
            assert!(value.is_object(), "{key}");
            "\"x\"".into()
        }
    }
}

#[test]
fn every_schema_key_is_accepted_by_the_parser() {
    let schema = schema();
    let mut text = String::new();
    for (key, value) in schema["properties"].as_object().unwrap() {
        if key != "sync" {
            text.push_str(&format!("{key} = {}\n", sample(value, key)));
        }
    }
    text.push_str("[[sync]]\n");
    for (key, value) in schema["definitions"]["mapping"]["properties"]
        .as_object()
        .unwrap()
    {
        if key != "pod" {
            text.push_str(&format!("{key} = {}\n", sample(value, key)));
        }
    }
    let cfg = config::parse(Path::new("/w/podloop.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cfg.mappings.len(), 1);
}

#[test]
fn a_key_outside_the_schema_is_rejected() {
    let schema = schema();
    assert!(schema["properties"].get("sync_all").is_none());
    let text = "sync_all = true\n[[sync]]\nlocal = \"s\"\nremote = \"/a\"\nselector = \"a=b\"\n";
    let errors = config::parse(Path::new("/w/podloop.toml"), text)
        .unwrap_err()
        .0;
    assert_eq!(errors[0].key.as_deref(), Some("sync_all"));
    assert_eq!(errors[0].line, 0);
}
