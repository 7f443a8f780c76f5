//! The SPIFFE bundle endpoint (SPIFFE Federation specification) on every replica: each
//! member's bundle as a SPIFFE bundle document at `GET /bundles/<trust-domain>`, and
//! the list of trust domains at `GET /bundles`. Served under the `https_spiffe` profile
//! (the federation's own SVID) and/or the `https_web` profile (a web PKI certificate
//! from files), so that SPIRE or Istio can consume federated bundles with no agent.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::{FederationReplica, ServerError, bind};
use crate::bundle::{TrustBundle, ValidationPolicy, parse_pem_bundle};
use crate::config::ServerConfig;
use crate::identity::{TlsFiles, TlsMaterial};

/// What the endpoint serves from.
#[derive(Clone)]
struct Shared {
    replica: FederationReplica,
    /// The federation's own bundle (its CA), served like a member's.
    own: Option<Arc<TrustBundle>>,
}

/// Starts the configured bundle endpoints; each stops when `stop` turns true.
pub async fn spawn_all(
    config: &ServerConfig,
    material: &TlsMaterial,
    replica: FederationReplica,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    let own = own_bundle(config, material);
    let shared = Shared { replica, own: own.map(Arc::new) };
    let mut tasks = Vec::new();
    let endpoints = [
        ("bundle_endpoint.listen_spiffe", &config.bundle_endpoint.spiffe, "https_spiffe"),
        ("bundle_endpoint.listen_web", &config.bundle_endpoint.web, "https_web"),
    ];
    for (what, endpoint, profile) in endpoints {
        let Some((addr, files)) = endpoint else { continue };
        let tls = serving_material(files, material)?.public_server_config()?;
        let listener = bind(what, *addr).await?;
        tracing::info!(%addr, profile, "serving the SPIFFE bundle endpoint");
        let mut stop = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tasks.push(tokio::spawn(serve(listener, tls, router(shared.clone()), stopped)));
    }
    Ok(tasks)
}

/// The certificate to serve: the configured files, or this replica's own.
fn serving_material(
    files: &Option<TlsFiles>,
    own: &TlsMaterial,
) -> Result<TlsMaterial, ServerError> {
    match files {
        Some(files) => {
            let material = files.load()?;
            material.identity.watch(super::CERTIFICATE_CHECK_PERIOD);
            Ok(material)
        }
        None => Ok(TlsMaterial { ca: own.ca.clone(), identity: own.identity.clone() }),
    }
}

fn own_bundle(config: &ServerConfig, material: &TlsMaterial) -> Option<TrustBundle> {
    let pem = crate::identity::certificates_to_pem(material.ca.iter().map(AsRef::as_ref));
    let policy = ValidationPolicy::at(super::unix_now());
    match parse_pem_bundle(&config.trust_domain, pem.as_bytes(), 1, None, &policy) {
        Ok(bundle) => Some(bundle),
        Err(error) => {
            tracing::warn!(%error, "the federation CA is not served as a bundle");
            None
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/bundles", get(list))
        .route("/bundles/{trust_domain}", get(bundle))
        .with_state(shared)
}

async fn list(State(shared): State<Shared>) -> Response {
    let mut domains: Vec<String> =
        shared.replica.state().read(|s| s.bundles.keys().cloned().collect());
    if let Some(own) = &shared.own {
        domains.push(own.trust_domain.clone());
    }
    domains.sort();
    json(serde_json::json!({ "trust_domains": domains }).to_string())
}

async fn bundle(State(shared): State<Shared>, Path(trust_domain): Path<String>) -> Response {
    if let Some(own) = shared.own.as_ref().filter(|o| o.trust_domain == trust_domain) {
        return json(own.to_spiffe_json());
    }
    let document = shared
        .replica
        .state()
        .read(|s| s.bundles.get(&trust_domain).map(|b| b.bundle.to_spiffe_json()));
    match document {
        Some(document) => json(document),
        None => (StatusCode::NOT_FOUND, format!("no bundle for trust domain {trust_domain:?}\n"))
            .into_response(),
    }
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// Accepts TLS connections and serves `app` over HTTP/1.1 or HTTP/2 until `stop`.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stop: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "bundle endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "bundle endpoint handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%error, %peer, "bundle endpoint connection ended");
            }
        });
    }
}
