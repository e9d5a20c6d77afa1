//! Pod volumes: a `medium: Memory` emptyDir is a tmpfs of `sizeLimit` that fills up with
//! "No space left on device" inside the container, survives a container restart, and leaves no
//! mount behind when its pod is deleted or the sim is dropped.
use std::path::Path;

use kubesim::{EmptyDir, Image, PodTemplate, Sim, SimOptions, Volume};

/// Mount points in this process's mount namespace at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(dir))
        .map(String::from)
        .collect()
}

async fn start() -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(dir.path().join("sim")))
        .await
        .unwrap();
    (sim, dir)
}

#[tokio::test]
async fn a_memory_empty_dir_fills_up_inside_the_container_and_its_pod_leaves_no_mount() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (sim, _dir) = start().await;
    sim.create_pod(
        PodTemplate::new("db")
            .container("app", Image::Busybox)
            .memory_volume("data", "64Ki", "/data"),
    )
    .await
    .unwrap();
    let root = sim.container_root("default", "db", "app").unwrap();
    assert_eq!(
        mounts_under(&sim.dir()).len(),
        2,
        "the tmpfs and its bind into the root"
    );

    let out = sim
        .exec(
            "default",
            "db",
            "app",
            &[
                "dd",
                "if=/dev/zero",
                "of=/data/fill",
                "bs=1024",
                "count=100",
            ],
        )
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dd past 64 KiB succeeded: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // The host sees what the container wrote: the test can fill or free it from outside.
    let filled = std::fs::metadata(root.join("data/fill")).unwrap().len();
    assert_eq!(filled, 64 * 1024);
    let from_host = std::fs::write(root.join("data/more"), [1u8; 4096]).unwrap_err();
    assert_eq!(from_host.raw_os_error(), Some(libc::ENOSPC), "{from_host}");
    // Outside the volume the root is not limited.
    let out = sim
        .exec(
            "default",
            "db",
            "app",
            &["dd", "if=/dev/zero", "of=/big", "bs=1024", "count=100"],
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An emptyDir lives as long as its pod, not its container.
    sim.restart_container("default", "db", "app").await.unwrap();
    let out = sim
        .exec("default", "db", "app", &["wc", "-c", "/data/fill"])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("65536 "),
        "{out:?}"
    );
    std::fs::remove_file(root.join("data/fill")).unwrap();
    let out = sim
        .exec("default", "db", "app", &["df", "-k", "/data"])
        .await
        .unwrap();
    let df = String::from_utf8_lossy(&out.stdout);
    assert!(
        df.lines().nth(1).is_some_and(|l| l.contains(" 64 ")),
        "{df}"
    );

    sim.delete_pod("default", "db").await.unwrap();
    assert_eq!(mounts_under(&sim.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn dropping_the_sim_unmounts_every_volume_and_a_disk_empty_dir_is_shared() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (sim, dir) = start().await;
    sim.create_pod(
        PodTemplate::new("two")
            .volume(Volume {
                name: "shared".into(),
                empty_dir: EmptyDir::default(),
            })
            .container("writer", Image::Busybox)
            .volume_mount("shared", "/out")
            .container("reader", Image::BusyboxNonroot)
            .volume_mount("shared", "/in")
            .memory_volume("scratch", "1Mi", "/scratch"),
    )
    .await
    .unwrap();
    let out = sim
        .exec(
            "default",
            "two",
            "writer",
            &["sh", "-c", "echo hello > /out/greeting"],
        )
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The other container, as uid 1000, reads it and may write next to it (emptyDir is 0777).
    let out = sim
        .exec(
            "default",
            "two",
            "reader",
            &[
                "sh",
                "-c",
                "cat /in/greeting && echo ok > /in/reply && echo x > /scratch/x",
            ],
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{out:?}");
    assert!(out.status.success(), "{out:?}");
    let writer_root = sim.container_root("default", "two", "writer").unwrap();
    assert_eq!(
        std::fs::read(writer_root.join("out/reply")).unwrap(),
        b"ok\n"
    );
    let sim_dir = sim.dir();
    assert_eq!(
        mounts_under(&sim_dir).len(),
        4,
        "{:?}",
        mounts_under(&sim_dir)
    );
    drop(sim);
    assert_eq!(mounts_under(&sim_dir), Vec::<String>::new());
    dir.close()
        .expect("the sim's folder is removable once its volumes are unmounted");
}

#[tokio::test]
async fn a_read_only_root_keeps_its_memory_volume_writable() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (sim, _dir) = start().await;
    sim.create_pod(
        PodTemplate::new("ro")
            .container("app", Image::BusyboxReadOnly)
            .memory_volume("app", "64Ki", "/app"),
    )
    .await
    .unwrap();
    let out = sim
        .exec(
            "default",
            "ro",
            "app",
            &["sh", "-c", "echo in > /app/ok; echo out > /nope"],
        )
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        sim.read_file("default", "ro", "app", "/app/ok").unwrap(),
        b"in\n"
    );
}

#[tokio::test]
async fn volumes_kubesim_cannot_honour_are_refused_before_anything_is_mounted() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (sim, _dir) = start().await;
    let cases = [
        (
            PodTemplate::new("a")
                .container("app", Image::Busybox)
                .memory_volume("data", "64KB", "/data"),
            "sizeLimit `64KB` is not a positive quantity",
        ),
        (
            PodTemplate::new("b")
                .container("app", Image::Busybox)
                .volume_mount("nope", "/data"),
            "mounts volume `nope`, which the pod does not declare",
        ),
        (
            PodTemplate::new("c")
                .volume(Volume {
                    name: "disk".into(),
                    empty_dir: EmptyDir {
                        medium: String::new(),
                        size_limit: Some("1Mi".into()),
                    },
                })
                .container("app", Image::Busybox)
                .volume_mount("disk", "/data"),
            "use `medium: Memory` for a volume that fills up",
        ),
        (
            PodTemplate::new("d")
                .container("app", Image::Busybox)
                .memory_volume("data", "1Mi", "data"),
            "mountPath `data` must be an absolute folder",
        ),
    ];
    for (template, expected) in cases {
        let e = sim.create_pod(template).await.unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
    }
    assert!(sim.pod_names("default").is_empty());
    assert_eq!(mounts_under(&sim.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn a_new_sim_unmounts_volumes_left_by_a_killed_one_and_only_those() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (live, _live_dir) = start().await;
    live.create_pod(
        PodTemplate::new("db")
            .container("app", Image::Busybox)
            .memory_volume("data", "64Ki", "/data"),
    )
    .await
    .unwrap();
    // What a kubesim killed by SIGKILL leaves: its folder, its owner file naming a process that
    // is gone, and a volume still mounted.
    let stale = tempfile::tempdir().unwrap();
    let point = stale.path().join("pods/0000/volumes/data");
    std::fs::create_dir_all(&point).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
        .arg(&point)
        .status()
        .unwrap();
    assert!(mounted.success());
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(stale.path().join("kubesim.owner"), format!("{gone_pid} 1")).unwrap();
    assert_eq!(mounts_under(stale.path()).len(), 1);

    let (_next, _next_dir) = start().await;
    assert_eq!(mounts_under(stale.path()), Vec::<String>::new());
    assert_eq!(
        mounts_under(&live.dir()).len(),
        2,
        "a live sim's volumes stay mounted"
    );
}
