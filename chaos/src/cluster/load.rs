//! A write load of probe keys over admin connections ([`write_load`]), and the check
//! that every write it saw acknowledged is on a replica with its value.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use federator::cli::Connection;
use federator_proto::admin as pb;

use super::Federation;

/// Probe keys and their values, as a replica has applied them.
pub type Probes = BTreeMap<String, String>;

/// Writes acknowledged by the federation during a [`write_load`].
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged (key, value) pairs.
    pub acked: Vec<(String, String)>,
    /// Writes whose outcome is unknown (timeout or connection lost mid-call).
    pub indeterminate: usize,
}

/// Runs `clients` concurrent writers of distinct keys under `prefix`, each rotating over
/// `endpoints` on failure, until `stop` turns true (or 50,000 writes per client).
pub async fn write_load(
    connection: Connection,
    clients: usize,
    prefix: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> LoadResult {
    let tasks = (0..clients).map(|c| {
        let connection = connection.clone();
        let stop = stop.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut result = LoadResult::default();
            let endpoints = connection.endpoints().to_vec();
            let mut at = c % endpoints.len();
            let mut client = None;
            for i in 0..50_000u64 {
                if *stop.borrow() {
                    break;
                }
                if client.is_none() {
                    match connection.admin(&endpoints[at]).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            at = (at + 1) % endpoints.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(admin) = client.as_mut() else {
                    continue;
                };
                let key = format!("{prefix}/c{c}/{i}");
                let value = format!("v{i}");
                let call = admin
                    .put(pb::PutRequest { key: key.clone(), value: value.clone().into_bytes() });
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(_)) => result.acked.push((key, value)),
                    Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                        panic!("write refused as invalid: {status}")
                    }
                    _ => {
                        result.indeterminate += 1;
                        client = None;
                        at = (at + 1) % endpoints.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            result
        })
    });
    let mut total = LoadResult::default();
    for r in futures::future::join_all(tasks).await.into_iter().flatten() {
        total.acked.extend(r.acked);
        total.indeterminate += r.indeterminate;
    }
    total
}

impl Federation {
    /// Every probe under `prefix` as replica `id` has applied it (stale read).
    ///
    /// # Errors
    /// The replica did not answer.
    pub async fn probes(&self, id: u64, prefix: &str) -> anyhow::Result<Probes> {
        let mut client = self.admin(id).await?;
        let list = client
            .list_probes(pb::ListProbesRequest {
                prefix: prefix.to_string(),
                consistency: pb::Consistency::Stale.into(),
            })
            .await?
            .into_inner();
        Ok(list
            .entries
            .into_iter()
            .map(|e| (e.key, String::from_utf8_lossy(&e.value).into_owned()))
            .collect())
    }

    /// Asserts every acknowledged write is on replica `id` with its value, once `id` has
    /// applied what the leader had committed (a linearizable read through it first: equal
    /// digests at an equal index right after a restart can still be below the commit
    /// index the leader has not yet announced).
    ///
    /// # Errors
    /// A write is missing or has another value.
    pub async fn assert_has_all(
        &self,
        id: u64,
        prefix: &str,
        acked: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut client = self.admin(id).await?;
        let barrier = pb::ListProbesRequest {
            prefix: "barrier/".into(),
            consistency: pb::Consistency::Linearizable.into(),
        };
        if let Err(status) = client.list_probes(barrier).await {
            tracing::debug!(replica = id, %status, "no linearizable barrier; reading what is applied");
        }
        let stored = self.probes(id, prefix).await?;
        let missing: Vec<&String> =
            acked.iter().filter(|(k, v)| stored.get(k) != Some(v)).map(|(k, _)| k).collect();
        if !missing.is_empty() {
            bail!(
                "replica {id} lacks {} of {} acknowledged writes, e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)]
            );
        }
        Ok(())
    }
}

/// Waits until one of `ids` has committed `entries` more entries than when called, at
/// most 30 s: a write load running beside it flows (instead of letting it run for a fixed
/// time, which on a slow machine may commit next to nothing).
///
/// # Errors
/// Not that many entries were committed in time.
pub async fn load_commits(fed: &Federation, ids: &[u64], entries: u64) -> anyhow::Result<()> {
    let mut from = 0;
    for id in ids {
        if let Some(status) = fed.status(*id).await {
            from = from.max(status.commit_index);
        }
    }
    let what = format!("the write load to commit {entries} entries past {from}");
    crate::wait::eventually(&what, Duration::from_secs(30), || async {
        for id in ids {
            if fed.status(*id).await.is_some_and(|s| s.commit_index >= from + entries) {
                return Some(());
            }
        }
        None
    })
    .await
}
