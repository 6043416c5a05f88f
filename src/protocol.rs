//! Telemetry types: the one contract between a measured server and whoever reads it.
//!
//! A snapshot line is self-contained (a client can join the stream at any time) and
//! versioned by `v`. Percentages are of one core. Fields added later must be optional
//! (`#[serde(default)]`) so that older readers and newer servers keep understanding
//! each other; unknown event kinds decode as [`Event::Unknown`].
//!
//! # Versions
//!
//! - **1**: one entry per event loop (a `current_thread` runtime), its pool, its CPU.
//!   `silent_for_ms` was added as an optional field.
//! - **2**: multi-thread tokio runtimes. The model `tokio`; one `workers[]` entry per
//!   runtime worker thread, with the optional [`WorkerSnapshot::runtime`] (polls,
//!   steals, local queue, parked); the optional [`Snapshot::runtime`] (scheduling
//!   delay, global queue, tokio's blocking pool). Every new field is optional, so a
//!   version-1 line (a recording made before) still decodes and replays: its new
//!   fields read as absent. A version-1 reader ignores the new fields but does not
//!   know the model `tokio`.
//!
//!   Added later in protocol 2, optional: [`WorkerSnapshot::totals`] and
//!   [`RuntimeSnapshot::scheduling_delay_total`], cumulative figures since a
//!   worker process started (see [`totals`]); a replacement process restarts them.

use serde::{Deserialize, Serialize};

pub mod totals;
pub use totals::{
    CpuSeconds, DurationHistogram, HISTOGRAM_BOUNDS_US, HISTOGRAM_BUCKETS, WorkerTotals,
};

/// The version written in every snapshot's `v` field.
pub const PROTOCOL_VERSION: u32 = 2;

/// The concurrency model a demo server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// One single-threaded event loop and a small process-wide thread pool.
    Node,
    /// A supervisor and N worker processes, each with its own loop and pool.
    Fastapi,
    /// Any other tokio application that embeds the probe.
    Custom,
    /// A multi-thread tokio runtime: N worker threads that steal each other's
    /// tasks, and tokio's blocking pool (protocol 2).
    Tokio,
}

impl Model {
    /// The name used on the command line and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Node => "node",
            Model::Fastapi => "fastapi",
            Model::Custom => "custom",
            Model::Tokio => "tokio",
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the `/telemetry` stream: every worker, one sample period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Increases by one per line; a gap means the reader dropped lines.
    pub seq: u64,
    /// Milliseconds since the server started.
    pub t_ms: u64,
    /// Which concurrency model the server runs.
    pub model: Model,
    /// The nominal sample period.
    #[serde(default)]
    pub period_ms: u64,
    /// One entry per worker (per event loop), ordered by id.
    pub workers: Vec<WorkerSnapshot>,
    /// The machine as a whole.
    pub host: HostSnapshot,
    /// What happened since the previous line.
    #[serde(default)]
    pub events: Vec<Event>,
    /// The runtime as a whole, for a multi-thread tokio runtime (protocol 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSnapshot>,
}

/// A multi-thread tokio runtime as a whole, over one sample period (protocol 2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeSnapshot {
    /// Worker threads.
    pub workers: u32,
    /// How late a probe task ran after it was due: the time a ready task waits for
    /// a worker (the loop-lag method, on the whole runtime).
    pub scheduling_delay_ms: LagSummary,
    /// Tasks waiting in the runtime's global (injection) queue now.
    pub global_queue: u64,
    /// Tasks alive now.
    #[serde(default)]
    pub alive_tasks: u64,
    /// Blocking threads started (tokio's blocking pool), now.
    pub blocking_threads: u32,
    /// Blocking threads idle, now.
    pub idle_blocking_threads: u32,
    /// `spawn_blocking` jobs waiting for a blocking thread, now.
    pub blocking_queue: u64,
    /// Every scheduling delay since the runtime started, not only the period's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_delay_total: Option<DurationHistogram>,
}

/// One worker thread of a multi-thread tokio runtime, over one sample period
/// (protocol 2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerThreadSnapshot {
    /// Kernel thread id.
    #[serde(default)]
    pub tid: u32,
    /// Task polls in the period.
    pub polls: u64,
    /// Tasks stolen from other workers in the period.
    #[serde(default)]
    pub steals: u64,
    /// Tasks in its local queue now.
    #[serde(default)]
    pub local_queue: u64,
    /// Parked (asleep, no task to run) at the end of the period.
    pub parked: bool,
}

/// One event loop and everything around it, over one sample period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Worker index, stable across restarts.
    pub id: u32,
    /// The process id; changes when a worker is respawned.
    pub pid: u32,
    /// False between a worker's death and its replacement's first report.
    pub alive: bool,
    /// How many times this worker slot has been respawned.
    #[serde(default)]
    pub restarts: u32,
    /// Timer-drift lag over the sample period.
    pub lag_ms: LagSummary,
    /// How long the loop has been blocked right now; 0 while it runs.
    pub stalled_for_ms: f64,
    /// The request whose poll holds the loop during a stall, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_in: Option<String>,
    /// Set when whoever serves the telemetry has had no report from this worker for
    /// this long (its whole process is stopped, swapped out or wedged, so it cannot
    /// say so itself); the other figures are then its last report's. Absent while
    /// the worker reports. Added in protocol 1 as an optional field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_for_ms: Option<f64>,
    /// Busy fraction of the loop thread over the period, 0..=1.
    pub loop_utilization: f64,
    /// For a worker thread of a multi-thread runtime (protocol 2): its scheduler
    /// figures. Its `lag_ms` is then how long task polls held it in the period and
    /// `stalled_for_ms` how long the poll running now has held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<WorkerThreadSnapshot>,
    /// The thread pool of this worker.
    pub pool: PoolSnapshot,
    /// CPU, in percent of one core.
    pub cpu: CpuSnapshot,
    /// Server-side request statistics.
    pub requests: RequestSnapshot,
    /// Cumulative figures since the worker's process started (protocol 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<WorkerTotals>,
}

/// Summary of the timer-drift lag histogram for one period, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LagSummary {
    /// Median lateness.
    pub p50: f64,
    /// 99th percentile lateness.
    pub p99: f64,
    /// Largest lateness.
    pub max: f64,
    /// How many timer ticks were measured.
    pub samples: u64,
}

/// The thread pool's gauge over one period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    /// Most jobs that can run at once (threads, or tokens).
    pub size: u32,
    /// Threads started so far (a lazy pool starts them as needed).
    #[serde(default)]
    pub threads: u32,
    /// Jobs running now.
    pub busy: u32,
    /// Jobs waiting for a thread now.
    pub queued: u32,
    /// How long the oldest waiting job has waited, now.
    #[serde(default)]
    pub oldest_wait_ms: f64,
    /// Longest queue wait of the jobs that started in the period.
    pub wait_ms_max: f64,
    /// Median queue wait of the jobs that started in the period.
    #[serde(default)]
    pub wait_ms_p50: f64,
    /// 99th percentile queue wait of the jobs that started in the period.
    #[serde(default)]
    pub wait_ms_p99: f64,
    /// Jobs completed since start.
    #[serde(default)]
    pub completed: u64,
    /// Jobs completed per second over the period.
    #[serde(default)]
    pub completed_per_s: f64,
}

/// CPU use of a worker process, in percent of one core.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSnapshot {
    /// The whole process.
    pub process: f64,
    /// The event-loop thread.
    pub loop_thread: f64,
    /// All pool threads together.
    pub pool_threads: f64,
}

/// Server-side request statistics of one worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSnapshot {
    /// Requests accepted and not yet answered.
    pub in_flight: u64,
    /// Requests answered since start.
    pub completed: u64,
    /// Requests answered per second over the period.
    #[serde(default)]
    pub per_s: f64,
    /// Latency per endpoint, of the requests answered in the period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointLatency>,
}

/// Latency of one endpoint over one period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointLatency {
    /// `METHOD /path`, without the query.
    pub endpoint: String,
    /// Requests answered in the period.
    pub count: u64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
}

/// The machine the server runs on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    /// Host CPU in percent of one core (so up to 100 × cores).
    pub cpu: f64,
    /// Logical cores.
    #[serde(default)]
    pub cores: u32,
}

/// Something that happened, reported once in the snapshot after it happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// One poll of a request held the loop longer than the threshold.
    SlowPoll {
        /// Worker whose loop was held.
        worker: u32,
        /// `METHOD /path`.
        endpoint: String,
        /// The full request target, query included.
        #[serde(default)]
        uri: String,
        /// How long the poll took.
        ms: f64,
        /// When the poll ended, in milliseconds since the worker's probe started.
        #[serde(default)]
        t_ms: u64,
    },
    /// A worker process exited.
    WorkerExited {
        /// Worker slot.
        worker: u32,
        /// The pid that exited.
        pid: u32,
        /// How it ended, e.g. "killed by signal 9".
        status: String,
    },
    /// A worker slot got a new process.
    WorkerRestarted {
        /// Worker slot.
        worker: u32,
        /// The pid that died.
        old_pid: u32,
        /// The replacement's pid.
        new_pid: u32,
    },
    /// A probe dropped events because its channel was full.
    EventsDropped {
        /// Worker whose probe dropped them.
        worker: u32,
        /// How many since the previous report.
        count: u64,
    },
    /// An event kind this reader does not know.
    #[serde(other)]
    Unknown,
}

/// A worker's report to its supervisor (fastapi model): one per period, one line each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker's figures for the period.
    pub worker: WorkerSnapshot,
    /// The worker's events for the period.
    #[serde(default)]
    pub events: Vec<Event>,
    /// True when the report was sent early because a stall just began.
    #[serde(default)]
    pub urgent: bool,
    /// The runtime as a whole (multi-thread runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSnapshot>,
}

/// `GET /info`: what the server is and where its parts are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version.
    pub v: u32,
    /// Concurrency model.
    pub model: Model,
    /// The application address (workloads go there).
    pub app: String,
    /// The telemetry address.
    pub telemetry: String,
    /// The supervisor's pid (the only process in the node model).
    pub pid: u32,
    /// Worker slots and their current pids.
    pub workers: Vec<WorkerInfo>,
    /// Pool size of each worker.
    pub pool_size: u32,
    /// The sample period.
    pub period_ms: u64,
    /// The lag probe's timer resolution.
    pub lag_resolution_ms: f64,
    /// The slow-poll threshold.
    pub slow_poll_ms: f64,
    /// Software versions.
    pub versions: Versions,
}

/// One worker slot in [`ServerInfo`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker slot.
    pub id: u32,
    /// Current pid.
    pub pid: u32,
}

/// Versions in [`ServerInfo`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// The loopscope package version.
    pub loopscope: String,
    /// The telemetry protocol version.
    pub protocol: u32,
}

/// The first stdout line of `loopscope demo`, so a parent that asked for port 0 finds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressLine {
    /// The application address.
    pub app: String,
    /// The telemetry address, absent with `--no-telemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<String>,
    /// The server's (supervisor's) pid.
    pub pid: u32,
}

/// Most workers a reader keeps from one snapshot or server description.
pub const MAX_WORKERS: usize = 256;
/// Most events a reader keeps from one snapshot.
pub const MAX_EVENTS: usize = 64;
/// Most endpoints a reader keeps per worker.
pub const MAX_ENDPOINTS: usize = 64;
/// Longest string a reader keeps (a request target, a name), in characters.
pub const MAX_STRING: usize = 200;

/// Cuts `s` to [`MAX_STRING`] characters; true if it was cut.
fn cut(s: &mut String) -> bool {
    if s.char_indices().nth(MAX_STRING).is_none() {
        return false;
    }
    match s.char_indices().nth(MAX_STRING - 1) {
        Some((at, _)) => {
            s.truncate(at);
            s.push('…');
            true
        }
        None => false,
    }
}

/// The largest figure a reader keeps (ms, %, per second): beyond it a figure is
/// nonsense from a broken server, and printing it would run across the screen.
pub const MAX_FIGURE: f64 = 1e9;

/// Brings a figure within `0..=MAX_FIGURE`; true if it was outside.
fn figure(x: &mut f64) -> bool {
    let ok = x.is_finite() && (0.0..=MAX_FIGURE).contains(x);
    if !ok {
        *x = if x.is_nan() {
            0.0
        } else {
            x.clamp(0.0, MAX_FIGURE)
        };
    }
    !ok
}

/// Keeps at most `max` items; true if some were dropped.
fn cap<T>(v: &mut Vec<T>, max: usize) -> bool {
    let over = v.len() > max;
    v.truncate(max);
    over
}

impl Snapshot {
    /// Brings a snapshot from the network within the reader's limits (workers,
    /// events, endpoints, string lengths, finite figures) and says what was cut, so
    /// that a hostile or broken server cannot exhaust the reader.
    pub fn bound(&mut self) -> Vec<String> {
        let mut cuts = Vec::new();
        if cap(&mut self.workers, MAX_WORKERS) {
            cuts.push(format!("workers beyond {MAX_WORKERS}"));
        }
        if cap(&mut self.events, MAX_EVENTS) {
            cuts.push(format!("events beyond {MAX_EVENTS}"));
        }
        let mut long = false;
        let mut endpoints = false;
        let mut buckets = false;
        let mut odd = figure(&mut self.host.cpu);
        if let Some(r) = &mut self.runtime {
            let l = &mut r.scheduling_delay_ms;
            for x in [&mut l.p50, &mut l.p99, &mut l.max] {
                odd |= figure(x);
            }
            if let Some(t) = &mut r.scheduling_delay_total {
                t.bound(&mut buckets, &mut odd);
            }
        }
        for w in &mut self.workers {
            let l = &mut w.lag_ms;
            let p = &mut w.pool;
            let c = &mut w.cpu;
            for x in [
                &mut l.p50,
                &mut l.p99,
                &mut l.max,
                &mut w.stalled_for_ms,
                &mut w.loop_utilization,
                &mut p.oldest_wait_ms,
                &mut p.wait_ms_max,
                &mut p.wait_ms_p50,
                &mut p.wait_ms_p99,
                &mut p.completed_per_s,
                &mut c.process,
                &mut c.loop_thread,
                &mut c.pool_threads,
                &mut w.requests.per_s,
            ] {
                odd |= figure(x);
            }
            if let Some(x) = &mut w.silent_for_ms {
                odd |= figure(x);
            }
            if let Some(t) = &mut w.totals {
                t.bound(&mut buckets, &mut odd);
            }
            for e in &mut w.requests.endpoints {
                odd |= figure(&mut e.p50_ms) | figure(&mut e.p99_ms) | figure(&mut e.max_ms);
            }
            if let Some(s) = &mut w.stalled_in {
                long |= cut(s);
            }
            endpoints |= cap(&mut w.requests.endpoints, MAX_ENDPOINTS);
            for e in &mut w.requests.endpoints {
                long |= cut(&mut e.endpoint);
            }
        }
        for e in &mut self.events {
            match e {
                Event::SlowPoll {
                    endpoint, uri, ms, ..
                } => {
                    long |= cut(endpoint);
                    long |= cut(uri);
                    odd |= figure(ms);
                }
                Event::WorkerExited { status, .. } => long |= cut(status),
                _ => {}
            }
        }
        if endpoints {
            cuts.push(format!("endpoints beyond {MAX_ENDPOINTS} per worker"));
        }
        if buckets {
            cuts.push(format!("histogram buckets beyond {HISTOGRAM_BUCKETS}"));
        }
        if long {
            cuts.push(format!("strings beyond {MAX_STRING} characters"));
        }
        if odd {
            cuts.push(format!("figures outside 0..={MAX_FIGURE:e}"));
        }
        cuts
    }
}

impl ServerInfo {
    /// As [`Snapshot::bound`], for a server description.
    pub fn bound(&mut self) -> Vec<String> {
        let mut cuts = Vec::new();
        if cap(&mut self.workers, MAX_WORKERS) {
            cuts.push(format!("workers beyond {MAX_WORKERS}"));
        }
        let mut long = cut(&mut self.app) | cut(&mut self.telemetry);
        long |= cut(&mut self.versions.loopscope);
        if long {
            cuts.push(format!("strings beyond {MAX_STRING} characters"));
        }
        cuts
    }
}

#[cfg(test)]
mod tests;
