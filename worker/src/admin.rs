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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new("t"));
        let ready = Arc::new(AtomicBool::new(false));
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), ready.clone()).unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 503"), "not ready before state is restored");
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 200"));
        metrics.records_in.with_label_values(&["payments", "3"]).inc_by(7);
        let body = get(addr, "/metrics");
        assert!(body.contains(r#"weir_records_in_total{partition="3",source="payments",job="t"} 7"#), "{body}");
    }
}
