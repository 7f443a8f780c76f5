//! The Federator image (`deploy/image/Containerfile`, built by `tests/run.sh` with
//! `deploy/image/build.sh --local-base` as `localhost/federator:test`) runs the replica
//! chart's own scripts, as the chart runs them:
//!
//! - the image runs as 65532 with `federator` as its entrypoint, and its binary runs on
//!   the image's own libraries; it holds no shell but BusyBox and no package manager;
//! - the StatefulSet's start-up script (rendered by Helm, run by the image's `/bin/sh` as
//!   user 65532, with the chart's ConfigMap, the certificates `deploy/README.md` tells
//!   operators to make, and the pod's name) starts a replica;
//! - the init job's script forms the group and passes `federator check`, and running it
//!   again changes nothing (no `|| true` hides a failure);
//! - the readiness probe's command answers through the admin socket, and SIGTERM stops
//!   the replica with exit status 0.
//!
//! The machines the tests run on start no containers (crun refuses their cgroup setup and
//! resource limits), so the image's root file system is exported and the scripts run in
//! it under `chroot`, sharing the machine's loopback: everything the image holds is
//! used, but not the container runtime.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image `tests/run.sh` builds (override: `FEDERATOR_IMAGE`).
fn image() -> String {
    std::env::var("FEDERATOR_IMAGE").unwrap_or_else(|_| "localhost/federator:test".into())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn podman(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new("podman").args(args)).stdout).trim().to_string()
}

/// `command` run by `/bin/sh -c` inside `root` as user 65532, with only `env` (and a
/// PATH) in its environment, as a container would have it.
fn in_image(root: &Path, command: &str, env: &[(&str, String)]) -> Command {
    let mut chroot = Command::new("chroot");
    chroot
        .arg("--userspec=65532:65532")
        .arg(root)
        .args(["/bin/sh", "-c", command])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    chroot
}

/// Waits for `child` at most `limit`, then kills it.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The YAML documents of `manifest` of `kind`.
fn documents(manifest: &str, kind: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(manifest)
        .filter_map(|d| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d).ok())
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// The shell script of the first container of a pod template `spec`, and its env.
fn script_of(spec: &serde_yaml_ng::Value) -> (String, Vec<(String, String)>) {
    let container = &spec["containers"][0];
    let script = container["args"][0].as_str().expect("a script").to_string();
    let env = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    (script, env)
}

/// Kills the replica if the test ends early.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_image_runs_the_replica_charts_scripts() {
    let image = image();
    let exists = Command::new("podman").args(["image", "exists", &image]).status();
    assert!(
        exists.is_ok_and(|s| s.success()),
        "no image {image}: build it with `bash deploy/image/build.sh --binary \
         target/debug/federator --tag {image} --local-base` (tests/run.sh does)"
    );
    let config = podman(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}}",
    ]);
    assert_eq!(config, "65532:65532 [\"/usr/local/bin/federator\"]");

    // The image's root file system.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let container = podman(&["create", &image]);
    let tar = dir.path().join("image.tar");
    podman(&["export", "-o", tar.to_str().expect("utf-8"), &container]);
    podman(&["rm", &container]);
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&root));
    std::fs::remove_file(&tar).expect("remove the tar");
    // Minimal: the binary, its libraries, BusyBox as the shell, nothing to install with.
    for absent in ["bin/bash", "usr/bin/apt-get", "usr/bin/dpkg", "usr/bin/perl"] {
        assert!(!root.join(absent).exists(), "the image holds {absent}");
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("/etc/passwd");
    assert!(passwd.contains(":65532:65532:"), "user 65532 is named: {passwd}");
    let version = run(&mut in_image(&root, "federator --version", &[]));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("federator "));

    // The chart, one replica, on free ports (the pod's ports are the machine's here).
    let port = || federator::net::free_local_port().expect("a free port").to_string();
    let (raft, api, metrics) = (port(), port(), port());
    let helm = std::env::var_os("FEDERATOR_HELM").map_or_else(
        || Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/federator/helm/bin/helm"),
        PathBuf::from,
    );
    let manifest = run(Command::new(helm)
        .args(["template", "federator"])
        .arg(repo().join("deploy/helm/federator"))
        .args(["--namespace", "federator", "--set", "replicas=1"])
        .args(["--set", &format!("ports.raft={raft}")])
        .args(["--set", &format!("ports.api={api}")])
        .args(["--set", &format!("ports.metrics={metrics}")]))
    .stdout;
    let manifest = String::from_utf8_lossy(&manifest);
    let server_toml = documents(&manifest, "ConfigMap")[0]["data"]["server.toml.in"]
        .as_str()
        .expect("server.toml.in")
        .to_string();
    let (start, start_env) =
        script_of(&documents(&manifest, "StatefulSet")[0]["spec"]["template"]["spec"]);
    let (init, init_env) = script_of(&documents(&manifest, "Job")[0]["spec"]["template"]["spec"]);

    // What the pod mounts: the ConfigMap, the certificates Secret (as deploy/README.md
    // makes it: without the CA's key), its volume, and the pod's name in DNS.
    let tls = root.join("etc/federator/tls");
    run(Command::new(federator_chaos::cluster::federator_bin())
        .args(["certs", "init"])
        .arg(&tls)
        .args(["--replicas", "1", "--trust-domain", "federation.local"])
        .args([
            "--dns",
            "*.federator-headless.federator.svc.cluster.local,federator.federator.svc.cluster.local",
        ]));
    std::fs::remove_file(tls.join("ca.key")).expect("the CA key stays offline");
    let config_dir = root.join("etc/federator/config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(config_dir.join("server.toml.in"), server_toml).expect("server.toml.in");
    std::fs::create_dir_all(root.join("var/lib/federator")).expect("data dir");
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost federator-0.federator-headless.federator.svc.cluster.local \
         federator.federator.svc.cluster.local\n",
    )
    .expect("hosts");
    run(Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(&tls)
        .arg(root.join("var/lib/federator")));
    run(Command::new("chmod")
        .arg("0400")
        .args(std::fs::read_dir(&tls).expect("tls").map(|e| e.expect("entry").path())));

    // The StatefulSet's script starts replica 1.
    let log = std::fs::File::create(dir.path().join("replica.log")).expect("log");
    let mut env: Vec<(&str, String)> =
        start_env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    env.push(("HOSTNAME", "federator-0".into()));
    env.push(("POD_NAMESPACE", "federator".into()));
    let replica = in_image(&root, &start, &env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the replica");
    let mut replica = Replica(replica);
    let replica_log =
        || std::fs::read_to_string(dir.path().join("replica.log")).unwrap_or_default();

    // The init job's script forms the group and checks it; run again, it changes nothing.
    let init_env: Vec<(&str, String)> =
        init_env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let run_init = |name: &str| {
        let out_path = dir.path().join(format!("init-{name}.log"));
        let out = std::fs::File::create(&out_path).expect("init log");
        let mut job = in_image(&root, &init, &init_env)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("run the init job's script");
        let status = wait_bounded(&mut job, Duration::from_secs(120));
        (
            status.is_some_and(|s| s.success()),
            std::fs::read_to_string(&out_path).unwrap_or_default(),
        )
    };
    // The Job restarts its pod while the script fails (restartPolicy OnFailure): the
    // replica may not listen yet when it first runs.
    let mut tries = Vec::new();
    for attempt in 1..=10 {
        let (ok, said) = run_init(&format!("first-{attempt}"));
        tries.push(said);
        if ok {
            break;
        }
        assert!(
            attempt < 10,
            "the init job never succeeded:\n{}\n--- replica ---\n{}",
            tries.join("\n---\n"),
            replica_log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (ok, said) = run_init("second");
    assert!(ok, "second init run:\n{said}\n--- replica ---\n{}", replica_log());
    assert!(said.contains("nothing to do"), "the formed group is left alone:\n{said}");

    // The readiness probe's command, through the admin socket.
    run(&mut in_image(
        &root,
        "federator status --endpoints unix:///var/lib/federator/admin.sock -o json",
        &[],
    ));

    // SIGTERM (a rolling restart): the replica leaves with exit status 0.
    run(Command::new("kill").args(["-TERM", &replica.0.id().to_string()]));
    let status = wait_bounded(&mut replica.0, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", replica_log());
}
