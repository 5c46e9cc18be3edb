//! The operator's HTTP endpoint: `/healthz` (the process serves), `/readyz` (the controller's
//! cache has synced and its watch works) and `/metrics` (Prometheus text format).
//!
//! Readiness recovers by itself: a watch that fails is retried by the controller at least
//! every [`WATCH_SETTLE`] (its longest backoff plus a connect timeout) and each failed try is
//! reported, so a watch that has gone that long without a failure works again.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tracing::info;

use crate::metrics::Metrics;

/// How long the watch must go without failing before the operator is ready again: longer
/// than the longest gap between two failed tries of kube's watcher (its backoff tops out at
/// 30 s plus jitter, and a try can wait out the client's 30 s connect timeout).
pub const WATCH_SETTLE: Duration = Duration::from_secs(65);

/// What the endpoint reports on.
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            readiness: Readiness::default(),
        }
    }
}

/// The watch's state, as the controller reports it.
#[derive(Default)]
pub struct Readiness {
    state: Mutex<WatchState>,
}

#[derive(Clone, Copy, Default)]
struct WatchState {
    synced: bool,
    last_failure: Option<Instant>,
}

impl Readiness {
    /// The controller's cache has synced: the watch's first full list of JobRetry objects is
    /// in it (so the API server answers and RBAC is in place).
    pub fn synced(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).synced = true;
    }

    /// The watch failed (one try).
    pub fn watch_failed(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_failure = Some(Instant::now());
    }

    pub fn is_ready(&self) -> bool {
        let s = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        is_ready(s.synced, s.last_failure, Instant::now())
    }
}

/// Ready once the cache has synced, except within [`WATCH_SETTLE`] of the watch's last failure.
pub fn is_ready(synced: bool, last_failure: Option<Instant>, now: Instant) -> bool {
    synced && last_failure.is_none_or(|t| now.saturating_duration_since(t) >= WATCH_SETTLE)
}

/// Serves until the process ends; an error means the address could not be bound.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if h.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_synced_and_again_once_the_watch_settles() {
        let t0 = Instant::now();
        assert!(!is_ready(false, None, t0), "not synced yet");
        assert!(is_ready(true, None, t0));
        assert!(!is_ready(true, Some(t0), t0), "the watch just failed");
        assert!(!is_ready(
            true,
            Some(t0),
            t0 + WATCH_SETTLE - Duration::from_secs(1)
        ));
        assert!(
            is_ready(true, Some(t0), t0 + WATCH_SETTLE),
            "no failure since"
        );
        assert!(!is_ready(false, Some(t0), t0 + WATCH_SETTLE * 2));
    }
}
