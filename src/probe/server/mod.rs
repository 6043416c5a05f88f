//! HTTP/1.1 serving with bounds, under the telemetry port and the demo's app port.
//!
//! An accept loop of our own around hyper's HTTP/1.1 connection (no HTTP/2: an h2c
//! preface is closed unanswered), with:
//! - a cap on the connections served at once ([`Limits::max_connections`]): a new
//!   connection beyond it closes the connection that has been idle longest (no
//!   request in progress) to take its place; when every connection has a request in
//!   progress, it gets `503` with a JSON body from one of a few refusal slots, and
//!   beyond those it is closed at once. Descriptors are bounded whatever arrives;
//! - a header-read timeout (hyper's clock: from the moment the server waits for a
//!   request head, after the accept or the previous answer, until the head is in);
//! - a keep-alive timeout: a connection with no request in progress that sent
//!   nothing for that long is closed;
//! - half-closed clients answered (`GET` then `shutdown(SHUT_WR)`, as Node and
//!   uvicorn do);
//! - JSON bodies on the errors that the HTTP layer itself answers: `414` over
//!   [`MAX_URI_BYTES`] (checked here) and hyper's own `400` / `431` (unparsable
//!   head, head over [`MAX_HEAD_BYTES`] or over 100 header lines), which hyper writes
//!   with an empty body: `Io` (a socket wrapper) recognises those heads and writes them with a body.
//!
//! The accept loop runs on the caller's runtime: a blocked loop stops accepting, as
//! a blocked uvicorn worker does on its shared socket.

mod io;
mod service;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use self::io::Io;
use self::service::Tracked;

/// The largest request head (request line and headers) read; a larger one gets `431`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The longest request target; a longer one gets `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// How long the accept loop pauses when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a newcomer waits for the idle connection it displaced to close.
const EVICTION_WAIT: Duration = Duration::from_millis(250);
/// A refused connection has this long to send its request head, and this long in all.
const REFUSAL_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The bounds of one listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// From waiting for a request head to having all of it.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress that sent nothing for this long is
    /// closed. The header-read timeout also runs while a connection waits for its
    /// next request, so the shorter of the two applies.
    pub keep_alive: Duration,
}

impl Limits {
    /// The demo app's port, per process: 4096 connections, 10 s header read, 5 s
    /// keep-alive (Node's `keepAliveTimeout` and uvicorn's `--timeout-keep-alive`).
    pub const APP: Limits = Limits {
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(5),
    };
    /// The telemetry port: 256 connections, the same timeouts.
    pub const TELEMETRY: Limits = Limits {
        max_connections: 256,
        ..Limits::APP
    };

    /// Connections beyond the cap that are answered `503` rather than just closed.
    pub fn refusal_slots(&self) -> usize {
        (self.max_connections / 16).clamp(8, 256)
    }

    /// The most descriptors that the connections of this socket hold at once.
    pub fn descriptors(&self) -> usize {
        self.max_connections + self.refusal_slots()
    }

    /// These limits with at most `descriptors` descriptors (never under 16 connections).
    pub fn within(self, descriptors: usize) -> Limits {
        if self.descriptors() <= descriptors {
            return self;
        }
        // The refusal slots are a 16th of the connections: about a 17th of the
        // whole, a connection less where the rounding would pass `descriptors`.
        let slots = (descriptors / 17).clamp(8, 256);
        let mut fit = Limits {
            max_connections: descriptors.saturating_sub(slots).max(16),
            ..self
        };
        if fit.descriptors() > descriptors && fit.max_connections > 16 {
            fit.max_connections -= 1;
        }
        fit
    }
}

/// Serves `service` on `listener` within `limits`; never returns.
pub async fn serve<S>(listener: TcpListener, service: S, limits: Limits)
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let shared = Arc::new(Shared {
        limits,
        registry: Mutex::new(Registry::default()),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        refusals: Arc::new(Semaphore::new(limits.refusal_slots())),
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            // Out of descriptors or memory: wait for some to be released.
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // As Node (since 18) and uvicorn do.
        let _ = stream.set_nodelay(true);
        if let Some(permit) = shared.admit().await {
            let conn = Arc::new(Conn::new());
            let id = shared.register(Arc::clone(&conn));
            let served = Served {
                shared: Arc::clone(&shared),
                id,
                _permit: permit,
            };
            tokio::spawn(connection(stream, service.clone(), conn, served));
        } else if let Ok(permit) = Arc::clone(&shared.refusals).try_acquire_owned() {
            tokio::spawn(refuse(stream, limits, permit));
        }
        // Else `stream` is dropped: closed at once.
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

/// What every connection of one listener shares.
struct Shared {
    limits: Limits,
    registry: Mutex<Registry>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

impl Shared {
    /// A slot for a new connection: a free one, or the one of the longest-idle
    /// connection, which is closed for it. `None` when every connection is busy.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(permit);
        }
        if !self.evict_longest_idle() {
            return None;
        }
        tokio::time::timeout(EVICTION_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn evict_longest_idle(&self) -> bool {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = registry
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .min_by_key(|(_, c)| c.last_active())
            .map(|(id, _)| *id);
        match victim.and_then(|id| registry.conns.remove(&id)) {
            Some(conn) => {
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn register(&self, conn: Arc<Conn>) -> u64 {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let id = registry.next;
        registry.next += 1;
        registry.conns.insert(id, conn);
        id
    }
}

/// Holds a connection's slot and registration until its task ends.
struct Served {
    shared: Arc<Shared>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Served {
    fn drop(&mut self) {
        let mut registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registry.conns.remove(&self.id);
    }
}

/// What the accept loop knows of one connection.
struct Conn {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to the last byte read or the last answer finished.
    active_ms: AtomicU64,
    evict: Notify,
}

impl Conn {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            active_ms: AtomicU64::new(0),
            evict: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.start + Duration::from_millis(self.active_ms.load(Ordering::Relaxed))
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
}

fn http1_builder(header_read_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .half_close(true)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

async fn connection<S>(stream: TcpStream, service: S, conn: Arc<Conn>, served: Served)
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let keep_alive = served.shared.limits.keep_alive;
    let io = TokioIo::new(Io::new(stream, Some(Arc::clone(&conn))));
    let service = Tracked {
        inner: service,
        conn: Arc::clone(&conn),
    };
    let http =
        http1_builder(served.shared.limits.header_read_timeout).serve_connection(io, service);
    tokio::pin!(http);
    let mut closing = false;
    loop {
        let deadline = if conn.is_idle() {
            conn.last_active() + keep_alive
        } else {
            Instant::now() + keep_alive
        };
        // The connection first: after a stall of the loop, what the client sent
        // meanwhile is read (and counts as activity) before any timeout is judged.
        tokio::select! {
            biased;
            _ = http.as_mut() => return,
            () = conn.evict.notified(), if !closing => {
                if conn.is_idle() {
                    return;
                }
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(deadline), if !closing => {
                if conn.is_idle() && conn.last_active() + keep_alive <= Instant::now() {
                    return;
                }
            }
        }
    }
}

/// Answers a connection beyond the cap with `503`, then closes it.
async fn refuse(stream: TcpStream, limits: Limits, _permit: OwnedSemaphorePermit) {
    let io = TokioIo::new(Io::new(stream, None));
    let max = limits.max_connections;
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "error": "too many connections: every one has a request in progress",
                "max_connections": max,
            }),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    });
    let mut builder = http1_builder(limits.header_read_timeout.min(REFUSAL_HEAD_TIMEOUT));
    builder.keep_alive(false);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, builder.serve_connection(io, service)).await;
}

fn error_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `405` with a JSON body, for a router's `method_not_allowed_fallback`.
pub async fn method_not_allowed(req: Request<Body>) -> axum::response::Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({
            "error": "method not allowed",
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "allowed": "GET, HEAD",
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_shrink_to_fit_the_descriptors() {
        let app = Limits::APP;
        assert_eq!(app.descriptors(), 4096 + 256);
        assert_eq!(app.within(100_000), app);
        let fit = app.within(1000);
        assert!(fit.descriptors() <= 1000, "{fit:?}");
        assert!(fit.max_connections >= 900, "{fit:?}");
        assert_eq!(app.within(0).max_connections, 16);
        // Every budget from the smallest that holds 16 connections: within it, and
        // not one connection more would be.
        for d in 24..=app.descriptors() {
            let fit = app.within(d);
            assert!(fit.descriptors() <= d, "{d}: {fit:?}");
            let more = Limits {
                max_connections: fit.max_connections + 1,
                ..fit
            };
            assert!(more.descriptors() > d || fit == app, "{d}: {fit:?}");
        }
    }
}
