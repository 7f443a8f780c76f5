//! A real Kubernetes API server on loopback — kube-apiserver v1.37.2 backed by its own
//! etcd, no kubelet and no controllers — started by `deploy/local/kube-apiserver.sh`
//! (which builds it from the Go module proxy once per machine). Tests create what a
//! controller would (Services, EndpointSlices) themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

use crate::wait::eventually;

/// The script that builds, starts and stops the apiserver.
#[must_use]
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kube-apiserver.sh")
}

/// Runs `openssl` with `args` in `dir` (certificates for test servers).
///
/// # Errors
/// It could not be run or failed (its stderr is in the error).
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One kube-apiserver and its etcd, stopped when dropped.
pub struct KubeApiServer {
    dir: tempfile::TempDir,
    /// An admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
}

impl KubeApiServer {
    /// Starts one on free loopback ports and waits until `/readyz` answers (a few
    /// seconds; the first start on a machine also builds it).
    ///
    /// # Errors
    /// The script failed (its output says why).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("federator-kube-").tempdir()?;
        let path = dir.path().to_path_buf();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash").arg(script()).arg("start").arg(&path).output()
        })
        .await??;
        let server = Self { kubeconfig: dir.path().join("kubeconfig"), dir };
        if !output.status.success() {
            bail!(
                "kube-apiserver.sh start failed ({}):\n{}\n--- kube-apiserver log ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                server.log_tail(30)
            );
        }
        Ok(server)
    }

    /// Its directory (certificates, logs, etcd data).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An admin client.
    ///
    /// # Errors
    /// The kubeconfig is unusable.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates `definitions` and waits until the API server serves them.
    ///
    /// # Errors
    /// A definition was refused or not established within 30 s.
    pub async fn install_crds(
        &self,
        definitions: &[CustomResourceDefinition],
    ) -> anyhow::Result<()> {
        let api = Api::<CustomResourceDefinition>::all(self.client().await?);
        for crd in definitions {
            api.create(&PostParams::default(), crd).await.context("creating a CRD")?;
        }
        for crd in definitions {
            let name = crd.metadata.name.clone().unwrap_or_default();
            eventually(
                &format!("CRD {name} established"),
                std::time::Duration::from_secs(30),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await.ok()?;
                        crd.status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                            .then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// A kubeconfig of the user `user` (a client certificate signed by the apiserver's
    /// CA, in no group): what RBAC grants that user and nothing more.
    ///
    /// # Errors
    /// openssl failed, or the admin kubeconfig names no server.
    pub fn user_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let pki = self.dir().join("pki");
        let dir = self.dir().join(format!("user-{user}"));
        std::fs::create_dir_all(&dir)?;
        let run = |args: &[&str]| openssl(&dir, args);
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "user.key",
        ])?;
        run(&[
            "req",
            "-new",
            "-key",
            "user.key",
            "-subj",
            &format!("/CN={user}"),
            "-out",
            "user.csr",
        ])?;
        std::fs::write(dir.join("user.ext"), "extendedKeyUsage=clientAuth\n")?;
        let (ca, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
        run(&[
            "x509",
            "-req",
            "-in",
            "user.csr",
            "-CA",
            &ca.to_string_lossy(),
            "-CAkey",
            &ca_key.to_string_lossy(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "user.ext",
            "-out",
            "user.crt",
        ])?;
        let admin = std::fs::read_to_string(&self.kubeconfig)?;
        let server = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .context("the admin kubeconfig names no server")?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {dir}/user.crt\n    client-key: {dir}/user.key\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n",
                ca = ca.display(),
                dir = dir.display(),
            ),
        )?;
        Ok(kubeconfig)
    }

    /// The apiserver's log, last `lines` lines.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"));
        crate::cluster::tail(&log.unwrap_or_default(), lines)
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).output();
    }
}
