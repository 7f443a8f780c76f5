//! The agent's etcd export source and etcd sink against an etcd that demands TLS, a
//! client certificate and a user with a password (issue 27): a real etcd 3.4 started
//! with `--client-cert-auth` and authentication enabled, the agents configured with
//! `[exports.etcd_auth]` and `[sinks.etcd.auth]`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission, PermissionType};
use federator::agent::etcd_auth::{EtcdAuth, EtcdConnect, connect_tls};
use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually, free_port};
use federator_chaos::etcd::etcd_bin;
use federator_chaos::kube_apiserver::openssl;
use federator_chaos::member::MemberCluster;

const WAIT: Duration = Duration::from_secs(30);

/// A CA, etcd's serving certificate for 127.0.0.1, and client certificates `root` (the
/// administrator) and `agent` (a certificate whose name is no etcd user).
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=etcd-test-ca",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    )?;
    for (name, subject, ext) in [
        ("server", "/CN=etcd", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("root", "/CN=root", "extendedKeyUsage=clientAuth"),
        ("agent", "/CN=federator-agent", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ],
        )?;
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        )?;
    }
    Ok(())
}

struct SecureEtcd {
    child: Child,
    url: String,
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the TLS etcd at `url` presenting the certificate `cert`, as `user`.
async fn client_as(
    dir: &Path,
    url: &str,
    cert: &str,
    user: Option<(&str, &str)>,
) -> anyhow::Result<Client> {
    let auth = EtcdAuth {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join(format!("{cert}.pem"))),
        key: Some(dir.join(format!("{cert}.key"))),
        ..EtcdAuth::default()
    };
    let mut options = ConnectOptions::new();
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    let EtcdConnect::Tls { config, options } = auth.connect(options)? else {
        anyhow::bail!("not TLS");
    };
    let second = Duration::from_secs(1);
    connect_tls(
        &[url.to_string()],
        config,
        options,
        Duration::from_secs(5),
        (second * 10, second * 5),
    )
    .await
    .map_err(anyhow::Error::msg)
}

/// etcd with TLS, client certificates required, and authentication on: user
/// `federator` (password in `dir/password`) may read and write `/federator/`.
async fn start_secure_etcd(dir: &Path) -> anyhow::Result<SecureEtcd> {
    make_certificates(dir)?;
    let url = format!("https://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(etcd_bin())
        .args(["--name", "secure", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("secure={peer}")])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server.key"))
        .arg("--trusted-ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let etcd = SecureEtcd { child, url };
    let mut admin = eventually("the TLS etcd answers", WAIT, || async {
        let mut client = client_as(dir, &etcd.url, "root", None).await.ok()?;
        client.status().await.ok()?;
        Some(client)
    })
    .await?;
    admin.user_add("root", "root-password", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.role_add("federator").await?;
    admin
        .role_grant_permission(
            "federator",
            Permission::new(PermissionType::Readwrite, "/federator/").with_prefix(),
        )
        .await?;
    admin.user_add("federator", "s3cret-password", None).await?;
    admin.user_grant_role("federator", "federator").await?;
    admin.auth_enable().await?;
    std::fs::write(dir.join("password"), "s3cret-password\n")?;
    Ok(etcd)
}

fn auth_table(table: &str, dir: &Path) -> String {
    format!(
        "\n[{table}]\nca = \"{d}/ca.pem\"\ncert = \"{d}/agent.pem\"\nkey = \"{d}/agent.key\"\nusername = \"federator\"\npassword_file = \"{d}/password\"\n",
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_and_writes_an_etcd_that_demands_tls_and_a_password() -> anyhow::Result<()>
{
    let tls_dir = tempfile::tempdir()?;
    let dir = tls_dir.path();
    let etcd = start_secure_etcd(dir).await?;

    // etcd really enforces both: the agent's certificate alone (a name that is no user)
    // may not read; with the user's password it may.
    let mut anonymous = client_as(dir, &etcd.url, "agent", None).await?;
    assert!(anonymous.get("/federator/x", None).await.is_err(), "refused without the password");
    let mut admin =
        client_as(dir, &etcd.url, "agent", Some(("federator", "s3cret-password"))).await?;
    admin.get("/federator/x", None).await?;

    let fed = Federation::formed(3, "").await?;
    // A exports from the secure etcd; B writes its imports and bundles into it.
    let a_options = AgentOptions {
        lease_ttl_seconds: Some(5),
        extra_config: format!(
            "\n[exports]\netcd_endpoints = [\"{url}\"]\netcd_prefix = \"/federator/exports/\"\n{}",
            auth_table("exports.etcd_auth", dir),
            url = etcd.url
        ),
        ..AgentOptions::default()
    };
    let b_options = AgentOptions {
        lease_ttl_seconds: Some(5),
        extra_config: format!(
            "\n[sinks.etcd]\nendpoints = [\"{url}\"]\nbundle_prefix = \"/federator/b/bundles/\"\nimport_prefix = \"/federator/b/imports/\"\n{}",
            auth_table("sinks.etcd.auth", dir),
            url = etcd.url
        ),
        ..AgentOptions::default()
    };
    let mut a = AgentProcess::new(&fed, MemberCluster::new("cluster-a", "a.example")?, &a_options)?;
    let mut b = AgentProcess::new(&fed, MemberCluster::new("cluster-b", "b.example")?, &b_options)?;
    a.start()?;
    b.start()?;
    let document = serde_json::json!({
        "ports": [{ "name": "http", "port": 80 }],
        "endpoints": [{ "address": "127.0.0.21" }],
        "identities": ["spiffe://a.example/ns/shop/sa/cart"]
    });
    admin.put("/federator/exports/shop/cart", document.to_string(), None).await?;

    let import = eventually("B's import of shop/cart in the secure etcd", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let got = admin.get("/federator/b/imports/shop/cart", None).await.ok()?;
            got.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        }
    })
    .await
    .inspect_err(|_| eprintln!("--- A ---\n{}\n--- B ---\n{}", a.log(), b.log()))?;
    assert!(import.contains("cluster-a"), "{import}");
    eventually("B's copy of A's bundle in the secure etcd", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let got = admin.get("/federator/b/bundles/a.example", None).await.ok()?;
            (!got.kvs().is_empty()).then_some(())
        }
    })
    .await?;
    Ok(())
}
