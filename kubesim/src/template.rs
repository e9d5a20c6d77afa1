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
    /// Pod volumes mounted into this container, as `containers[].volumeMounts` in a pod spec.
    #[serde(
        default,
        rename = "volumeMounts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// Name of an entry of the pod's `volumes`.
    pub name: String,
    /// Absolute path in the container.
    pub mount_path: String,
}

/// A pod volume, as `spec.volumes[]`; only `emptyDir` exists in kubesim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub empty_dir: EmptyDir,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDir {
    /// `"Memory"` mounts a tmpfs; `""` (the default) a folder on the node's disk.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub medium: String,
    /// A quantity such as `64Ki`, `1Mi` or `65536`: the tmpfs size of a `Memory` emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
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
            volumes: Vec::new(),
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
            volume_mounts: Vec::new(),
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

    /// Adds a tmpfs emptyDir (`medium: Memory`) of `size_limit` (a quantity such as `64Ki`)
    /// and mounts it at `mount_path` in the last container added.
    pub fn memory_volume(mut self, name: &str, size_limit: &str, mount_path: &str) -> Self {
        self.volumes.push(Volume {
            name: name.to_string(),
            empty_dir: EmptyDir {
                medium: "Memory".to_string(),
                size_limit: Some(size_limit.to_string()),
            },
        });
        self.volume_mount(name, mount_path)
    }

    /// Mounts the pod volume `name` at `mount_path` in the last container added.
    pub fn volume_mount(mut self, name: &str, mount_path: &str) -> Self {
        self.last_container().volume_mounts.push(VolumeMount {
            name: name.to_string(),
            mount_path: mount_path.to_string(),
        });
        self
    }

    /// Adds a pod volume without mounting it (mount it with `volume_mount`).
    pub fn volume(mut self, volume: Volume) -> Self {
        self.volumes.push(volume);
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
    fn volumes_take_the_pod_spec_shape() {
        let json = r#"{"name":"db","volumes":[{"name":"data","emptyDir":{"medium":"Memory","sizeLimit":"64Ki"}}],"containers":[{"name":"app","image":"busybox","volumeMounts":[{"name":"data","mountPath":"/data"}]}]}"#;
        let t: PodTemplate = serde_json::from_str(json).unwrap();
        let built = PodTemplate::new("db")
            .container("app", Image::Busybox)
            .memory_volume("data", "64Ki", "/data");
        assert_eq!(t, built);
        assert_eq!(
            serde_json::to_string(&built)
                .unwrap()
                .matches("emptyDir")
                .count(),
            1
        );
        let other_kind = r#"{"name":"x","volumes":[{"name":"v","hostPath":{"path":"/"}}],"containers":[{"name":"a","image":"busybox"}]}"#;
        assert!(serde_json::from_str::<PodTemplate>(other_kind).is_err());
    }

    #[test]
    fn unknown_image_is_rejected() {
        let json = r#"{"name":"x","containers":[{"name":"a","image":"ubuntu"}]}"#;
        assert!(serde_json::from_str::<PodTemplate>(json).is_err());
    }
}
