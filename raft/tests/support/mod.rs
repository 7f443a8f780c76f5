//! What the in-process replica tests share: a throwaway PKI made with rcgen, and replicas
//! serving their transport on 127.0.0.1, formed into a group, stopped and reopened.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use federator_raft::metrics::ConsensusMetrics;
use federator_raft::network::{Network, TransportOptions};
use federator_raft::types::NodeId;
use federator_raft::{Replica, ReplicaConfig, StateMachine};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// === test PKI ===

/// One CA and one leaf (for 127.0.0.1, server and client use) that every replica shares.
pub struct Pki {
    /// The CA certificate, trusted by everyone.
    ca: CertificateDer<'static>,
    /// The leaf certificate.
    cert: CertificateDer<'static>,
    /// The leaf's key, PKCS#8 DER.
    key: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "replica test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA").der().clone();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, "replica");
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("sign leaf").der().clone();
        Self { ca, cert, key: key.serialize_der() }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("add CA to roots");
        Arc::new(roots)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), Self::provider())
            .build()
            .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())
            .expect("server certificate");
        Arc::new(config)
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .expect("client certificate");
        Arc::new(config)
    }
}

// === harness ===

/// A running replica serving its transport.
pub struct Running<S: StateMachine> {
    /// The replica.
    pub replica: Replica<S>,
    /// Stops the transport server when dropped.
    shutdown: oneshot::Sender<()>,
    /// Holds the database.
    pub dir: TempDir,
}

impl<S: StateMachine> Running<S> {
    /// Shuts the replica down and stops its transport; returns its directory (the
    /// database stays) for [`reopen`].
    pub async fn stop(self) -> TempDir {
        let _ = self.replica.shutdown().await;
        drop(self.shutdown);
        self.dir
    }
}

/// Starts replica `id` with a new directory on a free port.
pub async fn start<S: StateMachine + Default>(pki: &Pki, id: NodeId) -> Running<S> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    open(pki, id, TempDir::new().expect("temp dir"), listener).await
}

/// Opens replica `id` again from `dir` on its old transport address `addr`.
pub async fn reopen<S: StateMachine + Default>(
    pki: &Pki,
    id: NodeId,
    dir: TempDir,
    addr: &str,
) -> Running<S> {
    let mut listener = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(bound) => {
                listener = Some(bound);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    open(pki, id, dir, listener.expect("the old address is free again")).await
}

async fn open<S: StateMachine + Default>(
    pki: &Pki,
    id: NodeId,
    dir: TempDir,
    listener: TcpListener,
) -> Running<S> {
    let addr = listener.local_addr().expect("local addr").to_string();
    let mut config = ReplicaConfig::new(id, addr, dir.path());
    config.heartbeat_interval = Duration::from_millis(100);
    config.election_timeout_min = Duration::from_millis(400);
    config.election_timeout_max = Duration::from_millis(800);
    config.write_retries = 3;
    // A stopped replica's last handles (its transport task) may still hold the database
    // for a moment.
    let mut attempts = 0;
    let replica = loop {
        attempts += 1;
        let opened = Replica::open(
            config.clone(),
            S::default(),
            pki.client_tls(),
            ConsensusMetrics::default(),
        )
        .await;
        match opened {
            Ok(replica) => break replica,
            Err(_) if attempts < 50 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("open replica: {error}"),
        }
    };
    let (shutdown, stop) = oneshot::channel::<()>();
    let serving = replica.clone();
    let server_tls = pki.server_tls();
    tokio::spawn(async move {
        serving
            .serve_transport(listener, server_tls, None, async move {
                let _ = stop.await;
            })
            .await
    });
    Running { replica, shutdown, dir }
}

/// Starts replicas `ids`, initializes the group on the first, and waits until every
/// replica knows the same leader. Returns the replicas and the leader's id.
pub async fn start_group<S: StateMachine + Default>(
    pki: &Pki,
    ids: &[NodeId],
) -> (Vec<Running<S>>, NodeId) {
    let mut group = Vec::new();
    for id in ids {
        group.push(start(pki, *id).await);
    }
    let members: BTreeMap<NodeId, String> =
        group.iter().map(|r| (r.replica.id(), r.replica.raft_addr().to_string())).collect();
    group[0].replica.initialize(members).await.expect("initialize");
    let leader = wait_for_leader(&group.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    (group, leader)
}

/// Waits until `replicas` agree on one leader and returns it.
pub async fn wait_for_leader<S: StateMachine>(
    replicas: &[&Running<S>],
    timeout: Duration,
) -> NodeId {
    let leader = replicas[0]
        .replica
        .raft()
        .wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .expect("leader elected")
        .current_leader
        .expect("leader known");
    for running in replicas {
        running
            .replica
            .raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(leader), "the leader is known everywhere")
            .await
            .expect("leader known everywhere");
    }
    leader
}

/// A transport client of the group's PKI, as another replica would have.
pub fn network(pki: &Pki) -> Network {
    let options = TransportOptions { rpc_timeout: Duration::from_secs(5), ..Default::default() };
    Network::new(pki.client_tls(), options, ConsensusMetrics::default())
}
