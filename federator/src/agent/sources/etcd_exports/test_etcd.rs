//! One real etcd process on loopback for the tests of the federator crate (which cannot use
//! the chaos crate's `EtcdCluster`): free ports on 127.0.0.1, a temporary data directory,
//! killed on drop. The flags are those of `chaos/src/etcd.rs`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// The `etcd` binary: `$ETCD_BIN`, or Debian's `/usr/bin/etcd`.
pub(crate) fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// Whether etcd tests can run here; prints why not when they cannot.
pub(crate) fn available() -> bool {
    let found = etcd_bin().exists();
    if !found {
        eprintln!("skipped: no etcd binary at {}", etcd_bin().display());
    }
    found
}

/// A single-member etcd on loopback.
pub(crate) struct TestEtcd {
    dir: tempfile::TempDir,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
}

impl TestEtcd {
    /// Starts etcd and waits until it answers.
    pub(crate) async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("federator-test-etcd-").tempdir().expect("dir");
        let port = || crate::net::free_local_port().expect("a free port on 127.0.0.1");
        let mut etcd = Self {
            client_url: format!("http://127.0.0.1:{}", port()),
            peer_url: format!("http://127.0.0.1:{}", port()),
            dir,
            child: None,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        self.client_url.clone()
    }

    /// A client.
    pub(crate) async fn client(&self) -> Client {
        Client::connect([self.client_url.as_str()], None).await.expect("client")
    }

    /// SIGKILLs the process.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("log");
        let mut command = Command::new(etcd_bin());
        command
            .args(["--name", "m1"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &format!("m1={}", self.peer_url)])
            .args(["--initial-cluster-token", "federator-test"])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        self.child = Some(command.spawn().expect("etcd starts"));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}):\n{}", self.log());
            }
            if let Ok(Ok(mut client)) = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect([self.client_url.as_str()], None),
            )
            .await
                && let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(2), client.status()).await
                && status.leader() != 0
            {
                return;
            }
            assert!(Instant::now() < deadline, "etcd not ready after 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (at most `secs` seconds) until the receiver holds a value `check` accepts.
pub(crate) async fn wait_for<T: Clone + std::fmt::Debug>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    secs: u64,
    what: &str,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        {
            let current = rx.borrow_and_update();
            if check(&current) {
                return current.clone();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            matches!(tokio::time::timeout(left, rx.changed()).await, Ok(Ok(()))),
            "timed out waiting for {what}; last: {:?}",
            *rx.borrow()
        );
    }
}
