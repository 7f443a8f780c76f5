//! `federator check --disk`: how long a durable log append takes in a data directory.

use std::path::Path;
use std::time::Duration;

use super::Checks;

/// Durable appends the disk check times: a second or two even on a disk at the limit.
const DISK_PROBE_APPENDS: usize = 200;
/// Bytes per appended entry: a small batch of writes, as most log entries are.
const DISK_PROBE_ENTRY_BYTES: usize = 512;
/// A p99 above this warns: etcd's guidance for its WAL fsync.
const DISK_WARN_P99: Duration = Duration::from_millis(10);
/// A p99 above this fails: appends this slow hold up heartbeats past election timeouts.
const DISK_FAIL_P99: Duration = Duration::from_millis(100);

/// Times durable log appends in `dir` as one replica makes them (one writer, its own log).
pub(super) async fn check_disk(dir: &Path, checks: &mut Checks) {
    let owned = dir.to_path_buf();
    let probe = tokio::task::spawn_blocking(move || {
        federator_raft::disk_check::measure_durable_appends(
            &owned,
            1,
            DISK_PROBE_APPENDS,
            DISK_PROBE_ENTRY_BYTES,
        )
    })
    .await;
    match probe {
        Ok(Ok(probe)) => disk_checks(dir, &probe, checks),
        Ok(Err(error)) => checks.fail(
            "disk",
            format!("disk {}: cannot time durable log appends: {error}", dir.display()),
            "the directory must exist and be writable by the user the replica runs as",
        ),
        Err(error) => checks.fail(
            "disk",
            format!("disk {}: the durable log append probe stopped: {error}", dir.display()),
            "run the check again; if it persists, report it with the output",
        ),
    }
}

/// The check of one disk probe's figures.
fn disk_checks(dir: &Path, probe: &federator_raft::disk_check::DiskProbe, checks: &mut Checks) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let detail = format!(
        "disk {}: durable log append p50 {:.2} ms, p99 {:.2} ms ({} appends, {} writer{})",
        dir.display(),
        ms(probe.p50),
        ms(probe.p99),
        probe.appends,
        probe.writers,
        if probe.writers == 1 { "" } else { "s at once" }
    );
    let hint = "etcd's guidance for its WAL fsync is a p99 under 10 ms; raft heartbeats and \
                elections will suffer: move the data directory to a faster disk (SSD/NVMe), \
                off shared or network storage";
    if probe.p99 > DISK_FAIL_P99 {
        checks.fail("disk", detail, hint);
    } else if probe.p99 > DISK_WARN_P99 {
        checks.warn("disk", detail, hint);
    } else {
        checks.pass("disk", detail);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    #[test]
    fn a_disk_is_judged_on_its_p99() {
        let probe = |p99_ms: u64| federator_raft::disk_check::DiskProbe {
            writers: 1,
            appends: 200,
            p50: Duration::from_micros(220),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms),
        };
        let mut checks = Checks::default();
        for p99_ms in [1, 11, 101] {
            disk_checks(Path::new("/var/lib/federator"), &probe(p99_ms), &mut checks);
        }
        let outcomes: Vec<Outcome> = checks.0.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Warn, Outcome::Fail]);
        assert_eq!(
            checks.0[0].detail,
            "disk /var/lib/federator: durable log append p50 0.22 ms, p99 1.00 ms \
             (200 appends, 1 writer)"
        );
        assert!(checks.0[1].hint.as_deref().is_some_and(|h| h.contains("SSD")), "{:?}", checks.0);
    }

    #[test]
    fn a_missing_disk_directory_fails_naming_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut checks = Checks::default();
        let missing = Path::new("/nonexistent/federator-disk-check");
        runtime.block_on(check_disk(missing, &mut checks));
        assert_eq!(checks.0.len(), 1);
        assert_eq!(checks.0[0].outcome, Outcome::Fail);
        assert!(checks.0[0].detail.contains("/nonexistent/federator-disk-check"), "{:?}", checks.0);
    }
}
