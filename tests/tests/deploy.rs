//! The shipped deployment files hold settings the real parsers accept: the `server.toml`
//! template of `deploy/kubernetes/federator.yaml` (with the substitutions each pod makes),
//! the `agent.toml` of `deploy/kubernetes/federator-agent.yaml`, the examples in
//! `deploy/local/`, and the configuration the systemd units name. (The manifests'
//! Kubernetes schemas are checked by `tests/run.sh` with kubernetes-validate; the charts'
//! `values.yaml` against their `values.schema.json`.)

use std::path::{Path, PathBuf};

use federator::agent::AgentConfig;
use federator::server::config::{ServerConfig, ServerOverrides};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `data.<key>` of the ConfigMaps in a multi-document manifest.
fn config_map_entry(manifest: &str, key: &str) -> String {
    let text = std::fs::read_to_string(repo().join(manifest)).expect(manifest);
    config_map_entry_of(&text, manifest, key)
}

/// `data.<key>` of the ConfigMaps in the manifest `text` (named `manifest`).
fn config_map_entry_of(text: &str, manifest: &str, key: &str) -> String {
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value =
            <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document).expect("yaml");
        if value["kind"] == "ConfigMap"
            && let Some(entry) = value["data"][key].as_str()
        {
            return entry.to_string();
        }
    }
    panic!("{manifest}: no ConfigMap with data.{key}");
}

#[test]
fn the_kubernetes_replica_config_loads_for_every_pod() {
    let template = config_map_entry("deploy/kubernetes/federator.yaml", "server.toml.in");
    let dir = tempfile::tempdir().expect("tempdir");
    for (ordinal, host) in [(0, "federator-0"), (2, "federator-2")] {
        let id = ordinal + 1;
        let host = format!("{host}.federator-headless.federator.svc.cluster.local");
        let text = template
            .replace("REPLICA_ID", &id.to_string())
            .replace("POD_HOST", &host)
            // Without externalAccess, the pod's own name.
            .replace("API_ADDRESS", &format!("{host}:7101"))
            .replace("CERT_FILE", &format!("/etc/federator/tls/replica-{id}.pem"))
            .replace("KEY_FILE", &format!("/etc/federator/tls/replica-{id}.key"));
        let path = dir.path().join(format!("server-{id}.toml"));
        std::fs::write(&path, text).expect("write");
        let config = ServerConfig::load(Some(&path), &ServerOverrides::default())
            .unwrap_or_else(|e| panic!("replica {id}: {e}"));
        assert_eq!(config.id, id);
        assert_eq!(config.advertise_raft, format!("{host}:7001"));
        assert_eq!(config.advertise_api, format!("{host}:7101"));
    }
}

#[test]
fn the_kubernetes_agent_config_loads() {
    let text = config_map_entry("deploy/kubernetes/federator-agent.yaml", "agent.toml");
    let path = Path::new("/etc/federator/config/agent.toml");
    AgentConfig::parse(&text, path, Some("fedjoin1.placeholder".into()))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/federator-agent.yaml agent.toml: {e}"));
}

/// The agent chart with its non-default CI values (every Kubernetes part on, another
/// signer) renders an agent.toml that loads with those parts. Helm comes from
/// deploy/local/setup-helm.sh, which tests/run.sh runs first.
#[test]
fn the_agent_chart_with_kubernetes_parts_renders_a_config_that_loads() {
    let helm = helm();
    let chart = repo().join("deploy/helm/federator-agent");
    let out = std::process::Command::new(&helm)
        .args(["template", "federator-agent"])
        .arg(&chart)
        .args(["--namespace", "federator", "-f"])
        .arg(chart.join("ci/non-default-values.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("{}: {e} (run bash deploy/local/setup-helm.sh)", helm.display())
        });
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8_lossy(&out.stdout);
    let text =
        config_map_entry_of(&manifest, "the chart with ci/non-default-values.yaml", "agent.toml");
    let config = AgentConfig::parse(
        &text,
        Path::new("/etc/federator/config/agent.toml"),
        Some("fedjoin1.placeholder".into()),
    )
    .unwrap_or_else(|e| panic!("rendered agent.toml: {e}\n{text}"));
    let rules = config.file.exports.kubernetes.as_ref().expect("[exports.kubernetes]");
    assert_eq!(rules.trusted_namespaces, ["istio-system"], "{text}");
    assert_eq!(rules.gateways, ["192.0.2.9:15443".parse().expect("gateway")], "{text}");
    let sink = config.file.sinks.kubernetes.expect("[sinks.kubernetes]");
    assert!(sink.service_imports && sink.cluster_trust_bundles);
    assert_eq!(sink.signer_name.as_deref(), Some("example.com/federated"));
    assert!(
        manifest.contains("resourceNames: [\"example.com/federated\"]"),
        "the attest rule names the signer"
    );
}

/// Helm from deploy/local/setup-helm.sh, which tests/run.sh runs first.
fn helm() -> PathBuf {
    std::env::var_os("FEDERATOR_HELM").map_or_else(
        || Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/federator/helm/bin/helm"),
        PathBuf::from,
    )
}

/// `helm template` of the replica chart with `--set` values: its output, or Helm's
/// error message.
fn render_replica_chart(set: &[&str]) -> anyhow::Result<String> {
    let mut command = std::process::Command::new(helm());
    command.args(["template", "federator"]).arg(repo().join("deploy/helm/federator"));
    command.args(["--namespace", "federator"]);
    for value in set {
        command.args(["--set", value]);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("helm: {e} (run bash deploy/local/setup-helm.sh)"));
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// With externalAccess each replica advertises its own outside address: the rendered
/// command picks it by replica id, the config then loads with it, and a list that does
/// not have one address per replica is refused at render time, naming the value.
#[test]
fn external_access_advertises_one_address_per_replica() {
    let error = render_replica_chart(&[
        "externalAccess.enabled=true",
        "externalAccess.advertise={replica-1.federation.example:7101}",
    ])
    .expect_err("one address for three replicas")
    .to_string();
    assert!(
        error.contains("externalAccess.advertise: lists 1 addresses for 3 replicas"),
        "{error}"
    );
    let manifest = render_replica_chart(&[
        "externalAccess.enabled=true",
        "externalAccess.advertise={a.federation.example:7101,192.0.2.2:7101,[2001:db8::3]:7101}",
    ])
    .expect("renders");
    assert!(manifest.contains("2) api=\"192.0.2.2:7101\" ;;"), "{manifest}");
    assert!(manifest.contains("name: federator-2-external"), "a Service per replica");
    let template =
        config_map_entry_of(&manifest, "the chart with externalAccess", "server.toml.in");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.toml");
    let text = template
        .replace("REPLICA_ID", "3")
        .replace("POD_HOST", "federator-2.federator-headless.federator.svc.cluster.local")
        .replace("API_ADDRESS", "[2001:db8::3]:7101")
        .replace("CERT_FILE", "/etc/federator/tls/replica-3.pem")
        .replace("KEY_FILE", "/etc/federator/tls/replica-3.key");
    std::fs::write(&path, text).expect("write");
    let config = ServerConfig::load(Some(&path), &ServerOverrides::default()).expect("loads");
    assert_eq!(config.advertise_api, "[2001:db8::3]:7101");
    assert_eq!(
        config.advertise_raft, "federator-2.federator-headless.federator.svc.cluster.local:7001",
        "raft stays inside the cluster"
    );
}

/// The chart's alerts are valid Prometheus rules (`promtool check rules`, the promtool
/// deploy/local/setup-promtool.sh builds). That every metric they name is served is
/// checked against a live replica in `observability.rs`.
#[test]
fn the_alerts_are_valid_prometheus_rules() {
    let promtool = federator_chaos::promtool::promtool().expect("promtool");
    let rules = repo().join("deploy/helm/federator/files/alerts.yaml");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = render_replica_chart(&["prometheusRule.enabled=true"]).expect("renders");
    assert!(manifest.contains("expr: up{job=\"federator\"} == 0"), "the job is the release's");
}

#[test]
fn the_local_examples_load() {
    let server = repo().join("deploy/local/server.toml");
    ServerConfig::load(Some(&server), &ServerOverrides::default())
        .expect("deploy/local/server.toml");
    let agent = repo().join("deploy/local/agent.toml");
    AgentConfig::load(&agent, Some("fedjoin1.placeholder".into()))
        .expect("deploy/local/agent.toml");
}

#[test]
fn the_systemd_units_name_the_shipped_binary_and_configs() {
    for unit in ["federator.service", "federator-agent.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).expect(unit);
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
        assert!(exec.contains("/usr/local/bin/federator "), "{unit}: {exec}");
        assert!(exec.contains("--config /etc/federator/"), "{unit}: {exec}");
    }
}

/// The TOML blocks of a document, each with the line it starts on.
fn toml_blocks(doc: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(repo().join(doc)).expect(doc);
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some((n + 2, String::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_documented_examples_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = 0;
    for doc in ["docs/configuration.md", "docs/data-plane.md", "docs/kubernetes.md"] {
        for (line, block) in toml_blocks(doc) {
            let path = dir.path().join("example.toml");
            std::fs::write(&path, &block).expect("write");
            let what = format!("{doc}:{line}");
            if block.contains("[listen]") {
                ServerConfig::load(Some(&path), &ServerOverrides::default())
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            } else if block.contains("state_dir") {
                AgentConfig::load(&path, Some("fedjoin1.placeholder".into()))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            } else {
                continue;
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 3, "{loaded} complete examples found");
}
