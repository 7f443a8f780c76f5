//! TLS and authentication of the agent's connections to its cluster's etcd (the export
//! source, the bundle source and the sink): a CA to verify etcd's serving certificate, a
//! client certificate for etcd's `--client-cert-auth`, and a user of etcd's own
//! authentication. Files are read at every (re)connection, so a rotated client
//! certificate or password is taken up without a restart; the configuration is checked
//! at start-up, naming the field.
//!
//! ```toml
//! [exports.etcd_auth]              # also [sinks.etcd.auth] and [bundle] auth = {...}
//! ca = "/etc/etcd/ca.pem"           # TLS: etcd's CA (endpoints are then https://)
//! cert = "/etc/etcd/agent.pem"      # client certificate, with key
//! key = "/etc/etcd/agent.key"
//! username = "federator"            # etcd user, with password_file
//! password_file = "/etc/etcd/federator.password"
//! ```

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::settings::ConfigError;

/// How to authenticate to an etcd (and verify it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuth {
    /// The CA that signed etcd's serving certificate (PEM): connect over TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with `cert`.
    pub key: Option<PathBuf>,
    /// etcd user, with `password_file`.
    pub username: Option<String>,
    /// A file holding that user's password (one line).
    pub password_file: Option<PathBuf>,
}

/// Why etcd's TLS or authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdAuthError {
    /// A file could not be read.
    #[error("{what} {path} cannot be read: {source}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{what} {path}: {problem}")]
    Pem {
        /// Which setting.
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// How an agent's etcd client is made.
pub enum EtcdConnect {
    /// Plain, or only a user: etcd-client's own connection.
    Plain(ConnectOptions),
    /// TLS: a channel over Federator's rustls connector (etcd-client's TLS would switch
    /// on tonic's, which takes over every `https://` channel of the process).
    Tls {
        /// The client configuration (roots: the CA; client certificate if any).
        config: Arc<rustls::ClientConfig>,
        /// etcd-client's options (the user).
        options: ConnectOptions,
    },
}

impl EtcdAuth {
    /// Whether nothing is set (plain connections, no user).
    #[must_use]
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// Whether TLS is set up.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.ca, &mut self.cert, &mut self.key, &mut self.password_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Checks the settings for `endpoints`; `field` is the table's name
    /// (`exports.etcd_auth`).
    ///
    /// # Errors
    /// Half a pair (cert without key, user without password file), a client certificate
    /// without a CA, an `http://` endpoint with TLS, or a file that cannot be read.
    pub fn check(&self, field: &'static str, endpoints: &[String]) -> Result<(), ConfigError> {
        let invalid = |value: String, rule: &str| ConfigError::Invalid {
            field,
            value,
            rule: rule.to_string(),
        };
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(
                format!("cert {:?}, key {:?}", self.cert, self.key),
                "give the client certificate and its key together",
            ));
        }
        if self.cert.is_some() && self.ca.is_none() {
            return Err(invalid(
                String::new(),
                "a client certificate needs TLS: give ca, the CA of etcd's serving certificate",
            ));
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err(invalid(
                format!("username {:?}", self.username),
                "give username and password_file together",
            ));
        }
        if let Some(plain) = endpoints.iter().find(|e| self.tls() && e.starts_with("http://")) {
            return Err(invalid(
                plain.clone(),
                "TLS is set up (ca): write the endpoints as https://HOST:PORT or HOST:PORT",
            ));
        }
        if let Some(secure) = endpoints.iter().find(|e| !self.tls() && e.starts_with("https://")) {
            return Err(invalid(secure.clone(), "an https:// endpoint needs ca (etcd's CA)"));
        }
        self.connect(ConnectOptions::new())
            .map(|_| ())
            .map_err(|e| invalid(String::new(), &e.to_string()))
    }

    /// How to connect with `options`, the files read now.
    ///
    /// # Errors
    /// A file could not be read or holds no certificate or key.
    pub fn connect(&self, mut options: ConnectOptions) -> Result<EtcdConnect, EtcdAuthError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| EtcdAuthError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let pem = |what: &'static str, path: &Path, problem: String| EtcdAuthError::Pem {
            what,
            path: path.display().to_string(),
            problem,
        };
        if let (Some(user), Some(file)) = (&self.username, &self.password_file) {
            let password = String::from_utf8_lossy(&read("password_file", file)?).into_owned();
            options = options.with_user(user.clone(), password.trim_end_matches(['\r', '\n']));
        }
        let Some(ca) = &self.ca else { return Ok(EtcdConnect::Plain(options)) };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read("ca", ca)?) {
            let cert = cert.map_err(|e| pem("ca", ca, e.to_string()))?;
            roots.add(cert).map_err(|e| pem("ca", ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem("ca", ca, "holds no PEM certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| pem("ca", ca, e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&read("cert", cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem("cert", cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(pem("cert", cert, "holds no PEM certificate".into()));
                }
                let private = PrivateKeyDer::from_pem_slice(&read("key", key)?)
                    .map_err(|e| pem("key", key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| pem("key", key, e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(EtcdConnect::Tls { config: Arc::new(config), options })
    }
}

/// Why no TLS connection to etcd could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdTlsError {
    /// An endpoint is not a URI.
    #[error("{endpoint}: {source}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it does not parse.
        source: tonic::transport::Error,
    },
    /// Every endpoint failed; why, in order.
    #[error("{}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// The connection was made but etcd refused the client (its user or password).
    #[error("{endpoint}: {source}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// etcd's answer.
        source: etcd_client::Error,
    },
    /// The connection was made but authenticating took longer than the timeout.
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The bound.
        timeout: Duration,
    },
}

/// Connects to the first of `endpoints` that answers over TLS with `config`, then
/// authenticates with `options`' user; `timeout` bounds each attempt.
///
/// # Errors
/// No endpoint could be reached, or the user was refused.
pub async fn connect_tls(
    endpoints: &[String],
    config: Arc<rustls::ClientConfig>,
    options: ConnectOptions,
    timeout: Duration,
    keep_alive: (Duration, Duration),
) -> Result<Client, EtcdTlsError> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        let address = endpoint.trim_start_matches("https://");
        let target = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
            .map_err(|source| EtcdTlsError::Endpoint { endpoint: endpoint.clone(), source })?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(keep_alive.0)
            .keep_alive_timeout(keep_alive.1)
            .keep_alive_while_idle(true);
        let channel = target.connect_with_connector(federator_raft::tls::connector(config.clone()));
        match tokio::time::timeout(timeout, channel).await {
            Ok(Ok(channel)) => {
                let client =
                    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options));
                return match tokio::time::timeout(timeout, client).await {
                    Ok(result) => result.map_err(|source| EtcdTlsError::Refused {
                        endpoint: endpoint.clone(),
                        source,
                    }),
                    Err(_) => Err(EtcdTlsError::Timeout { endpoint: endpoint.clone(), timeout }),
                };
            }
            Ok(Err(error)) => failures.push(format!("{endpoint}: {error}")),
            Err(_) => failures.push(format!("{endpoint}: no answer within {timeout:?}")),
        }
    }
    Err(EtcdTlsError::Unreachable(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(pairs: &[(&str, &str)]) -> EtcdAuth {
        let mut text = String::new();
        for (k, v) in pairs {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
        toml::from_str(&text).expect("parses")
    }

    #[test]
    fn half_pairs_and_scheme_mismatches_are_refused_with_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f.pem");
        std::fs::write(&file, "x").expect("write");
        let f = file.to_str().expect("utf-8");
        let endpoints = ["127.0.0.1:2379".to_string()];
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [String], &'a str);
        let cases: [Case; 6] = [
            (&[("cert", f)], &endpoints, "together"),
            (&[("cert", f), ("key", f)], &endpoints, "needs TLS"),
            (&[("username", "u")], &endpoints, "together"),
            (&[("ca", f)], &["http://127.0.0.1:2379".to_string()], "https://"),
            (&[], &["https://127.0.0.1:2379".to_string()], "needs ca"),
            (&[("ca", "/nonexistent/ca.pem")], &endpoints, "cannot be read"),
        ];
        for (pairs, endpoints, expected) in cases {
            let error = auth(pairs).check("sinks.etcd.auth", endpoints).expect_err("refused");
            let text = error.to_string();
            assert!(
                text.contains("sinks.etcd.auth") && text.contains(expected),
                "{pairs:?}: {text}"
            );
        }
        // Not PEM: named as such.
        let error = auth(&[("ca", f)]).check("sinks.etcd.auth", &endpoints).expect_err("no PEM");
        assert!(error.to_string().contains("holds no PEM certificate"), "{error}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["etcd".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        let (c, k) = (cert_path.to_str().expect("utf-8"), key_path.to_str().expect("utf-8"));
        let fine =
            auth(&[("ca", c), ("cert", c), ("key", k), ("username", "u"), ("password_file", f)]);
        fine.check("sinks.etcd.auth", &endpoints).expect("a full set of settings");
        assert!(EtcdAuth::default().check("x", &["http://127.0.0.1:2379".to_string()]).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<EtcdAuth>("password = \"x\"").is_err());
    }
}
