//! The service of one connection, around the caller's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use super::{Conn, MAX_URI_BYTES, error_response};

/// The service of one connection: counts its requests in progress (until their
/// body is sent) and answers `414` for targets over [`MAX_URI_BYTES`].
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<Conn>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(Arc::clone(&self.conn));
        let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let response = if target > MAX_URI_BYTES {
                error_response(
                    StatusCode::URI_TOO_LONG,
                    serde_json::json!({
                        "error": "URI too long",
                        "max_uri_bytes": MAX_URI_BYTES,
                        "got_bytes": target,
                    }),
                )
                .map(Body::new)
            } else {
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                inner.call(req.map(Body::new)).await?
            };
            Ok(response.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A request in progress on a connection.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.touch();
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in progress until it is sent or dropped.
pub struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
