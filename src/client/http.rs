//! A small HTTP/1.1 client over hyper: one-shot GETs and the NDJSON telemetry stream.

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::lines::{LineSplitter, Piece};
use crate::protocol::Snapshot;

/// A pooled HTTP/1.1 client for plain `http://` addresses.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address and path do not make a URI.
    #[error("bad address {0:?}: {1}")]
    Uri(String, String),
    /// Connecting or sending failed.
    #[error("request to {0} failed: {1}")]
    Request(String, hyper_util::client::legacy::Error),
    /// Reading the body failed.
    #[error("reading the response failed: {0}")]
    Body(#[from] hyper::Error),
    /// The telemetry endpoint answered with an error status.
    #[error("{0} answered {1}")]
    Status(String, u16),
    /// A telemetry line is not a snapshot.
    #[error("bad telemetry line ({source}): {line}")]
    Decode {
        /// The offending line, cut to 200 characters.
        line: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A telemetry line longer than [`MAX_LINE`] was dropped.
    #[error("a telemetry line of {0} bytes was dropped (the limit is {MAX_LINE})")]
    TooLong(usize),
    /// A body longer than the limit for its kind.
    #[error("{0} answered more than {1} bytes")]
    TooBig(String, usize),
}

impl ClientError {
    /// True for a bad line that was skipped: the stream itself goes on.
    pub fn is_skipped_line(&self) -> bool {
        matches!(self, ClientError::Decode { .. } | ClientError::TooLong(_))
    }
}

/// The longest telemetry line read (a snapshot of 64 workers is about 60 KB).
pub const MAX_LINE: usize = 1 << 20;

/// A complete response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A client that keeps connections alive between requests.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that opens a new connection for every request (as a stream of new
/// visitors does); keep-alive connections stay with the worker that accepted them.
pub fn client_without_keepalive() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

fn uri(addr: &str, path: &str) -> Result<hyper::Uri, ClientError> {
    let s = format!("http://{addr}{path}");
    s.parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Uri(s, e.to_string()))
}

/// `GET http://{addr}{path}` and read the whole body.
pub async fn get(client: &HttpClient, addr: &str, path: &str) -> Result<HttpResponse, ClientError> {
    get_limited(client, addr, path, usize::MAX).await
}

/// `GET http://{addr}{path}`, reading at most `max` bytes of body.
pub async fn get_limited(
    client: &HttpClient,
    addr: &str,
    path: &str,
    max: usize,
) -> Result<HttpResponse, ClientError> {
    let uri = uri(addr, path)?;
    let resp = client
        .get(uri.clone())
        .await
        .map_err(|e| ClientError::Request(uri.to_string(), e))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => ClientError::Body(*e),
            Err(_) => ClientError::TooBig(uri.to_string(), max),
        })?
        .to_bytes();
    Ok(HttpResponse { status, body })
}

/// One telemetry line as a snapshot (not yet bounded: see
/// [`crate::protocol::Snapshot::bound`]).
pub fn decode_line(line: &[u8]) -> Result<Snapshot, ClientError> {
    serde_json::from_slice(line).map_err(|source| ClientError::Decode {
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
        source,
    })
}

/// The `/telemetry` stream of a server, one snapshot at a time.
pub struct TelemetryStream {
    body: Incoming,
    lines: LineSplitter,
}

impl TelemetryStream {
    /// Connects to `http://{addr}/telemetry`.
    pub async fn connect(client: &HttpClient, addr: &str) -> Result<Self, ClientError> {
        let uri = uri(addr, "/telemetry")?;
        let resp = client
            .get(uri.clone())
            .await
            .map_err(|e| ClientError::Request(uri.to_string(), e))?;
        if !resp.status().is_success() {
            return Err(ClientError::Status(uri.to_string(), resp.status().as_u16()));
        }
        Ok(Self {
            body: resp.into_body(),
            lines: LineSplitter::new(MAX_LINE),
        })
    }

    /// The next snapshot; `None` when the server ended the stream. A line that is
    /// not a snapshot, or too long, is an error for which
    /// [`ClientError::is_skipped_line`] holds: the stream can be read on.
    pub async fn next(&mut self) -> Result<Option<Snapshot>, ClientError> {
        loop {
            match self.lines.next_piece() {
                Some(Piece::TooLong(n)) => return Err(ClientError::TooLong(n)),
                Some(Piece::Line(line)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return decode_line(&line).map(Some);
                }
                None => {}
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(mut data) = frame?.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.lines.push(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                None => return Ok(None),
            }
        }
    }
}

/// One HTTP/1.1 connection, kept alive between requests.
pub type Connection = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Opens a keep-alive connection to `addr` (host:port); the connection's I/O runs
/// on a task of its own and ends when the returned handle is dropped.
pub async fn connect(addr: &str) -> std::io::Result<Connection> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// Which worker serves `conn`: the `worker` its `GET /hello` answer names (a
/// keep-alive connection stays with the worker that accepted it). `None` when the
/// answer names none.
pub async fn served_by(conn: &mut Connection, addr: &str) -> Result<Option<u64>, ClientError> {
    let resp = get_on(conn, addr, "/hello").await?;
    Ok(resp.json().and_then(|v| v["worker"].as_u64()))
}

/// Opens connections to `addr` until `n` of them are served by worker `worker`
/// (which worker accepts a connection is the kernel's choice, as with uvicorn's
/// shared socket), trying at most `max_attempts` connections. Each is checked with
/// `GET /hello`, whose answer names its worker. Connections to other workers are
/// closed.
pub async fn connections_to_worker(
    addr: &str,
    worker: u64,
    n: usize,
    max_attempts: usize,
) -> std::io::Result<Vec<Connection>> {
    let mut kept = Vec::with_capacity(n);
    for _ in 0..max_attempts {
        if kept.len() == n {
            break;
        }
        let mut send = connect(addr).await?;
        let served = served_by(&mut send, addr)
            .await
            .map_err(std::io::Error::other)?;
        if served == Some(worker) {
            kept.push(send);
        }
    }
    Ok(kept)
}

/// `GET {path}` on an open connection (waiting until it can take a request).
pub async fn get_on(
    send: &mut Connection,
    addr: &str,
    path: &str,
) -> Result<HttpResponse, ClientError> {
    // A kept-alive connection is ready again once the previous response was read,
    // which its connection task notices asynchronously; a closed one errs here.
    send.ready().await?;
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Uri(path.to_string(), e.to_string()))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(HttpResponse { status, body })
}
