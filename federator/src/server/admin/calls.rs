//! What the server log shows of admin calls: every call runs in an `rpc` span (its
//! method, the transport it came on, and the verified caller once authorized), and ends
//! with one `admin call` line: its gRPC status and how long it took. Changes (tokens,
//! policy, members, snapshots) are logged at `info`, reads at `debug` (probes and
//! dashboards poll `Status` every few seconds).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tonic::server::NamedService;

/// The span a server builder opens for each call (`Server::builder().trace_fn(…)`):
/// `method` is the gRPC path (`/federator.admin.v1.Admin/CreateToken`), `transport`
/// `api` (mTLS) or `socket` (the admin socket). Handlers record `caller` once the caller
/// is verified, and `cluster`/`trust_domain` when the call is about one.
pub fn rpc_span(transport: &'static str) -> impl Fn(&http::Request<()>) -> tracing::Span + Clone {
    move |request| {
        tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            transport,
            caller = tracing::field::Empty,
            cluster = tracing::field::Empty,
            trust_domain = tracing::field::Empty,
        )
    }
}

/// Records who called in the current call's span.
pub fn record_caller(caller: &str) {
    tracing::Span::current().record("caller", caller);
}

/// Records which member cluster (and trust domain) the current call is about.
pub fn record_target(cluster: &str, trust_domain: Option<&str>) {
    let span = tracing::Span::current();
    if !cluster.is_empty() {
        span.record("cluster", cluster);
    }
    if let Some(trust_domain) = trust_domain.filter(|t| !t.is_empty()) {
        span.record("trust_domain", trust_domain);
    }
}

/// Whether the admin method (the last segment of its path) only reads.
fn reads(method: &str) -> bool {
    ["Get", "List", "Status", "Digest", "BundleStatus", "SaveSnapshot"]
        .iter()
        .any(|prefix| method.starts_with(prefix))
}

/// The admin service wrapped so that each call ends with its `admin call` log line.
#[derive(Clone, Debug)]
pub struct LoggedCalls<S> {
    inner: S,
}

impl<S> LoggedCalls<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for LoggedCalls<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for LoggedCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = call.await;
            // A unary call that fails answers with its status in the headers (gRPC's
            // trailers-only response); a success carries 0 in the trailers.
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            let code = tonic::Code::from_i32(status);
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if reads(&method) {
                tracing::debug!(method, ?code, elapsed_ms, "admin call");
            } else {
                tracing::info!(method, ?code, elapsed_ms, "admin call");
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_changes_are_told_apart() {
        for method in ["Status", "GetCluster", "ListTokens", "Digest", "BundleStatus"] {
            assert!(reads(method), "{method}");
        }
        for method in ["CreateToken", "RevokeToken", "RemoveCluster", "AddMember", "Put"] {
            assert!(!reads(method), "{method}");
        }
    }
}
