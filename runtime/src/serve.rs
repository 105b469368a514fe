//! The small HTTP server each daemon (`tekfed-hub`, `tekfed-agent`) runs
//! beside its work on `--metrics-addr`: Prometheus metrics on `/metrics`,
//! and the kubelet's probes on `/healthz` (liveness: the kubelet restarts
//! the container when it fails) and `/readyz` (readiness).
//!
//! What each path answers is the daemon's to decide ([`Endpoints`]); this
//! module only binds, logs the bound address (tests find a port-0 server
//! by it) and serves. A probe answers 200 with a short note, or 503 with
//! one line saying why, so `kubectl describe pod` shows the reason.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

/// A probe's answer: `Ok(note)` is 200, `Err(reason)` is 503.
pub type Check = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What a daemon answers on its metrics address.
#[derive(Clone)]
pub struct Endpoints {
    /// `/metrics`: the OpenMetrics text of the daemon's registry.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `/healthz`: an `Err` asks the kubelet to restart the container, so
    /// only a process that cannot recover on its own should fail it.
    pub live: Check,
    /// `/readyz`: whether the daemon does its job right now.
    pub ready: Check,
}

/// Serving failed; the daemon cannot go on without its probes.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // `error`, not `source`: the message carries it, so an `{:#}` chain
    // does not repeat it.
    #[error(
        "cannot listen on {addr} for metrics and probes: {error} (--metrics-addr; port 0 picks a free one)"
    )]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("serving metrics and probes: {0}")]
    Serve(std::io::Error),
}

/// Listen on `addr` and log the address bound (with port 0, the port
/// picked).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let bind_error = |error| ServeError::Bind { addr, error };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    tracing::info!(addr = %bound, "serving metrics on /metrics, probes on /healthz and /readyz");
    Ok(listener)
}

/// Serve `endpoints` on `listener` until the process stops.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) -> Result<(), ServeError> {
    axum::serve(listener, router(endpoints))
        .await
        .map_err(ServeError::Serve)
}

fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|State(e): State<Endpoints>| probe(e.live)))
        .route("/readyz", get(|State(e): State<Endpoints>| probe(e.ready)))
        .with_state(endpoints)
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (endpoints.metrics)(),
    )
        .into_response()
}

async fn probe(check: Check) -> Response {
    let (status, text) = match check() {
        Ok(note) => (StatusCode::OK, note),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    };
    // One line, whatever the reason carried (an API error may hold several).
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET path` over HTTP/1.0: the whole response.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.0\r\nHost: tekfed\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn probes_answer_200_or_503_with_one_line() {
        let endpoints = Endpoints {
            metrics: Arc::new(|| "tekfed_up 1\n# EOF\n".to_owned()),
            live: Arc::new(|| Ok("ok".to_owned())),
            ready: Arc::new(|| Err("the last heartbeat failed:\nconnection refused".to_owned())),
        };
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, endpoints));

        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.0 200"), "{live}");
        assert!(live.ends_with("\r\n\r\nok\n"), "{live}");
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
        assert!(
            ready.ends_with("\r\n\r\nthe last heartbeat failed: connection refused\n"),
            "{ready}"
        );
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.ends_with("tekfed_up 1\n# EOF\n"), "{metrics}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.0 404"));
    }

    #[tokio::test]
    async fn a_port_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(addr).await.unwrap_err().to_string();
        assert!(error.contains(&addr.to_string()), "{error}");
        assert!(error.contains("--metrics-addr"), "{error}");
    }
}
