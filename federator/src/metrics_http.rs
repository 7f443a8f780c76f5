//! The plain-HTTP observability endpoint of replicas and agents:
//!
//! - `GET /metrics`: OpenMetrics when the scraper asks for it (`Accept:
//!   application/openmetrics-text`, as Prometheus does), else the Prometheus text format
//!   0.0.4 (what `curl` and `promtool check metrics` read); with `process_*` metrics;
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when ready, else 503 and why (readiness: a replica that serves
//!   its API with a known leader and little lag, an agent with a session to a replica);
//! - `GET /`: what is here.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Labels of `federator_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: String,
    replica: String,
}

/// Registers `federator_build_info{version, replica} 1`.
pub fn register_build_info(registry: &mut Registry, replica: u64) {
    let family = Family::<BuildInfo, Gauge>::default();
    family
        .get_or_create(&BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            replica: replica.to_string(),
        })
        .set(1);
    registry.register("federator_build_info", "Build of this federator replica", family);
}

/// Why a process is not ready, as `/readyz` says it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// Whether the process is ready, and if not why: asked on each `GET /readyz`.
pub type Readiness = Arc<dyn Fn() -> Result<(), NotReady> + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the endpoint on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut registry: Registry,
    ready: Readiness,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    registry.register_collector(Box::new(ProcessCollector));
    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/metrics", get(move |headers: HeaderMap| metrics(registry.clone(), headers)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
                        }
                    }
                }
            }),
        )
        .route(
            "/",
            get(|| async {
                "/metrics  Prometheus metrics (OpenMetrics on request)\n\
                 /healthz  liveness\n\
                 /readyz   readiness: 503 and why when not ready\n"
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn metrics(registry: Arc<Registry>, headers: HeaderMap) -> Response {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {error}"))
            .into_response();
    }
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        ([(CONTENT_TYPE, PROMETHEUS_TEXT)], to_prometheus_text(&body)).into_response()
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as `prometheus_client`
/// writes it: a counter's `HELP` and `TYPE` name its `_total` sample, `info` becomes a
/// gauge and `unknown` untyped, and the `UNIT` and `EOF` lines go.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let tail = match (*prefix, tail) {
                ("# TYPE ", "info") => "gauge",
                ("# TYPE ", "unknown") => "untyped",
                _ => tail,
            };
            Some(format!("{prefix}{name} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The `process_*` metrics of the Prometheus client libraries, read from `/proc/self` on
/// each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What [`ProcessCollector`] reports; `None` where `/proc` did not say.
#[derive(Debug, Default, PartialEq)]
struct ProcessFigures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl ProcessFigures {
    fn read() -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100);
        let page =
            nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        let mut figures = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse_stat(&stat, ticks, page, boot))
            .unwrap_or_default();
        figures.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX));
        figures.max_fds =
            std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l));
        figures
    }
}

/// `btime` of `/proc/stat`: boot time in unix seconds.
fn boot_time(proc_stat: &str) -> Option<i64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// CPU time, memory and start time from `/proc/self/stat` (`man 5 proc`): the fields after
/// the command name in parentheses, which may itself hold spaces and parentheses.
fn parse_stat(stat: &str, ticks: i64, page: i64, boot: Option<i64>) -> Option<ProcessFigures> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15,
    // starttime 22, vsize 23, rss 24.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    #[expect(clippy::cast_precision_loss, reason = "CPU ticks and seconds fit an f64")]
    let seconds = |t: i64| t as f64 / ticks as f64;
    Some(ProcessFigures {
        cpu_seconds: Some(seconds(field(14)? + field(15)?)),
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages.saturating_mul(page)),
        #[expect(clippy::cast_precision_loss, reason = "unix seconds fit an f64")]
        start_time_seconds: boot.zip(field(22)).map(|(b, s)| b as f64 + seconds(s)),
        ..ProcessFigures::default()
    })
}

/// The soft "Max open files" of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = ProcessFigures::read();
        if let Some(seconds) = figures.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                figures.resident_bytes,
            ),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", figures.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors", figures.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", figures.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        if let Some(start) = figures.start_time_seconds {
            let gauge = ConstGauge::new(start);
            let metric = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn the_text_format_names_counters_by_their_sample_and_drops_what_it_lacks() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("requests", "Requests served", counter);
        let gauge = Gauge::<i64>::default();
        registry.register("streams", "Open streams", gauge);
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry).expect("encodes");
        assert!(openmetrics.contains("# TYPE requests counter\n"), "{openmetrics}");
        let text = to_prometheus_text(&openmetrics);
        assert_eq!(
            text,
            "# HELP requests_total Requests served.\n# TYPE requests_total counter\n\
             requests_total 1\n# HELP streams Open streams.\n# TYPE streams gauge\nstreams 0\n"
        );
        let odd = "# TYPE build info\n# UNIT up_seconds seconds\n# TYPE x unknown\n# EOF\n";
        assert_eq!(to_prometheus_text(odd), "# TYPE build gauge\n# TYPE x untyped\n");
    }

    #[test]
    fn proc_stat_is_read_past_a_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 \
                    123456 10 18446744073709551615";
        let figures = parse_stat(stat, 100, 4096, Some(1_700_000_000)).expect("parses");
        assert_eq!(figures.cpu_seconds, Some(3.0));
        assert_eq!(figures.virtual_bytes, Some(123_456));
        assert_eq!(figures.resident_bytes, Some(40_960));
        assert_eq!(figures.start_time_seconds, Some(1_700_000_010.0));
        assert!(parse_stat("no parenthesis", 100, 4096, None).is_none());
        assert!(parse_stat("1 (x) S 1", 100, 4096, None).is_none(), "too few fields");
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_reports_its_figures() {
        let figures = ProcessFigures::read();
        assert!(figures.cpu_seconds.is_some_and(|s| s >= 0.0), "{figures:?}");
        assert!(figures.resident_bytes.is_some_and(|b| b > 0), "{figures:?}");
        assert!(figures.open_fds.is_some_and(|n| n > 0), "{figures:?}");
        assert!(figures.max_fds.is_some_and(|n| n > 0), "{figures:?}");
        assert!(figures.start_time_seconds.is_some_and(|t| t > 1e9), "{figures:?}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_proc_files_never_panics(text in "\\PC{0,200}") {
            let _ = parse_stat(&text, 100, 4096, Some(0));
            let _ = boot_time(&text);
            let _ = max_open_files(&text);
            let _ = to_prometheus_text(&text);
        }
    }
}
