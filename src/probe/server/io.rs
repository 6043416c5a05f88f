//! A connection's socket, as hyper sees it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Conn, MAX_HEAD_BYTES, MAX_URI_BYTES};

/// A connection's socket: records reads as activity, and gives the error answers
/// that hyper writes itself (with an empty body) a JSON body.
pub(super) struct Io {
    /// Always `Some` until dropped (then it may linger, see [`linger`]).
    stream: Option<TcpStream>,
    conn: Option<Arc<Conn>>,
    /// A rewritten error answer still to send, and how much of it is sent.
    pending: Vec<u8>,
    sent: usize,
    /// An error answer was sent: the request may be partly unread.
    answered_error: bool,
}

impl Io {
    pub(super) fn new(stream: TcpStream, conn: Option<Arc<Conn>>) -> Self {
        Self {
            stream: Some(stream),
            conn,
            pending: Vec::new(),
            sent: 0,
            answered_error: false,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream lives as long as Io"),
        )
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(
                Pin::new(self.stream.as_mut().expect("live"))
                    .poll_write(cx, &self.pending[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.stream().poll_read(cx, buf))?;
        if buf.filled().len() > before {
            if let Some(conn) = &this.conn {
                conn.touch();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = with_json_body(buf) {
            this.pending = answer;
            this.answered_error = true;
            // Sent by the next write, flush or shutdown, which hyper always does.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        this.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        this.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        this.stream().poll_shutdown(cx)
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Best effort for an answer hyper did not flush: it is small and the socket
        // buffer is empty.
        if self.sent < self.pending.len() {
            let _ = stream.try_write(&self.pending[self.sent..]);
        }
        if self.answered_error {
            linger(stream);
        }
    }
}

/// Sockets lingering at once, at most [`MAX_LINGERING`].
static LINGERING: AtomicUsize = AtomicUsize::new(0);
/// Most sockets that linger at once; beyond, they close at once.
const MAX_LINGERING: usize = 64;
/// How long, and how much, a lingering socket reads before it closes.
const LINGER_FOR: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Closes a socket that answered an error without reading the whole request, the way
/// HTTP servers do ("lingering close"): our side is shut first, and what the client
/// still sends is read and thrown away for a moment. Closed at once, the unread bytes
/// would make the kernel send a reset, which can destroy the answer before the client
/// reads it.
fn linger(mut stream: TcpStream) {
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING
        || tokio::runtime::Handle::try_current().is_err()
    {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        let _ = tokio::time::timeout(LINGER_FOR, async {
            while read < LINGER_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
        LINGERING.fetch_sub(1, Ordering::Relaxed);
    });
}

/// The error answers that hyper writes by itself, with an empty body, when it cannot
/// read a request head (`proto/h1/role.rs`, `on_error`). Every answer of ours has a
/// body, so an empty-bodied head with one of these status lines is hyper's.
const HYPER_ANSWERS: [&str; 3] = [
    "HTTP/1.1 400 Bad Request\r\n",
    "HTTP/1.1 414 URI Too Long\r\n",
    "HTTP/1.1 431 Request Header Fields Too Large\r\n",
];

fn hyper_answer_body(status_line: &str) -> serde_json::Value {
    if status_line.contains(" 431 ") {
        serde_json::json!({
            "error": "request header fields too large",
            "max_head_bytes": MAX_HEAD_BYTES,
            "max_header_lines": 100,
        })
    } else if status_line.contains(" 414 ") {
        serde_json::json!({"error": "URI too long", "max_uri_bytes": MAX_URI_BYTES})
    } else {
        serde_json::json!({"error": "bad request: the request head is not valid HTTP/1.1"})
    }
}

/// `head` with a JSON body, if it is one of hyper's own error answers.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(head).ok()?;
    let status_line = HYPER_ANSWERS.iter().find(|line| head.starts_with(*line))?;
    let fields = head[status_line.len()..].strip_suffix("\r\n\r\n")?;
    let mut lines: Vec<&str> = fields.split("\r\n").collect();
    let empty = lines
        .iter()
        .position(|l| l.eq_ignore_ascii_case("content-length: 0"))?;
    lines.remove(empty);
    let body = hyper_answer_body(status_line).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 64);
    out.push_str(status_line);
    for line in lines.iter().filter(|l| !l.is_empty()) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_get_a_json_body_and_others_pass() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(with_json_body(head).unwrap()).unwrap();
        let (fields, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(fields.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(fields.contains("\r\ndate: Mon"), "{fields}");
        assert!(fields.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "request header fields too large");

        // Our own answers have bodies; other statuses and body bytes pass.
        for passes in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx",
            b"{\"hello\":\"world\"}",
        ] {
            assert_eq!(with_json_body(passes), None);
        }
    }
}
