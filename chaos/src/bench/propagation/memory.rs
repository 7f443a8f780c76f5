//! Memory figures: resident set sizes read from `/proc`, per stored endpoint and per
//! idle watch stream, and the CPU the members burn while idle.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::watch::Process;
use crate::bench::progress::Progress;

/// Most endpoints in one export (Federator's per-export limit).
pub const ENDPOINTS_PER_EXPORT: usize = 10_000;

/// Resident memory of a process, in bytes, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: every resident page.
    pub total: u64,
    /// `RssAnon`: the heap, stacks and other anonymous pages.
    pub anon: u64,
    /// `RssFile`: resident pages of mapped files (etcd's bbolt database is mmapped).
    pub file: u64,
}

impl Rss {
    /// Reads `/proc/PID/status`.
    ///
    /// # Errors
    /// The process is gone, or the file lacks `VmRSS`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_status(&text).with_context(|| format!("{path} has no VmRSS"))
    }
}

/// The resident set sizes in a `/proc/PID/status` text (`VmRSS`, `RssAnon`, `RssFile`,
/// each in kB).
#[must_use]
pub fn parse_status(text: &str) -> Option<Rss> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some(Rss {
        total: field("VmRSS")?,
        anon: field("RssAnon").unwrap_or(0),
        file: field("RssFile").unwrap_or(0),
    })
}

/// CPU time (user + system, in clock ticks) in a `/proc/PID/stat` text.
#[must_use]
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // the fields after the last ')' start with field 3, the state.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of), asked
/// once.
pub fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&text).with_context(|| format!("{path} has no CPU times"))
}

/// CPU used by `processes` together over `window`, in cores (1.0 = one core busy).
///
/// # Errors
/// A process is gone.
pub async fn cpu_use(processes: &[Process], window: Duration) -> anyhow::Result<f64> {
    let meter = CpuMeter::start(processes)?;
    tokio::time::sleep(window).await;
    meter.cores()
}

/// Measures the CPU that a set of processes uses from its start.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    processes: Vec<Process>,
    ticks: u64,
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring.
    ///
    /// # Errors
    /// A process is gone.
    pub fn start(processes: &[Process]) -> anyhow::Result<Self> {
        Ok(Self {
            processes: processes.to_vec(),
            ticks: Self::total(processes)?,
            started: Instant::now(),
        })
    }

    fn total(processes: &[Process]) -> anyhow::Result<u64> {
        processes.iter().map(|p| cpu_ticks(p.pid)).sum()
    }

    /// CPU used since the start, in cores (1.0 = one core busy all along).
    ///
    /// # Errors
    /// A process is gone.
    pub fn cores(&self) -> anyhow::Result<f64> {
        let seconds = self.started.elapsed().as_secs_f64();
        Ok(self.cpu_seconds()? / seconds.max(1e-3))
    }

    /// CPU time used since the start, in seconds (all processes together).
    ///
    /// # Errors
    /// A process is gone.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let ticks = Self::total(&self.processes)?.saturating_sub(self.ticks);
        Ok(ticks as f64 / ticks_per_second())
    }
}

/// Resident memory before and after a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssChange {
    /// Before the step.
    pub before: Rss,
    /// After it.
    pub after: Rss,
}

impl RssChange {
    /// Bytes of resident memory the step added per item (negative when it shrank).
    #[must_use]
    pub fn per_item(&self, items: usize) -> Option<f64> {
        per_item(self.before.total, self.after.total, items)
    }

    /// The growth of (total, anonymous, file-backed) resident memory, in bytes.
    #[must_use]
    pub fn growth(&self) -> (i64, i64, i64) {
        let diff = |a: u64, b: u64| {
            i64::try_from(b).unwrap_or(i64::MAX) - i64::try_from(a).unwrap_or(i64::MAX)
        };
        (
            diff(self.before.total, self.after.total),
            diff(self.before.anon, self.after.anon),
            diff(self.before.file, self.after.file),
        )
    }
}

/// (`after` − `before`) / `items` in bytes per item; `None` for no items.
#[must_use]
pub fn per_item(before: u64, after: u64, items: usize) -> Option<f64> {
    (items > 0).then(|| (after as f64 - before as f64) / items as f64)
}

/// A loopback address for endpoint number `n` (0-based): 127.0.0.1, 127.0.0.2, … up to
/// 127.255.255.254, so that 16.7 million endpoints have distinct addresses.
#[must_use]
pub fn endpoint_address(n: usize) -> String {
    let v = (n % 0x00ff_fffe) + 1;
    format!("127.{}.{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
}

/// Sizes of the exports that load `total` endpoints from `loaded`: full exports of
/// [`ENDPOINTS_PER_EXPORT`], then the remainder.
#[must_use]
pub fn export_sizes(loaded: usize, total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut at = loaded;
    while at < total {
        let size = (total - at).min(ENDPOINTS_PER_EXPORT);
        sizes.push(size);
        at += size;
    }
    sizes
}

/// Idle watch streams: resident memory and idle CPU of every member before and after
/// opening them.
#[derive(Clone, Debug, Default)]
pub struct StreamMemory {
    /// Streams opened in the measured step (beyond one warm-up stream per connection).
    pub streams: usize,
    /// Resident memory of each member (the leader first).
    pub members: Vec<RssChange>,
    /// CPU of all members together while idle before the streams were opened, in cores.
    pub idle_cpu_before: f64,
    /// The same with the streams open.
    pub idle_cpu_after: f64,
    /// Time to open every stream and receive every initial state.
    pub open_time: Duration,
}

impl StreamMemory {
    /// Growth of the members' resident memory together, per stream.
    #[must_use]
    pub fn per_stream(&self) -> Option<f64> {
        let before = self.members.iter().map(|m| m.before.total).sum();
        let after = self.members.iter().map(|m| m.after.total).sum();
        per_item(before, after, self.streams)
    }

    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{} idle watch streams: {:.0} B of RSS per stream (all members); idle CPU {:.1} % \
             of a core before, {:.1} % with them open; opened in {:.1} s",
            self.streams,
            self.per_stream().unwrap_or(f64::NAN),
            self.idle_cpu_before * 100.0,
            self.idle_cpu_after * 100.0,
            self.open_time.as_secs_f64()
        )
    }
}

/// A store that endpoints can be loaded into, export by export.
pub trait EndpointStore {
    /// Display name.
    fn name(&self) -> &'static str;

    /// The leader and one follower, as processes.
    fn leader_and_follower(&self) -> (Process, Process);

    /// Stores export number `index` with `count` endpoints numbered from `first`.
    fn store_export(
        &mut self,
        index: usize,
        first: usize,
        count: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Waits until every member has applied the first `exports` exports (`endpoints`
    /// endpoints in all).
    fn wait_applied(
        &self,
        endpoints: usize,
        exports: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Snapshots the state and purges the log it covers on every member, when the
    /// store can be told to; returns whether it did.
    fn compact(&self) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// Resident memory of the leader and a follower at one endpoint count.
#[derive(Clone, Debug, Default)]
pub struct EndpointMemory {
    /// Endpoints stored.
    pub endpoints: usize,
    /// Exports (or documents) they were stored in.
    pub exports: usize,
    /// Time from the first export to the last acknowledgement.
    pub load_time: Duration,
    /// The leader, from before the first endpoint.
    pub leader: RssChange,
    /// The follower, from before the first endpoint.
    pub follower: RssChange,
}

impl EndpointMemory {
    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{} endpoints in {} exports: leader {:.0} B/endpoint, follower {:.0} B/endpoint; \
             loaded in {:.1} s",
            self.endpoints,
            self.exports,
            self.leader.per_item(self.endpoints).unwrap_or(f64::NAN),
            self.follower.per_item(self.endpoints).unwrap_or(f64::NAN),
            self.load_time.as_secs_f64()
        )
    }
}

/// Endpoint figures of one system.
#[derive(Clone, Debug, Default)]
pub struct EndpointFigures {
    /// One entry per endpoint count, ascending.
    pub steps: Vec<EndpointMemory>,
    /// After the largest count, a snapshot with the log purged: (leader, follower)
    /// from the same baseline. `None` when the store cannot be told to.
    pub compacted: Option<(RssChange, RssChange)>,
}

/// Loads endpoints into `store` up to each count of `counts` (ascending, cumulative:
/// every figure is measured from the same empty baseline) and reads the leader's and a
/// follower's resident memory at each; then compacts and reads them again.
///
/// # Errors
/// A write failed, a member did not catch up, or a process is gone.
pub async fn endpoint_memory<S: EndpointStore>(
    store: &mut S,
    counts: &[usize],
    settle: Duration,
    progress: &Progress,
) -> anyhow::Result<EndpointFigures> {
    let (leader, follower) = store.leader_and_follower();
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    tokio::time::sleep(settle).await;
    let baseline = (Rss::of(leader.pid)?, Rss::of(follower.pid)?);
    let mut figures = EndpointFigures::default();
    let (mut loaded, mut exports) = (0, 0);
    let started = Instant::now();
    let name = store.name();
    let bar =
        progress.count_bar(format!("{name} endpoints"), counts.last().copied().unwrap_or(0) as u64);
    for count in counts {
        for size in export_sizes(loaded, count) {
            store
                .store_export(exports, loaded, size)
                .await
                .with_context(|| format!("storing export {exports} ({size} endpoints)"))?;
            loaded += size;
            exports += 1;
            bar.inc(size as u64);
        }
        let load_time = started.elapsed();
        bar.set_message("waiting for every member");
        store.wait_applied(loaded, exports).await?;
        tokio::time::sleep(settle).await;
        bar.set_message("");
        let step = EndpointMemory {
            endpoints: loaded,
            exports,
            load_time,
            leader: RssChange { before: baseline.0, after: Rss::of(leader.pid)? },
            follower: RssChange { before: baseline.1, after: Rss::of(follower.pid)? },
        };
        progress.println(format!("{name:>9} {}", step.summary()));
        figures.steps.push(step);
    }
    bar.finish_and_clear();
    if store.compact().await? {
        tokio::time::sleep(settle).await;
        figures.compacted = Some((
            RssChange { before: baseline.0, after: Rss::of(leader.pid)? },
            RssChange { before: baseline.1, after: Rss::of(follower.pid)? },
        ));
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_the_resident_sizes_in_bytes() {
        let text = "Name:\tfederator\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    10000 kB\n\
                    RssFile:\t     2345 kB\nRssShmem:\t        0 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Rss { total: 12_345 * 1024, anon: 10_000 * 1024, file: 2_345 * 1024 })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 \
                    123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn growth_is_divided_by_the_items() {
        assert_eq!(per_item(1_000, 31_000, 100), Some(300.0));
        assert_eq!(per_item(2_000, 1_000, 10), Some(-100.0));
        assert_eq!(per_item(0, 1, 0), None);
        let change = RssChange {
            before: Rss { total: 100 << 20, anon: 90 << 20, file: 10 << 20 },
            after: Rss { total: 400 << 20, anon: 380 << 20, file: 20 << 20 },
        };
        assert_eq!(change.per_item(1_000_000), Some((300u64 << 20) as f64 / 1e6));
        assert_eq!(change.growth(), (300 << 20, 290 << 20, 10 << 20));
    }

    #[test]
    fn endpoint_addresses_are_distinct_loopback_addresses() {
        assert_eq!(endpoint_address(0), "127.0.0.1");
        assert_eq!(endpoint_address(254), "127.0.0.255");
        assert_eq!(endpoint_address(255), "127.0.1.0");
        assert_eq!(endpoint_address(999_999), "127.15.66.64");
        let many: std::collections::BTreeSet<String> = (0..100_000).map(endpoint_address).collect();
        assert_eq!(many.len(), 100_000);
    }

    #[test]
    fn exports_hold_at_most_ten_thousand_endpoints() {
        assert_eq!(export_sizes(0, 25_000), vec![10_000, 10_000, 5_000]);
        assert_eq!(export_sizes(25_000, 40_000), vec![10_000, 5_000]);
        assert_eq!(export_sizes(10_000, 10_000), Vec::<usize>::new());
    }
}
