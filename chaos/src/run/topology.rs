//! A federation whose every replica-to-replica link runs through a fault proxy.
//!
//! Replica `i` reaches replica `j` through its own proxy `(i, j)` (the replicas' `dial`
//! setting), so a link can be cut, slowed or made flaky in one direction without
//! touching the others: `(i, j)` carries the connections `i` opens to `j`, requests
//! client-to-server and answers server-to-client.
//!
//! Spare replicas (for membership changes) get their proxies, `dial` settings and
//! addresses up front but are neither started nor in the group until added.
//!
//! The member cluster's agent ([`super::member_down`]) reaches every replica's API
//! through a proxy of its own ([`Topology::agent_links`], TLS passing through untouched)
//! and its etcd through another ([`Topology::etcd_link`]). Faults treat the agent's link
//! to a replica like a link of that replica: cutting a replica off also cuts the agent's
//! link to it (the agent stands on the other side, with the majority), a deaf replica
//! does not hear the agent either, and latency, bandwidth caps and dropped connections
//! hit every link, the etcd link included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;

use crate::cluster::Federation;
use crate::disk::SmallDisk;
use crate::proxy::{Blackhole, Faults, Proxy};

/// The federation and its link proxies.
pub struct Topology {
    /// Each replica's data directory on a small filesystem of its own, when the scenario
    /// fills disks (declared before `fed`: unmounted before its directory is removed).
    pub disks: BTreeMap<u64, SmallDisk>,
    /// The replicas.
    pub fed: Federation,
    /// Proxy of each directed link (from, to).
    pub links: BTreeMap<(u64, u64), Proxy>,
    /// The current voters: the replicas the group holds (faults pick from them, the
    /// run waits for them to agree and checks their final states).
    pub ids: Vec<u64>,
    /// Replicas with proxies and addresses that are not in the group now.
    pub spares: Vec<u64>,
    /// API address of every replica, voter or spare (planned before any starts, kept
    /// across wipes).
    pub api_addrs: BTreeMap<u64, String>,
    /// Proxy of the member agent's link to each replica's API (voters and spares).
    pub agent_links: BTreeMap<u64, Proxy>,
    /// Proxy of the member agent's link to its etcd, once that runs
    /// ([`Topology::link_etcd`]).
    pub etcd_link: Option<Proxy>,
}

impl Topology {
    /// Starts `replicas` replicas with a proxy on every link and forms the group; plans
    /// `spares` more (ids after the replicas') with their proxies, not started.
    ///
    /// # Errors
    /// A replica or proxy did not start, or the group did not form.
    pub async fn start(
        replicas: u64,
        spares: u64,
        seed: u64,
        timing: federator_raft::Timing,
        disk_mib: Option<u32>,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        let ids: Vec<u64> = (1..=replicas).collect();
        let spare_ids: Vec<u64> = (replicas + 1..=replicas + spares).collect();
        let all: Vec<u64> = (1..=replicas + spares).collect();
        let mut fed = Federation::new(replicas + spares)?;
        fed.show_logs_on_drop = false;
        fed.timing = timing;
        fed.extra_config = extra_config.to_string();
        let addrs: BTreeMap<u64, String> =
            all.iter().map(|&id| (id, fed.plan_raft_addr(id))).collect();
        let api_addrs: BTreeMap<u64, String> =
            all.iter().map(|&id| (id, fed.plan_api_addr(id))).collect();
        let mut links = BTreeMap::new();
        for &from in &all {
            let mut dial = String::from("dial = {");
            for &to in &all {
                if from == to {
                    continue;
                }
                let target: SocketAddr = addrs[&to].parse().context("a planned address")?;
                let proxy = Proxy::start(target, seed ^ (from << 32 | to))?;
                let _ = write!(dial, " \"{}\" = \"{}\",", addrs[&to], proxy.addr());
                links.insert((from, to), proxy);
            }
            dial.pop();
            dial.push_str(" }");
            fed.replica_config.insert(from, dial);
        }
        let mut agent_links = BTreeMap::new();
        for &to in &all {
            let target: SocketAddr = api_addrs[&to].parse().context("a planned API address")?;
            agent_links.insert(to, Proxy::start(target, seed ^ (AGENT_LINK << 32 | to))?);
        }
        let mut disks = BTreeMap::new();
        if let Some(megabytes) = disk_mib {
            for &id in &all {
                let dir = fed.dir().join(format!("replica-{id}"));
                disks.insert(id, SmallDisk::mount(&dir, megabytes)?);
            }
        }
        for &id in &ids {
            fed.start(id, false)?;
        }
        fed.form_group(&ids).await?;
        Ok(Self {
            disks,
            fed,
            links,
            ids,
            spares: spare_ids,
            api_addrs,
            agent_links,
            etcd_link: None,
        })
    }

    /// The member agent's federation endpoints: its proxies to every replica's API, in
    /// replica order.
    #[must_use]
    pub fn agent_endpoints(&self) -> Vec<String> {
        self.agent_links.values().map(|p| p.addr().to_string()).collect()
    }

    /// Puts a proxy between the member agent and its etcd at `url` (`http://host:port`);
    /// returns the URL the agent is to use instead.
    ///
    /// # Errors
    /// `url` is no `http://` socket address, or the proxy did not start.
    pub fn link_etcd(&mut self, url: &str, seed: u64) -> anyhow::Result<String> {
        let target: SocketAddr = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .parse()
            .with_context(|| format!("etcd client URL {url}"))?;
        let proxy = Proxy::start(target, seed ^ (ETCD_LINK << 32))?;
        let proxied = format!("http://{}", proxy.addr());
        self.etcd_link = Some(proxy);
        Ok(proxied)
    }

    /// The member agent's links: to each replica (with its id), then to its etcd.
    fn member_links(&self) -> impl Iterator<Item = (Option<u64>, &Proxy)> {
        self.agent_links
            .iter()
            .map(|(id, proxy)| (Some(*id), proxy))
            .chain(self.etcd_link.iter().map(|proxy| (None, proxy)))
    }

    /// Every replica id, voters and spares.
    #[must_use]
    pub fn all_ids(&self) -> Vec<u64> {
        self.api_addrs.keys().copied().collect()
    }

    /// Cuts every link between `side` and the other replicas, both ways.
    pub fn partition(&self, side: &BTreeSet<u64>) {
        for ((from, to), proxy) in &self.links {
            if side.contains(from) != side.contains(to) {
                proxy.set_faults(Faults { blackhole: Blackhole::BOTH, ..proxy.faults() });
            }
        }
        for (to, proxy) in &self.agent_links {
            if side.contains(to) {
                proxy.set_faults(Faults { blackhole: Blackhole::BOTH, ..proxy.faults() });
            }
        }
    }

    /// `deaf` hears nobody: requests to it and answers to its own requests are dropped,
    /// while what it sends still arrives.
    pub fn deafen(&self, deaf: u64) {
        for ((from, to), proxy) in &self.links {
            let blackhole = if *to == deaf {
                Blackhole { c2s: true, s2c: false }
            } else if *from == deaf {
                Blackhole { c2s: false, s2c: true }
            } else {
                continue;
            };
            proxy.set_faults(Faults { blackhole, ..proxy.faults() });
        }
        if let Some(proxy) = self.agent_links.get(&deaf) {
            let blackhole = Blackhole { c2s: true, s2c: false };
            proxy.set_faults(Faults { blackhole, ..proxy.faults() });
        }
    }

    /// Stalls every link of `victim`, the member agent's link to it included.
    pub fn stall(&self, victim: u64) {
        let stalled = Faults { stall: true, ..Faults::default() };
        for ((from, to), proxy) in &self.links {
            if *from == victim || *to == victim {
                proxy.set_faults(stalled);
            }
        }
        if let Some(proxy) = self.agent_links.get(&victim) {
            proxy.set_faults(stalled);
        }
    }

    /// Applies `faults` to every link.
    pub fn all_links(&self, faults: Faults) {
        for proxy in self.links.values() {
            proxy.set_faults(faults);
        }
        for (_, proxy) in self.member_links() {
            proxy.set_faults(faults);
        }
    }

    /// Drops every open connection of the links touching `id` (or all, with `None`).
    pub fn drop_connections(&self, id: Option<u64>) {
        for ((from, to), proxy) in &self.links {
            if id.is_none_or(|id| id == *from || id == *to) {
                proxy.drop_connections();
            }
        }
        for (to, proxy) in self.member_links() {
            if id.is_none() || (to.is_some() && to == id) {
                proxy.drop_connections();
            }
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
        for (_, proxy) in self.member_links() {
            proxy.heal();
        }
    }
}

/// Seed tags of the member agent's proxies (the replicas' links use small ids).
const AGENT_LINK: u64 = 0xA6E7;
const ETCD_LINK: u64 = 0xE7CD;
