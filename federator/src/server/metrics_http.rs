//! The Prometheus `/metrics` endpoint.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Serves `GET /metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(error) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics: {error}"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}
