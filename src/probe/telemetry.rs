//! The telemetry server: `/telemetry` (NDJSON, one snapshot a line), `/metrics`
//! (Prometheus text) and `/info`, on a thread and runtime of its own so that it keeps
//! answering while every measured loop is blocked.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast;

use super::server::Limits;
use crate::protocol::{ServerInfo, Snapshot};

/// Lines buffered for a slow reader before it skips ahead.
const LINES_BUFFERED: usize = 64;

/// Where snapshots are published and read from. Shared by the aggregator and the server.
pub struct TelemetryHub {
    epoch: Instant,
    lines: broadcast::Sender<(u64, Bytes)>,
    /// The newest snapshot, and its line once made (only when someone reads).
    latest: Mutex<Option<(Arc<Snapshot>, Option<Bytes>)>>,
    info: Mutex<ServerInfo>,
    skipped_lines: AtomicU64,
}

impl TelemetryHub {
    /// A hub serving `info`; `epoch` is the server's start, `t_ms` counts from it.
    pub fn new(info: ServerInfo, epoch: Instant) -> Self {
        Self {
            epoch,
            lines: broadcast::channel(LINES_BUFFERED).0,
            latest: Mutex::new(None),
            info: Mutex::new(info),
            skipped_lines: AtomicU64::new(0),
        }
    }

    /// The server's start.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Sends a snapshot to every reader and keeps it for `/metrics` and new readers.
    /// With no reader, the line is not made (a new reader makes it).
    pub fn publish(&self, snapshot: Snapshot) {
        let seq = snapshot.seq;
        let line = (self.lines.receiver_count() > 0).then(|| line_of(&snapshot));
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Arc::new(snapshot), line.clone()));
        if let Some(line) = line {
            // A reader that has just gone is fine.
            let _ = self.lines.send((seq, line));
        }
    }

    /// Whether a `/telemetry` reader is connected now.
    pub fn has_readers(&self) -> bool {
        self.lines.receiver_count() > 0
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.as_ref().map(|(s, _)| Arc::clone(s))
    }

    /// The server description served at `/info`.
    pub fn info(&self) -> ServerInfo {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the server description (a worker got a new pid).
    pub fn update_info(&self, f: impl FnOnce(&mut ServerInfo)) {
        f(&mut self.info.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Lines that slow readers skipped.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped_lines.load(Ordering::Relaxed)
    }
}

/// A snapshot's NDJSON line.
fn line_of(snapshot: &Snapshot) -> Bytes {
    let mut line = serde_json::to_vec(snapshot).expect("snapshots serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// Serves the hub on `listener` from a new thread with its own runtime, within
/// `limits` (its own, apart from the app's: a flooded app port leaves it answering).
pub fn serve(
    listener: std::net::TcpListener,
    hub: Arc<TelemetryHub>,
    limits: Limits,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("loopscope-telemetry".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("loopscope: telemetry runtime failed: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("loopscope: telemetry listener failed: {e}");
                        return;
                    }
                };
                super::server::serve(listener, router(hub), limits).await;
            });
        })
}

/// The telemetry routes, for embedding in another server.
pub fn router(hub: Arc<TelemetryHub>) -> Router {
    Router::new()
        .route("/telemetry", get(stream))
        .route("/metrics", get(metrics))
        .route("/info", get(info))
        .fallback(not_found)
        .method_not_allowed_fallback(super::server::method_not_allowed)
        .with_state(hub)
}

async fn stream(State(hub): State<Arc<TelemetryHub>>) -> Response {
    // Subscribe before reading the latest line so that nothing falls in between;
    // lines at or before the latest one are skipped.
    let rx = hub.lines.subscribe();
    let latest = hub
        .latest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|(s, line)| (s.seq, line.clone().unwrap_or_else(|| line_of(s))));
    let after = latest.as_ref().map_or(0, |(seq, _)| *seq);
    let first = latest.map(|(_, line)| line);
    let state = (first, rx, hub);
    let body = futures_util::stream::unfold(state, move |(first, mut rx, hub)| async move {
        if let Some(line) = first {
            return Some((Ok::<_, Infallible>(line), (None, rx, hub)));
        }
        loop {
            match rx.recv().await {
                Ok((seq, _)) if seq <= after => continue,
                Ok((_, line)) => return Some((Ok(line), (None, rx, hub))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    hub.skipped_lines.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn metrics(State(hub): State<Arc<TelemetryHub>>) -> Response {
    let text = match hub.latest() {
        Some(s) => super::metrics::render(&s, hub.skipped_lines()),
        None => String::new(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn info(State(hub): State<Arc<TelemetryHub>>) -> Response {
    axum::Json(hub.info()).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": "not found",
            "endpoints": ["/telemetry", "/metrics", "/info"],
        })),
    )
        .into_response()
}
