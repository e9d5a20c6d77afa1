//! Pod templates: the shape accepted by `Sim::create_pod`, `POST /_sim/pods` and `--pods PODS.json`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Root filesystem a container is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Image {
    /// "alpine-like": busybox-static with every applet linked in.
    Busybox,
    /// "debian-like": the host's `sh`, GNU `tar`, coreutils and their shared libraries.
    Host,
    /// Busybox without the `tar` applet.
    BusyboxNotar,
    /// Busybox whose root is mounted read-only (with a writable tmpfs on `/tmp`).
    BusyboxReadOnly,
    /// Busybox whose files belong to uid/gid 1000, and whose processes run as that user.
    BusyboxNonroot,
}

impl Image {
    pub fn as_str(self) -> &'static str {
        match self {
            Image::Busybox => "busybox",
            Image::Host => "host",
            Image::BusyboxNotar => "busybox-notar",
            Image::BusyboxReadOnly => "busybox-readonly",
            Image::BusyboxNonroot => "busybox-nonroot",
        }
    }

    pub(crate) fn reference(self) -> String {
        format!("kubesim.local/{}:latest", self.as_str())
    }

    pub(crate) fn is_busybox(self) -> bool {
        !matches!(self, Image::Host)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerTemplate {
    pub name: String,
    pub image: Image,
    /// Shell command run as PID 1 (`/bin/sh -c COMMAND`); `None` sleeps until terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Files written into the root before the container starts: path in container -> content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerTemplate>,
    #[serde(default = "default_true")]
    pub ready: bool,
}

impl PodTemplate {
    pub fn new(name: &str) -> Self {
        PodTemplate {
            name: Some(name.to_string()),
            generate_name: None,
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: Vec::new(),
            ready: true,
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn container(mut self, name: &str, image: Image) -> Self {
        self.containers.push(ContainerTemplate {
            name: name.to_string(),
            image,
            command: None,
            files: BTreeMap::new(),
        });
        self
    }

    /// Sets PID 1's shell command on the last container added.
    pub fn command(mut self, cmd: &str) -> Self {
        self.last_container().command = Some(cmd.to_string());
        self
    }

    /// Adds a file to the last container added.
    pub fn file(mut self, path: &str, content: &str) -> Self {
        self.last_container()
            .files
            .insert(path.to_string(), content.to_string());
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    fn last_container(&mut self) -> &mut ContainerTemplate {
        self.containers
            .last_mut()
            .expect("add a container with .container(name, image) before configuring it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_json_shape_round_trips() {
        let json = r#"{"name":"web","labels":{"app":"web"},"containers":[{"name":"app","image":"busybox-notar","command":"sleep 1000","files":{"/srv/a.txt":"hi"}}]}"#;
        let t: PodTemplate = serde_json::from_str(json).unwrap();
        assert_eq!(t.namespace, "default");
        assert!(t.ready);
        assert_eq!(t.containers[0].image, Image::BusyboxNotar);
        assert_eq!(t.containers[0].files["/srv/a.txt"], "hi");
        let built = PodTemplate::new("web")
            .label("app", "web")
            .container("app", Image::BusyboxNotar)
            .command("sleep 1000")
            .file("/srv/a.txt", "hi");
        assert_eq!(t, built);
    }

    #[test]
    fn unknown_image_is_rejected() {
        let json = r#"{"name":"x","containers":[{"name":"a","image":"ubuntu"}]}"#;
        assert!(serde_json::from_str::<PodTemplate>(json).is_err());
    }
}
