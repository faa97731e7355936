//! The worker's admin HTTP server: `/metrics`, `/healthz` (the process is alive) and `/readyz`
//! (state restored and processing), open to anyone (Prometheus, probes); and the savepoint
//! calls, which with a token (`WEIR_ADMIN_TOKEN`, from a Secret the operator keeps per job) only
//! a caller that sends it may make: the operator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::checkpoint::Savepoints;
use crate::metrics::Metrics;

/// `POST /savepoints/{id}`: asks the worker for savepoint `id` (taken after its next commit);
/// `GET /savepoints/{id}`: its progress. Without checkpoint storage there are no savepoints.
fn savepoint_routes(savepoints: Savepoints, enabled: bool) -> Router {
    let post = savepoints.clone();
    Router::new().route(
        "/savepoints/{id}",
        get(move |Path(id): Path<String>| async move {
            let st = savepoints.lock().expect("savepoint status");
            match st.progress.get(&id) {
                Some(p) => (StatusCode::OK, Json(json!({"id": id, "state": p.state(), "progress": p}))),
                None if st.requested.as_deref() == Some(&id) => {
                    (StatusCode::OK, Json(json!({"id": id, "state": "requested"})))
                }
                None => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no savepoint {id} on this worker")}))),
            }
        })
        .post(move |Path(id): Path<String>| async move {
            if !enabled {
                let error = "savepoints need spec.checkpointing.storage";
                return (StatusCode::CONFLICT, Json(json!({"error": error})));
            }
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                let error = "a savepoint id holds only letters, digits, - and _";
                return (StatusCode::BAD_REQUEST, Json(json!({"error": error})));
            }
            let mut st = post.lock().expect("savepoint status");
            if st.progress.contains_key(&id) || st.requested.as_deref() == Some(&id) {
                return (StatusCode::CONFLICT, Json(json!({"error": format!("savepoint {id} was already requested")})));
            }
            if st.requested.is_some() {
                let error = "another savepoint is about to be taken; retry";
                return (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": error})));
            }
            st.requested = Some(id.clone());
            (StatusCode::ACCEPTED, Json(json!({"id": id, "state": "requested"})))
        }),
    )
}

/// Lets a request through when it carries `Authorization: Bearer <token>`; 401 otherwise.
async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => (StatusCode::UNAUTHORIZED, Json(json!({"error": "the bearer token is not this job's admin token"})))
            .into_response(),
        None => {
            let error = "savepoint calls need Authorization: Bearer <the job's admin token>";
            (StatusCode::UNAUTHORIZED, Json(json!({"error": error}))).into_response()
        }
    }
}

/// Byte strings compared in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts the server on its own thread; returns once it listens. With `token`, the savepoint
/// calls need it.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    savepoints: Savepoints,
    savepoints_enabled: bool,
    token: Option<String>,
) -> anyhow::Result<SocketAddr> {
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
        )
        .merge(match token {
            Some(t) => savepoint_routes(savepoints, savepoints_enabled)
                .route_layer(middleware::from_fn_with_state(Arc::new(t), require_token)),
            None => savepoint_routes(savepoints, savepoints_enabled),
        });
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

    fn post(addr: SocketAddr, path: &str) -> String {
        post_with(addr, path, "")
    }

    fn post_with(addr: SocketAddr, path: &str, headers: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST {path} HTTP/1.0\r\nHost: x\r\n{headers}Content-Length: 0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn savepoint_requests_are_checked_and_queued() {
        let sp = Savepoints::default();
        let off = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new("t")),
            Default::default(),
            sp.clone(),
            false,
            None,
        )
        .unwrap();
        assert!(post(off, "/savepoints/a").starts_with("HTTP/1.0 409"), "no storage, no savepoints");
        let on = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new("t")),
            Default::default(),
            sp.clone(),
            true,
            None,
        )
        .unwrap();
        assert!(post(on, "/savepoints/bad%20id").starts_with("HTTP/1.0 400"));
        assert!(post(on, "/savepoints/sp-1").starts_with("HTTP/1.0 202"));
        assert_eq!(sp.lock().unwrap().requested.as_deref(), Some("sp-1"));
        assert!(post(on, "/savepoints/sp-1").starts_with("HTTP/1.0 409"), "the same id twice");
        assert!(post(on, "/savepoints/sp-2").starts_with("HTTP/1.0 429"), "one at a time");
        assert!(get(on, "/savepoints/sp-1").contains(r#""state":"requested""#));
        assert!(get(on, "/savepoints/nope").starts_with("HTTP/1.0 404"));
    }

    #[test]
    fn with_a_token_only_its_holder_may_ask_for_savepoints() {
        let sp = Savepoints::default();
        let m = Arc::new(Metrics::new("t"));
        let addr =
            serve("127.0.0.1:0".parse().unwrap(), m, Default::default(), sp.clone(), true, Some("s3cret".into()))
                .unwrap();
        assert!(post(addr, "/savepoints/sp-1").starts_with("HTTP/1.0 401"), "no token");
        assert!(post_with(addr, "/savepoints/sp-1", "Authorization: Bearer s3crex\r\n").starts_with("HTTP/1.0 401"));
        assert!(get(addr, "/savepoints/sp-1").starts_with("HTTP/1.0 401"), "progress too");
        assert_eq!(sp.lock().unwrap().requested, None, "nothing was requested");
        assert!(post_with(addr, "/savepoints/sp-1", "Authorization: Bearer s3cret\r\n").starts_with("HTTP/1.0 202"));
        assert!(get(addr, "/metrics").starts_with("HTTP/1.0 200"), "metrics stay open");
        assert!(!same(b"a", b"ab") && same(b"ab", b"ab"));
    }

    #[test]
    fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new("t"));
        let ready = Arc::new(AtomicBool::new(false));
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            ready.clone(),
            Savepoints::default(),
            false,
            Some("s".into()),
        )
        .unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.0 200"), "open without the admin token");
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 503"), "not ready before state is restored");
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 200"));
        metrics.records_in.with_label_values(&["payments", "3"]).inc_by(7);
        let body = get(addr, "/metrics");
        assert!(body.contains(r#"weir_records_in_total{partition="3",source="payments",streamjob="t"} 7"#), "{body}");
    }
}
