//! The worker's admin HTTP server: `/metrics`, `/healthz` (the process is alive) and `/readyz`
//! (state restored and processing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Starts the server on its own thread; returns once it listens.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> anyhow::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "restoring state")
                }
            }),
        );
    std::thread::Builder::new().name("admin-http".into()).spawn(move || {
        if let Err(e) = rt.block_on(async { axum::serve(listener, app).await }) {
            tracing::error!("admin server stopped: {e}");
        }
    })?;
    Ok(bound)
}
