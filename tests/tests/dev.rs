//! `federator dev`, the README's first command, end to end: it starts replicas and member
//! clusters (agents, CAs, a demo service) as child processes, every cluster imports the
//! others' demo service, a CA rotation started by touching a file completes (old and new
//! CA together until every member applied them, then the new one only), a killed agent is
//! restarted, and SIGTERM stops every process it started.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use federator_chaos::cluster::{eventually, federator_bin, tail};
use federator_chaos::http;

const WAIT: Duration = Duration::from_secs(60);
/// Bound of one plain-HTTP request (one over TLS gets twice as long: handshake and
/// answer).
const CALL: Duration = Duration::from_secs(5);

/// The `federator dev` process; killed (with its process group's children reaped by dev
/// itself on SIGTERM) when dropped.
struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Dev {
    fn env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(self.dir.path().join("env"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k != "PATH")
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect())
    }

    /// Runs a `federator` command against the dev federation (via its env file).
    fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(federator_bin())
            .args(args)
            .args(["-o", "json"])
            .envs(self.env()?)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`federator {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn agent_pid(&self, cluster: &str) -> Option<u32> {
        let path = self.dir.path().join(format!("clusters/{cluster}/state/status.json"));
        let status: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        status["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }

    /// Waits at most 30 s for dev to exit; `what` names the wait in the error.
    async fn wait_exit(&mut self, what: &str) -> anyhow::Result<std::process::ExitStatus> {
        let child = &mut self.child;
        let exited = eventually(what, Duration::from_secs(30), || {
            std::future::ready(child.try_wait().transpose())
        })
        .await;
        match exited {
            Ok(status) => Ok(status?),
            Err(error) => Err(anyhow::anyhow!("{error:#}: {}", self.output())),
        }
    }

    fn output(&self) -> String {
        let out = std::fs::read_to_string(self.dir.path().join("dev.out")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.path().join("dev.err")).unwrap_or_default();
        // The replicas' own logs: dev names them, but the directory goes with the test.
        let mut replicas = String::new();
        for id in 1..=3 {
            let log = self.dir.path().join(format!("replica-{id}/server.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            replicas.push_str(&format!("\n--- replica {id} (tail) ---\n{}", tail(&text, 15)));
        }
        format!("stdout (tail):\n{}\nstderr:\n{}{replicas}", tail(&out, 30), tail(&err, 30))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

fn authorities(bundle: &serde_json::Value) -> usize {
    bundle["document"]
        .as_str()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|d| d["keys"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[tokio::test]
async fn dev_runs_a_whole_federation_with_member_clusters() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("federator-dev-e2e-").tempdir()?;
    let stdout = std::fs::File::create(dir.path().join("dev.out"))?;
    let stderr = std::fs::File::create(dir.path().join("dev.err"))?;
    let child = Command::new(federator_bin())
        .args(["dev", "--dir"])
        .arg(dir.path())
        .args(["--restart-after", "1", "--restart-agents-after", "1"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let mut dev = Dev { child, dir };
    let result = scenario(&mut dev).await;
    result.map_err(|e| e.context(dev.output()))
}

async fn scenario(dev: &mut Dev) -> anyhow::Result<()> {
    eventually("dev to be ready", WAIT, || async {
        std::fs::read_to_string(dev.dir.path().join("dev.err"))
            .ok()
            .filter(|e| e.contains("ready in"))
    })
    .await?;

    // Both clusters joined and hold live leases; each imports the other's demo service.
    let clusters = dev.cli(&["cluster", "list"])?;
    let names: Vec<&str> =
        clusters.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["cluster-a", "cluster-b"], "{clusters}");

    // Each dev agent serves its metrics and readiness.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(
        dev.dir.path().join("clusters/cluster-a/cluster.json"),
    )?)?;
    let agent_metrics = format!("127.0.0.1:{}", saved["metrics_port"]);
    let ready = eventually("cluster-a's agent to be ready", WAIT, || async {
        http::get(&agent_metrics, "/readyz", CALL).await.ok().filter(|a| a.status == 200)
    })
    .await?;
    assert_eq!(ready.body, "ready\n");

    // The printed "try next" works literally: in a clean shell, sourcing the env file is
    // all `federator status` needs.
    let env_file = dev.dir.path().join("env");
    let clean = Command::new("env")
        .args(["-i", "PATH=/usr/bin:/bin", "sh", "-c"])
        .arg(format!(". '{}' && federator status", env_file.display()))
        .stdin(Stdio::null())
        .output()?;
    assert!(
        clean.status.success() && String::from_utf8_lossy(&clean.stdout).contains("leader:"),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    for cluster in ["cluster-a", "cluster-b"] {
        eventually(&format!("{cluster} imports demo/echo from both clusters"), WAIT, || async {
            let imports = dev.cli(&["import", "list", "--cluster", cluster]).ok()?;
            let echo = imports["imports"]
                .as_array()?
                .iter()
                .find(|i| i["name"] == "echo" && i["namespace"] == "demo")?
                .clone();
            (echo["clusters"].as_array()?.len() == 2).then_some(())
        })
        .await?;
    }
    let imports_file = dev.dir.path().join("clusters/cluster-b/out/imports.json");
    let imports: serde_json::Value = serde_json::from_slice(&std::fs::read(&imports_file)?)?;
    assert_eq!(imports[0]["hostname"], "echo.demo.svc.clusterset.local", "{imports}");

    // One service port in the clusterset, each cluster's echo on its own endpoint port:
    // the exports agree (no Conflict), cluster-b's own endpoint comes first (priority 0,
    // its own zone) and cluster-a's after it (another region).
    assert_eq!(imports[0]["ports"][0]["port"], 8080, "{imports}");
    assert_eq!(imports[0]["conditions"], serde_json::json!([]), "{imports}");
    let endpoint = |cluster: &str| {
        imports[0]["clusters"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["cluster"] == cluster))
            .map(|c| c["endpoints"][0].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        (endpoint("cluster-b")["priority"].as_u64(), endpoint("cluster-a")["priority"].as_u64()),
        (Some(0), Some(2)),
        "{imports}"
    );
    // The demo service answers on the endpoint cluster-b imports from cluster-a, and on
    // its own.
    for (cluster, expected) in
        [("cluster-a", "hello from cluster-a"), ("cluster-b", "hello from cluster-b")]
    {
        let port = endpoint(cluster)["ports"][0]["port"].as_u64().unwrap_or(0);
        let addr = format!("127.0.0.1:{}", u16::try_from(port)?);
        let answer = http::get_with(&addr, "/", &[("host", "echo")], CALL).await?;
        assert!(answer.body.contains(expected), "{cluster}: {answer:?}");
    }

    // Every replica serves the SPIFFE bundle endpoint; the https_web profile with the
    // dev web certificate, whose CA dev leaves beside the others.
    let config = std::fs::read_to_string(dev.dir.path().join("replica-2/server.toml"))?;
    let web_port: u16 = config
        .lines()
        .find_map(|l| l.strip_prefix("listen_web = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no listen_web in replica-2/server.toml:\n{config}"))?;
    let web_ca = std::fs::read_to_string(dev.dir.path().join("certs/web-ca.pem"))?;
    let web_addr = format!("127.0.0.1:{web_port}");
    let bundle = http::get_https(&web_addr, &web_ca, "/bundles/cluster-a.federator.test", CALL * 2)
        .await?
        .ok()?;
    let bundle: serde_json::Value = serde_json::from_str(&bundle.body)?;
    assert!(bundle["keys"].as_array().is_some_and(|k| !k.is_empty()), "{bundle}");
    assert!(bundle["spiffe_refresh_hint"].as_u64().is_some(), "{bundle}");
    let out = std::fs::read_to_string(dev.dir.path().join("dev.out"))?;
    assert!(out.contains("the SPIFFE bundle endpoint (https_web"), "{}", tail(&out, 40));

    // A CA rotation, started by a file.
    let td = "cluster-a.federator.test";
    let before = dev.cli(&["bundle", "show", td])?;
    assert_eq!(authorities(&before), 1, "{before}");
    let workload = dev.dir.path().join("clusters/cluster-a/workload.pem");
    let workload_before = std::fs::read_to_string(&workload)?;
    std::fs::write(dev.dir.path().join("clusters/cluster-a/rotate"), b"")?;
    eventually("cluster-a's bundle holds old and new CA", WAIT, || async {
        dev.cli(&["bundle", "show", td]).ok().filter(|b| authorities(b) == 2)
    })
    .await?;
    // The demo workload's SVID is re-issued by the new CA while the old is still trusted.
    eventually("the workload SVID is re-issued before the old CA goes", WAIT, || async {
        let now = std::fs::read_to_string(&workload).ok()?;
        (now != workload_before).then_some(())
    })
    .await?;
    let bundle = dev.cli(&["bundle", "show", td])?;
    assert_eq!(authorities(&bundle), 2, "the old CA outlives the re-issue: {bundle}");
    let after = eventually("the rotation completes: only the new CA", WAIT, || async {
        dev.cli(&["bundle", "show", td])
            .ok()
            .filter(|b| authorities(b) == 1 && b["sequence"] != before["sequence"])
    })
    .await?;
    assert_ne!(after["document"], before["document"]);
    // `bundle status` exits 2 while the rotation is incomplete: only its final answer is
    // required to succeed.
    eventually("cluster-b applies the new CA", WAIT, || async {
        dev.cli(&["bundle", "status", td]).ok().filter(|s| s["complete"] == true)
    })
    .await
    .map_err(|e| e.context(format!("{:?}", dev.cli(&["bundle", "status", td]).err())))?;
    // The agent reconnects with its SVID of the new CA: its lease stays live.
    eventually("cluster-a's agent holds a live lease after the rotation", WAIT, || async {
        let clusters = dev.cli(&["cluster", "list"]).ok()?;
        let a = clusters.as_array()?.iter().find(|c| c["name"] == "cluster-a")?.clone();
        (a["lease"]["state"] == "live" && a["status"] == "active").then_some(())
    })
    .await?;

    // A killed agent is restarted by dev.
    let pid = dev.agent_pid("cluster-b").ok_or_else(|| anyhow::anyhow!("no agent pid"))?;
    Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    eventually("dev restarts cluster-b's agent", WAIT, || async {
        dev.agent_pid("cluster-b").filter(|p| *p != pid && alive(*p))
    })
    .await?;

    // SIGTERM stops every process dev started.
    let mut pids: Vec<u32> =
        ["cluster-a", "cluster-b"].iter().filter_map(|c| dev.agent_pid(c)).collect();
    let status = dev.cli(&["status"])?;
    pids.extend(
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok()),
    );
    assert_eq!(pids.len(), 5, "{pids:?}");
    Command::new("kill").args(["-TERM", &dev.child.id().to_string()]).status()?;
    let exited = dev.wait_exit("dev to exit after SIGTERM").await?;
    assert!(exited.success(), "{exited}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived dev");
    }
    assert!(Path::new(&dev.dir.path().join("env")).exists());

    // Not on a terminal, dev printed its frame once, then one stamped line per change:
    // the agent killed above went down and came back with another pid.
    let out = std::fs::read_to_string(dev.dir.path().join("dev.out"))?;
    assert_eq!(out.matches("federator dev — ").count(), 1, "{}", tail(&out, 40));
    assert!(
        out.lines().any(|l| l.contains("Z cluster-a: agent pid")),
        "a line for cluster-a's restarted agent: {}",
        tail(&out, 40)
    );
    Ok(())
}

/// `federator dev | head -3`: once the reader is gone dev stops everything it started
/// and exits quietly (no panic, exit 0).
#[tokio::test]
async fn dev_stops_quietly_when_its_reader_goes() -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let dir = tempfile::Builder::new().prefix("federator-dev-pipe-").tempdir()?;
    let stderr = std::fs::File::create(dir.path().join("dev.err"))?;
    let mut child = Command::new(federator_bin())
        .args(["dev", "--clusters", "0", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    for _ in 0..3 {
        if lines.next().transpose()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            let dev = Dev { child, dir };
            anyhow::bail!("dev closed stdout before three lines:\n{}", dev.output());
        }
    }
    drop(lines);
    let mut dev = Dev { child, dir };
    let exited = dev.wait_exit("dev to exit once its reader went").await?;
    let err = std::fs::read_to_string(dev.dir.path().join("dev.err"))?;
    assert!(exited.success(), "{exited}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let replicas = std::fs::read_dir(dev.dir.path())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("replica-"))
        .count();
    assert_eq!(replicas, 3, "dev started its replicas");
    // ... and stopped them: no process runs with its directory on the command line.
    let dir_text = dev.dir.path().display().to_string();
    let running: Vec<String> = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (alive(pid) && cmdline.contains(&dir_text)).then_some(cmdline)
        })
        .collect();
    assert!(running.is_empty(), "outlived dev: {running:?}");
    Ok(())
}
