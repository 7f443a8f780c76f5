//! The etcd sink: the federated bundles and the imports as keys of the cluster's etcd, for
//! controllers that read etcd.
//!
//! | key | value |
//! |---|---|
//! | `<bundle_prefix><td>` | the SPIFFE bundle (JWKS) of trust domain `<td>`, [`TrustBundle::to_spiffe_json`](crate::bundle::TrustBundle::to_spiffe_json) |
//! | `<import_prefix><ns>/<name>` | the import, an [`ImportDocument`](super::files::ImportDocument) (compact JSON) |
//!
//! Each apply reads both prefixes, then writes only what differs: puts of new or changed
//! values and deletes of keys the view no longer has, in one transaction (several when a
//! view changes more keys than etcd takes in one: 128 operations, about 1 MiB). The sink
//! owns both prefixes: any other key under them is deleted. Only the federated bundles
//! are written, not the cluster's own.

use std::collections::BTreeMap;

use etcd_client::{Client, Txn, TxnOp};

use crate::agent::etcd_auth::EtcdAuth;

use super::files::import_json;
use crate::agent::sources::etcd_exports::{Range, call, connect, list, prefix_end};
use crate::agent::view::{AgentView, Sink, SinkError, SinkFuture};

/// The default prefix of bundle keys.
pub const DEFAULT_BUNDLE_PREFIX: &str = "/federator/bundles/";
/// The default prefix of import keys.
pub const DEFAULT_IMPORT_PREFIX: &str = "/federator/imports/";

/// The sink's name.
const NAME: &str = "etcd";
/// Most operations in one transaction (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// Most bytes of keys and values in one transaction (etcd's default
/// `--max-request-bytes` is 1.5 MiB).
const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Writes the federated bundles and the imports into etcd.
#[derive(Clone)]
pub struct EtcdSink {
    client: Client,
    endpoints: Vec<String>,
    bundle_prefix: String,
    import_prefix: String,
    /// `spiffe_refresh_hint` written with a bundle that carries none.
    refresh_hint_secs: u64,
}

impl std::fmt::Debug for EtcdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSink")
            .field("endpoints", &self.endpoints)
            .field("bundle_prefix", &self.bundle_prefix)
            .field("import_prefix", &self.import_prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSink {
    /// A sink writing into the etcd at `endpoints` (`127.0.0.1:2379` or
    /// `http://127.0.0.1:2379`), under `bundle_prefix` (usually [`DEFAULT_BUNDLE_PREFIX`])
    /// and `import_prefix` (usually [`DEFAULT_IMPORT_PREFIX`]), taken as given.
    ///
    /// Does not wait for etcd: an unreachable etcd makes [`Sink::apply`] fail (and the
    /// agent retry) while the other sinks go on.
    ///
    /// # Errors
    /// No endpoint, an endpoint the client refuses, an empty prefix, or prefixes that
    /// overlap (one sink's deletes would remove the other's keys).
    pub async fn connect(
        endpoints: Vec<String>,
        bundle_prefix: String,
        import_prefix: String,
    ) -> Result<Self, SinkError> {
        Self::connect_with(endpoints, &EtcdAuth::default(), bundle_prefix, import_prefix).await
    }

    /// [`EtcdSink::connect`] with TLS and authentication.
    ///
    /// # Errors
    /// As [`EtcdSink::connect`], or an `auth` file could not be read.
    pub async fn connect_with(
        endpoints: Vec<String>,
        auth: &EtcdAuth,
        bundle_prefix: String,
        import_prefix: String,
    ) -> Result<Self, SinkError> {
        if endpoints.is_empty() {
            return Err(SinkError::new(NAME, "name at least one etcd endpoint"));
        }
        if bundle_prefix.is_empty() || import_prefix.is_empty() {
            return Err(SinkError::new(NAME, "the bundle and import prefixes must not be empty"));
        }
        if bundle_prefix.starts_with(&import_prefix) || import_prefix.starts_with(&bundle_prefix) {
            return Err(SinkError::new(
                NAME,
                format!(
                    "the bundle prefix {bundle_prefix:?} and the import prefix \
                     {import_prefix:?} overlap"
                ),
            ));
        }
        let client =
            connect(&endpoints, auth).await.map_err(|e| SinkError::new(NAME, e.to_string()))?;
        Ok(Self {
            client,
            endpoints,
            bundle_prefix,
            import_prefix,
            refresh_hint_secs: crate::bundle::DEFAULT_REFRESH_HINT_SECS,
        })
    }

    /// Writes `secs` as the `spiffe_refresh_hint` of bundles that carry none.
    #[must_use]
    pub fn with_refresh_hint(mut self, secs: u64) -> Self {
        self.refresh_hint_secs = secs;
        self
    }

    /// The keys and values `view` should leave under both prefixes.
    fn desired(&self, view: &AgentView) -> BTreeMap<String, String> {
        let bundles = view.bundles.iter().map(|(td, bundle)| {
            (format!("{}{td}", self.bundle_prefix), bundle.to_served_json(self.refresh_hint_secs))
        });
        let imports = view.imports.iter().map(|(key, import)| {
            (format!("{}{}/{}", self.import_prefix, key.namespace, key.name), import_json(import))
        });
        bundles.chain(imports).collect()
    }

    /// What is under both prefixes now.
    async fn current(&self) -> Result<BTreeMap<String, Vec<u8>>, SinkError> {
        let mut current = BTreeMap::new();
        for prefix in [&self.bundle_prefix, &self.import_prefix] {
            let range = Range {
                endpoints: self.endpoints.clone(),
                auth: EtcdAuth::default(),
                key: prefix.clone().into_bytes(),
                range_end: Some(prefix_end(prefix.as_bytes())),
            };
            let (items, _) = list(&self.client, &range)
                .await
                .map_err(|e| SinkError::new(NAME, format!("reading {prefix}: {e}")))?;
            current.extend(items);
        }
        Ok(current)
    }

    async fn sync(&self, view: &AgentView) -> Result<(), SinkError> {
        let desired = self.desired(view);
        let current = self.current().await?;
        let mut batches: Vec<Vec<TxnOp>> = Vec::new();
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut batch_bytes = 0;
        let mut push = |op: TxnOp, bytes: usize| {
            if !batch.is_empty()
                && (batch.len() >= MAX_TXN_OPS || batch_bytes + bytes > MAX_TXN_BYTES)
            {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch.push(op);
            batch_bytes += bytes;
        };
        let (mut puts, mut deletes) = (0usize, 0usize);
        for (key, value) in &desired {
            if current.get(key).map(Vec::as_slice) != Some(value.as_bytes()) {
                push(TxnOp::put(key.as_str(), value.as_str(), None), key.len() + value.len());
                puts += 1;
            }
        }
        for key in current.keys().filter(|key| !desired.contains_key(*key)) {
            push(TxnOp::delete(key.as_str(), None), key.len());
            deletes += 1;
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        if batches.is_empty() {
            return Ok(());
        }
        let mut kv = self.client.kv_client();
        let count = batches.len();
        for (i, ops) in batches.into_iter().enumerate() {
            call(kv.txn(Txn::new().and_then(ops))).await.map_err(|e| {
                SinkError::new(NAME, format!("transaction {} of {count}: {e}", i + 1))
            })?;
        }
        tracing::info!(
            revision = view.revision,
            puts,
            deletes,
            transactions = count,
            "etcd sink applied"
        );
        Ok(())
    }
}

impl Sink for EtcdSink {
    fn name(&self) -> &str {
        NAME
    }

    fn apply<'a>(&'a self, view: &'a AgentView) -> SinkFuture<'a> {
        Box::pin(self.sync(view))
    }
}

#[cfg(test)]
mod tests {
    use etcd_client::GetOptions;

    use super::*;
    use crate::agent::sinks::files::tests::{bundle, import, view};
    use crate::agent::sources::etcd_exports::test_etcd::{TestEtcd, available};

    async fn sink(etcd: &TestEtcd) -> EtcdSink {
        EtcdSink::connect(
            vec![etcd.url()],
            DEFAULT_BUNDLE_PREFIX.into(),
            DEFAULT_IMPORT_PREFIX.into(),
        )
        .await
        .expect("sink")
    }

    /// Every key and value under `/`, and etcd's revision.
    async fn dump(etcd: &TestEtcd) -> (BTreeMap<String, String>, i64) {
        let response =
            etcd.client().await.get("/", Some(GetOptions::new().with_prefix())).await.expect("get");
        let revision = response.header().expect("header").revision();
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().expect("UTF-8").to_string(),
                    kv.value_str().expect("UTF-8").to_string(),
                )
            })
            .collect();
        (kvs, revision)
    }

    #[tokio::test]
    async fn a_view_is_written_as_keys_and_kept_in_step() {
        if !available() {
            return;
        }
        let etcd = TestEtcd::start().await;
        let mut client = etcd.client().await;
        client.put("/federator/bundles/stale.example", "x", None).await.expect("put");
        client.put("/federator/exports/shop/cart", "{}", None).await.expect("put");
        client.put("/federator/bundlesx", "not ours", None).await.expect("put");
        let sink = sink(&etcd).await;
        assert_eq!(sink.name(), "etcd");

        let b = bundle("b.example", 5);
        let c = bundle("c.example", 7);
        let cart = import("shop", "cart", 3);
        let first = view(&[&b, &c], &[cart.clone(), import("web", "front", 4)]);
        sink.apply(&first).await.expect("apply");
        let (keys, revision) = dump(&etcd).await;
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            [
                "/federator/bundles/b.example",
                "/federator/bundles/c.example",
                "/federator/bundlesx",
                "/federator/exports/shop/cart",
                "/federator/imports/shop/cart",
                "/federator/imports/web/front",
            ],
            "the own bundle is not written, the stale one is gone, others are untouched"
        );
        assert_eq!(keys["/federator/bundles/b.example"], b.to_spiffe_json());
        assert_eq!(keys["/federator/imports/shop/cart"], import_json(&cart));

        // The same view again writes nothing.
        sink.apply(&first).await.expect("apply");
        assert_eq!(dump(&etcd).await.1, revision, "no write");

        // One bundle leaves, one import changes: one transaction (one revision).
        let changed = view(&[&b], &[import("shop", "cart", 9), import("web", "front", 4)]);
        sink.apply(&changed).await.expect("apply");
        let (keys, next) = dump(&etcd).await;
        assert_eq!(next, revision + 1, "one transaction");
        assert!(!keys.contains_key("/federator/bundles/c.example"));
        assert_eq!(keys["/federator/imports/shop/cart"], import_json(&import("shop", "cart", 9)));

        sink.apply(&view(&[], &[])).await.expect("apply");
        let (keys, _) = dump(&etcd).await;
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            ["/federator/bundlesx", "/federator/exports/shop/cart"]
        );
    }

    #[tokio::test]
    async fn a_large_view_is_written_in_several_transactions() {
        if !available() {
            return;
        }
        let etcd = TestEtcd::start().await;
        let sink = sink(&etcd).await;
        let imports: Vec<_> = (0..300).map(|i| import("ns", &format!("svc-{i}"), 1)).collect();
        sink.apply(&view(&[], &imports)).await.expect("apply");
        let (keys, _) = dump(&etcd).await;
        assert_eq!(keys.len(), 300);
        sink.apply(&view(&[], &imports[..10])).await.expect("apply");
        assert_eq!(dump(&etcd).await.0.len(), 10);
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let endpoints = || vec!["127.0.0.1:2379".to_string()];
        for (bundles, imports) in
            [("/f/", "/f/imports/"), ("/f/bundles/", "/f/"), ("", "/i/"), ("/b/", "")]
        {
            let err = EtcdSink::connect(endpoints(), bundles.into(), imports.into())
                .await
                .expect_err("refused");
            assert_eq!(err.sink, "etcd");
        }
        assert!(EtcdSink::connect(vec![], "/b/".into(), "/i/".into()).await.is_err());
    }

    #[tokio::test]
    async fn an_unreachable_etcd_fails_the_apply() {
        let port = crate::net::free_local_port().expect("port");
        let sink = EtcdSink::connect(
            vec![format!("127.0.0.1:{port}")],
            DEFAULT_BUNDLE_PREFIX.into(),
            DEFAULT_IMPORT_PREFIX.into(),
        )
        .await
        .expect("no wait for etcd");
        let err = sink.apply(&view(&[], &[])).await.expect_err("unreachable");
        assert_eq!(err.sink, "etcd");
        assert!(err.message.contains("reading /federator/bundles/"), "{err}");
    }
}
