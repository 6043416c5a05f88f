//! What the dashboard knows: pure data, updated only by [`Dashboard::apply`] from
//! owned messages. Time series are pruned here (never while drawing).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::client::load::LoadStats;
use crate::client::subscriber::TelemetryMsg;
use crate::diagnosis::{Diagnoser, Diagnosis};
use crate::protocol::{Event, HostSnapshot, RuntimeSnapshot, ServerInfo, Snapshot, WorkerSnapshot};
pub use crate::session::{LogKind, Msg};
pub use crate::units::short_ms;

/// Seconds of history kept for the charts.
pub const WINDOW_S: f64 = 60.0;
/// A jump in `seq` larger than this is not lost lines but another stream.
const MAX_GAP: u64 = 100_000;
/// Lines kept in the event log.
pub const LOG_LINES: usize = 200;

/// The state of the telemetry connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    /// Not connected yet.
    Connecting,
    /// Snapshots are arriving.
    Live,
    /// The connection dropped; retrying.
    Lost {
        /// What went wrong.
        reason: String,
        /// When the connection was lost.
        since: Instant,
    },
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Wall-clock time, `HH:MM:SS`.
    pub at: String,
    /// What happened.
    pub kind: LogKind,
    /// The text.
    pub text: String,
}

/// One worker: its newest snapshot and its history.
#[derive(Clone, Debug)]
pub struct WorkerView {
    /// The newest snapshot.
    pub latest: WorkerSnapshot,
    /// When it arrived (to count a stall up between lines).
    pub received_at: Instant,
    /// (seconds, lag ms): per line, the lag max, or the live stall while one lasts.
    pub lag: VecDeque<(f64, f64)>,
    /// (seconds, jobs queued).
    pub queued: VecDeque<(f64, f64)>,
    /// (seconds, pool threads busy).
    pub busy: VecDeque<(f64, f64)>,
    /// (seconds, loop thread CPU, % of one core).
    pub cpu_loop: VecDeque<(f64, f64)>,
    /// (seconds, pool threads CPU, % of one core).
    pub cpu_pool: VecDeque<(f64, f64)>,
}

impl WorkerView {
    /// How long the loop has been stalled as of `now`: the reported figure, counted
    /// on between lines (at most one and a half periods past the last line, so a stall
    /// that ended is not inflated while its last line is on its way).
    pub fn stalled_for_ms(&self, now: Instant, period_ms: u64) -> f64 {
        let reported = self.latest.stalled_for_ms;
        if reported <= 0.0 {
            return 0.0;
        }
        let since = now
            .saturating_duration_since(self.received_at)
            .as_secs_f64()
            * 1000.0;
        reported + since.min(period_ms as f64 * 1.5)
    }
}

/// Client-side traffic from the load generator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    /// Load on or off.
    pub on: bool,
    /// Target rate, requests per second.
    pub rate: f64,
    /// The newest window.
    pub last: LoadStats,
    /// Errors since start.
    pub errors: u64,
    /// Timeouts since start.
    pub timeouts: u64,
    /// Worst p99 of the windows of the last minute, ms.
    pub worst_p99_ms: f64,
    /// Worst latency of the last minute, ms.
    pub worst_max_ms: f64,
    /// (when, p99, max) of each window of the last minute.
    pub history: VecDeque<(Instant, f64, f64)>,
    /// Per worker: the largest latency of the last minute, ms.
    pub worst_max_by_worker: BTreeMap<u32, f64>,
    /// (when, worker, max) of each window of the last minute.
    worker_history: VecDeque<(Instant, u32, f64)>,
}

/// Everything the dashboard shows.
#[derive(Clone, Debug)]
pub struct Dashboard {
    /// The server's description, once connected.
    pub info: Option<ServerInfo>,
    /// Connection state.
    pub connection: Connection,
    /// Workers by id.
    pub workers: BTreeMap<u32, WorkerView>,
    /// Host figures of the newest line.
    pub host: HostSnapshot,
    /// Runtime-wide figures of the newest line (a multi-thread tokio runtime).
    pub runtime: Option<RuntimeSnapshot>,
    /// Server time of the newest line, seconds.
    pub t_s: f64,
    /// Sample period of the server.
    pub period_ms: u64,
    /// Sequence number of the newest line.
    pub last_seq: u64,
    /// Lines the stream skipped (gaps in `seq`).
    pub missed_lines: u64,
    /// Lines the reader skipped as malformed or too long.
    pub skipped_lines: u64,
    /// The event log, newest last.
    pub log: VecDeque<LogEntry>,
    /// Client-side traffic.
    pub traffic: Traffic,
    /// What is wrong, one line per worker that has a problem.
    pub diagnosis: Vec<Diagnosis>,
    diagnoser: Diagnoser,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            info: None,
            connection: Connection::Connecting,
            workers: BTreeMap::new(),
            host: HostSnapshot::default(),
            runtime: None,
            t_s: 0.0,
            period_ms: 100,
            last_seq: 0,
            missed_lines: 0,
            skipped_lines: 0,
            log: VecDeque::new(),
            traffic: Traffic::default(),
            diagnosis: Vec::new(),
            diagnoser: Diagnoser::new(),
        }
    }
}

impl Dashboard {
    /// Applies one message; `now` and `clock` (`HH:MM:SS`) stamp what it records.
    pub fn apply(&mut self, msg: Msg, now: Instant, clock: &str) {
        match msg {
            Msg::Telemetry(TelemetryMsg::Connected(info)) => {
                let restarted = self
                    .info
                    .as_ref()
                    .is_some_and(|old| old.pid != info.pid || old.model != info.model);
                if restarted {
                    self.workers.clear();
                    self.last_seq = 0;
                }
                let was_lost = matches!(self.connection, Connection::Lost { .. });
                self.period_ms = info.period_ms;
                self.log(
                    clock,
                    LogKind::Info,
                    format!(
                        "{} {} · {} · pool {}",
                        if was_lost {
                            "reconnected to"
                        } else {
                            "attached to"
                        },
                        info.telemetry,
                        info.model,
                        info.pool_size
                    ),
                );
                self.info = Some(*info);
                self.connection = Connection::Live;
            }
            Msg::Telemetry(TelemetryMsg::Snapshot(snap)) => self.ingest(*snap, now, clock),
            Msg::Telemetry(TelemetryMsg::Skipped { lines, reason }) => {
                self.skipped_lines = self.skipped_lines.saturating_add(lines);
                let text = match lines {
                    0 => format!("telemetry: {reason}"),
                    n => format!("telemetry: {reason} ({n} lines skipped)"),
                };
                self.log(clock, LogKind::Warn, text);
            }
            Msg::Telemetry(TelemetryMsg::Disconnected { reason, retry_in }) => {
                if !matches!(self.connection, Connection::Lost { .. }) {
                    self.log(
                        clock,
                        LogKind::Warn,
                        format!(
                            "telemetry lost: {reason}; retrying every ≤{} s",
                            retry_in.as_secs().max(2)
                        ),
                    );
                    self.connection = Connection::Lost { reason, since: now };
                }
            }
            Msg::Load(stats) => {
                let t = &mut self.traffic;
                t.errors += stats.errors;
                t.timeouts += stats.timeouts;
                t.history.push_back((now, stats.p99_ms, stats.max_ms));
                while t.history.front().is_some_and(|(at, _, _)| {
                    now.saturating_duration_since(*at).as_secs_f64() > WINDOW_S
                }) {
                    t.history.pop_front();
                }
                t.worst_p99_ms = t.history.iter().map(|h| h.1).fold(0.0, f64::max);
                t.worst_max_ms = t.history.iter().map(|h| h.2).fold(0.0, f64::max);
                for w in &stats.workers {
                    t.worker_history.push_back((now, w.worker, w.max_ms));
                }
                while t.worker_history.front().is_some_and(|(at, _, _)| {
                    now.saturating_duration_since(*at).as_secs_f64() > WINDOW_S
                }) {
                    t.worker_history.pop_front();
                }
                t.worst_max_by_worker.clear();
                for (_, w, max) in &t.worker_history {
                    let worst = t.worst_max_by_worker.entry(*w).or_default();
                    *worst = worst.max(*max);
                }
                t.last = stats;
            }
            Msg::ServerDown(reason) => {
                self.log(clock, LogKind::Warn, reason.clone());
                self.connection = Connection::Lost { reason, since: now };
            }
            Msg::Reset { keep_log, info } => {
                let log = std::mem::take(&mut self.log);
                let traffic = std::mem::take(&mut self.traffic);
                *self = Dashboard::default();
                if keep_log {
                    self.log = log;
                    self.traffic = traffic;
                }
                if let Some(info) = info {
                    self.period_ms = info.period_ms;
                    self.info = Some(*info);
                    self.connection = Connection::Live;
                }
            }
            Msg::LoadPlan { on, rate } => {
                self.traffic.on = on;
                self.traffic.rate = rate;
            }
            Msg::Log(kind, text) => self.log(clock, kind, text),
        }
    }

    fn ingest(&mut self, mut snap: Snapshot, now: Instant, clock: &str) {
        // Readers bound what comes from the network; this keeps the view safe from
        // any other source too (it cuts nothing from a bounded line).
        snap.bound();
        self.diagnoser.observe(&snap);
        self.diagnosis = self.diagnoser.diagnose();
        // A new server (restarted, or another model) starts its clock again.
        let gap = snap.seq.saturating_sub(self.last_seq);
        if snap.seq < self.last_seq || gap > MAX_GAP {
            // A new server, or a sequence that jumped beyond belief: start over.
            self.workers.clear();
        } else if self.last_seq != 0 && gap > 1 {
            self.missed_lines = self.missed_lines.saturating_add(gap - 1);
        }
        self.last_seq = snap.seq;
        self.connection = Connection::Live;
        self.t_s = snap.t_ms as f64 / 1000.0;
        if snap.period_ms > 0 {
            self.period_ms = snap.period_ms;
        }
        self.host = snap.host;
        self.runtime = snap.runtime;
        let t = self.t_s;
        self.workers
            .retain(|id, _| snap.workers.iter().any(|w| w.id == *id));
        for w in snap.workers {
            let view = self.workers.entry(w.id).or_insert_with(|| WorkerView {
                latest: w.clone(),
                received_at: now,
                lag: VecDeque::new(),
                queued: VecDeque::new(),
                busy: VecDeque::new(),
                cpu_loop: VecDeque::new(),
                cpu_pool: VecDeque::new(),
            });
            let lag = if w.alive {
                w.lag_ms.max.max(w.stalled_for_ms)
            } else {
                0.0
            };
            push(&mut view.lag, t, lag);
            push(&mut view.queued, t, w.pool.queued as f64);
            push(&mut view.busy, t, w.pool.busy as f64);
            push(&mut view.cpu_loop, t, w.cpu.loop_thread);
            push(&mut view.cpu_pool, t, w.cpu.pool_threads);
            view.latest = w;
            view.received_at = now;
        }
        for e in snap.events {
            match e {
                Event::SlowPoll {
                    worker, uri, ms, ..
                } => self.log(
                    clock,
                    LogKind::Warn,
                    format!("w{worker} loop held {ms:.0} ms by {uri}"),
                ),
                Event::WorkerExited {
                    worker,
                    pid,
                    status,
                } => self.log(
                    clock,
                    LogKind::Warn,
                    format!("w{worker} (pid {pid}) {status}"),
                ),
                Event::WorkerRestarted {
                    worker,
                    old_pid,
                    new_pid,
                } => self.log(
                    clock,
                    LogKind::Info,
                    format!("w{worker} respawned: pid {old_pid} → {new_pid}"),
                ),
                Event::EventsDropped { worker, count } => self.log(
                    clock,
                    LogKind::Warn,
                    format!("w{worker} probe dropped {count} events"),
                ),
                Event::Unknown => {}
            }
        }
    }

    fn log(&mut self, clock: &str, kind: LogKind, text: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogEntry {
            at: clock.to_string(),
            kind,
            text,
        });
    }

    /// The largest lag value in the window, over all workers (for the chart's scale).
    pub fn lag_peak_ms(&self) -> f64 {
        self.workers
            .values()
            .flat_map(|w| w.lag.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max)
    }
}

/// Most points a series keeps, whatever the server's clock does (60 s of 100 ms
/// lines is 600).
const MAX_POINTS: usize = 2048;

fn push(series: &mut VecDeque<(f64, f64)>, t: f64, v: f64) {
    match series.back_mut() {
        // A clock that went back means a new server: start over.
        Some((last, _)) if *last > t => series.clear(),
        // A clock that stands still adds nothing new: keep the worst of the two.
        Some((last, old)) if *last == t => {
            *old = old.max(v);
            return;
        }
        _ => {}
    }
    series.push_back((t, v));
    while series.front().is_some_and(|(t0, _)| *t0 < t - WINDOW_S) || series.len() > MAX_POINTS {
        series.pop_front();
    }
}

/// How long ago `since` was, in whole seconds.
pub fn seconds_since(since: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(since).as_secs()
}

#[cfg(test)]
mod tests;
