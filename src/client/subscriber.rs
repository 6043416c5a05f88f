//! The telemetry subscriber: a task that owns all network I/O with one server,
//! reconnects with bounded exponential backoff, and hands owned messages to the UI
//! over a bounded channel. It never blocks on the UI: when the channel is full the
//! message is dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::http::{self, TelemetryStream};
use crate::protocol::{ServerInfo, Snapshot};

/// What the subscriber tells the UI.
#[derive(Clone, Debug)]
pub enum TelemetryMsg {
    /// Connected; the server's description.
    Connected(Box<ServerInfo>),
    /// A snapshot line.
    Snapshot(Box<Snapshot>),
    /// Lines or parts of lines were skipped: malformed, too long, or beyond the
    /// reader's limits (see [`crate::protocol::Snapshot::bound`]). Sent at most once
    /// a second, with the count since the previous one.
    Skipped {
        /// Lines skipped whole.
        lines: u64,
        /// What happened last, in words.
        reason: String,
    },
    /// The connection failed or ended; the next attempt comes after `retry_in`.
    Disconnected {
        /// What went wrong.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// Exponential backoff between `base` and `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success: start again from `base`.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// No line for this long means the server is gone even if the socket is open.
const SILENCE: Duration = Duration::from_secs(3);

/// Subscribes to `addr`'s telemetry until `tx` closes. Messages the UI cannot take
/// right now are counted in `dropped`.
pub fn spawn(
    addr: String,
    tx: mpsc::Sender<TelemetryMsg>,
    dropped: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    spawn_tagged(addr, tx, |msg| msg, dropped)
}

/// As [`spawn`], wrapping each message with `tag` (e.g. to say which server it is
/// from, when several subscribers feed one channel).
pub fn spawn_tagged<T: Send + 'static>(
    addr: String,
    tx: mpsc::Sender<T>,
    tag: impl Fn(TelemetryMsg) -> T + Send + Sync + 'static,
    dropped: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = http::client();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let send = |msg: TelemetryMsg| {
            if tx.try_send(tag(msg)).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        loop {
            if tx.is_closed() {
                return;
            }
            let reason = match session(&client, &addr, &send, &mut backoff).await {
                Ok(()) => "the server ended the stream".to_string(),
                Err(e) => e,
            };
            let retry_in = backoff.next_delay();
            send(TelemetryMsg::Disconnected { reason, retry_in });
            tokio::time::sleep(retry_in).await;
        }
    })
}

async fn session(
    client: &http::HttpClient,
    addr: &str,
    send: &impl Fn(TelemetryMsg),
    backoff: &mut Backoff,
) -> Result<(), String> {
    let info = tokio::time::timeout(SILENCE, http::get_limited(client, addr, "/info", MAX_INFO))
        .await
        .map_err(|_| format!("{addr} did not answer"))?
        .map_err(|e| e.to_string())?;
    let mut info: ServerInfo = serde_json::from_slice(&info.body)
        .map_err(|e| format!("{addr}/info is not a loopscope server: {e}"))?;
    let mut skipped = SkipCounter::default();
    for cut in info.bound() {
        skipped.note(0, format!("/info: dropped {cut}"), send);
    }
    let mut stream = tokio::time::timeout(SILENCE, TelemetryStream::connect(client, addr))
        .await
        .map_err(|_| format!("{addr} did not answer"))?
        .map_err(|e| e.to_string())?;
    send(TelemetryMsg::Connected(Box::new(info)));
    loop {
        match tokio::time::timeout(SILENCE, stream.next()).await {
            Err(_) => return Err(format!("no telemetry for {} s", SILENCE.as_secs())),
            // One bad line is skipped and counted; the stream goes on.
            Ok(Err(e)) if e.is_skipped_line() => skipped.note(1, e.to_string(), send),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(mut snapshot))) => {
                backoff.reset();
                for cut in snapshot.bound() {
                    skipped.note(0, format!("dropped {cut}"), send);
                }
                send(TelemetryMsg::Snapshot(Box::new(snapshot)));
            }
        }
        skipped.flush(send);
    }
}

/// The largest `/info` body read.
const MAX_INFO: usize = 1 << 20;

/// Counts skipped lines and cuts, and reports them at most once a second.
#[derive(Default)]
struct SkipCounter {
    lines: u64,
    /// Distinct reasons since the last report (a few).
    reasons: Vec<String>,
    last_sent: Option<tokio::time::Instant>,
}

impl SkipCounter {
    fn note(&mut self, lines: u64, reason: String, send: &impl Fn(TelemetryMsg)) {
        self.lines += lines;
        if self.reasons.len() < 4 && !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
        self.flush(send);
    }

    fn flush(&mut self, send: &impl Fn(TelemetryMsg)) {
        let due = self
            .last_sent
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due && !self.reasons.is_empty() {
            send(TelemetryMsg::Skipped {
                lines: std::mem::take(&mut self.lines),
                reason: std::mem::take(&mut self.reasons).join("; "),
            });
            self.last_sent = Some(tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
