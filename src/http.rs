//! The HTTP endpoints SREs and ECS use: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (sources connected, sinks writable). Read-only, with a bound on
//! requests served at once; beside them, the studios' walls when this process serves them
//! ([`crate::screens`], bounded by their own limit on streams).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

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
use crate::screens::listener::{StallingListener, STALL_LIMIT};

/// Requests served at once; more wait. Scrapes and probes are tiny, a few suffice.
const MAX_CONCURRENT_REQUESTS: usize = 32;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
}

/// Binds `addr` and serves until `shutdown` is cancelled, with `walls` (the screens' routes)
/// if given. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics_handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
    walls: Option<Router>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = StallingListener::new(listener, STALL_LIMIT);
    let mut app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .with_state(AppState {
            metrics: metrics_handle,
            health,
        });
    if let Some(walls) = walls {
        app = app.merge(walls);
    }
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
    metrics::sample_process();
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

/// Asks a running classpulse at `addr` whether it is alive (`/healthz` answers 200), for the
/// container's health check: a distroless image has no curl. An unspecified address
/// (`0.0.0.0`, `::`) is asked on loopback.
pub fn probe_health(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| format!("{target}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut response)
        .map_err(|e| format!("{target}: {e}"))?;
    let status_line = String::from_utf8_lossy(&response);
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{target}/healthz answered {status:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_passes_against_a_live_server_and_fails_against_none() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let shutdown = CancellationToken::new();
        let bound = serve(
            "127.0.0.1:0".parse().unwrap(),
            recorder.handle(),
            Health::new(),
            shutdown.clone(),
            None,
        )
        .await
        .unwrap();
        let unspecified: SocketAddr = format!("0.0.0.0:{}", bound.port()).parse().unwrap();
        let probed =
            tokio::task::spawn_blocking(move || probe_health(unspecified, Duration::from_secs(2)))
                .await
                .unwrap();
        assert_eq!(probed, Ok(()));
        shutdown.cancel();
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused =
            tokio::task::spawn_blocking(move || probe_health(free, Duration::from_secs(2)))
                .await
                .unwrap();
        assert!(refused.is_err(), "{refused:?}");
    }
}
