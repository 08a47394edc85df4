//! The HTTP endpoints SREs and ECS use: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (sources connected, sinks writable). Read-only, with a bound on
//! requests served at once.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::health::Health;
use crate::metrics;

/// Requests served at once; more wait. Scrapes and probes are tiny, a few suffice.
const MAX_CONCURRENT_REQUESTS: usize = 32;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
}

/// Binds `addr` and serves until `shutdown` is cancelled. Returns the bound address (useful
/// with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics_handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .with_state(AppState {
            metrics: metrics_handle,
            health,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "http server failed");
        }
    });
    Ok(bound)
}

async fn render_metrics(State(state): State<AppState>) -> String {
    metrics::sample_process_memory();
    state.metrics.render()
}

async fn readiness(State(state): State<AppState>) -> (StatusCode, String) {
    let (ready, report) = state.health.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report)
}
