//! loopscope: a live profiler for event-loop concurrency.
//!
//! Watch your own tokio service (axum, hyper, tonic; `current_thread` or
//! `multi_thread`) in three lines, then `loopscope attach 127.0.0.1:9464`:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let app = axum::Router::<()>::new();
//! let mut rt = tokio::runtime::Builder::new_multi_thread();
//! let probe = loopscope::probe::Probe::builder().telemetry("127.0.0.1:9464").install(rt.enable_all())?;
//! rt.build()?.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, probe.make_service(app.with_state(()))).await
//! })?;
//! # Ok(()) }
//! ```
//!
//! With `default-features = false, features = ["probe"]` only the probe and its
//! telemetry server are built. The modules:
//!
//! - [`protocol`]: the telemetry contract (snapshots, events, server info);
//! - [`probe`]: instrumentation for any tokio runtime, and the telemetry server;
//! - [`client`]: HTTP helpers, the telemetry subscriber and the load generator;
//! - [`workload`]: the workload catalog shared by the demo, the keys and scenarios;
//! - [`session`]: the terminal-free core every front end drives;
//! - [`tui`]: the terminal dashboard (a front end);
//! - [`headless`]: runs without a terminal, for scripts and CI (a front end);
//! - [`diagnosis`]: why a server stalls, in one line;
//! - [`summary`]: a run's figures per worker;
//! - [`record`]: recordings of a session, for replay;
//! - [`report`]: a recording as one self-contained HTML page of charts;
//! - [`units`]: figures as people read them;
//! - [`scenario`]: timed steps for workshops and scripts.

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod client;
#[cfg(feature = "cli")]
pub mod diagnosis;
#[cfg(feature = "cli")]
pub mod headless;
pub mod probe;
pub mod protocol;
#[cfg(feature = "cli")]
pub mod record;
#[cfg(feature = "cli")]
pub mod report;
#[cfg(feature = "cli")]
pub mod scenario;
#[cfg(feature = "cli")]
pub mod session;
#[cfg(feature = "cli")]
pub mod summary;
#[cfg(feature = "cli")]
pub mod tui;
#[cfg(feature = "cli")]
pub mod units;
#[cfg(feature = "cli")]
pub mod workload;

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use crate::protocol::{
        Event, HostSnapshot, LagSummary, Model, PROTOCOL_VERSION, PoolSnapshot, ServerInfo,
        Snapshot, Versions, WorkerInfo, WorkerSnapshot,
    };

    static TIMING: Mutex<()> = Mutex::new(());

    /// Serializes tests that measure time, so that they do not share two cores.
    pub(crate) fn timing_lock() -> MutexGuard<'static, ()> {
        TIMING.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A test fixture.
    pub(crate) fn info(model: Model, pid: u32) -> ServerInfo {
        ServerInfo {
            v: PROTOCOL_VERSION,
            model,
            app: "127.0.0.1:8000".into(),
            telemetry: "127.0.0.1:9464".into(),
            pid,
            workers: vec![WorkerInfo { id: 0, pid }],
            pool_size: 4,
            period_ms: 100,
            lag_resolution_ms: 1.0,
            slow_poll_ms: 50.0,
            versions: Versions {
                loopscope: "0.1.0".into(),
                protocol: 1,
            },
        }
    }

    /// A test fixture.
    pub(crate) fn worker(id: u32, lag_max: f64, stalled: f64, queued: u32) -> WorkerSnapshot {
        WorkerSnapshot {
            id,
            pid: 4242 + id,
            alive: true,
            lag_ms: LagSummary {
                p50: 0.2,
                p99: lag_max.min(1.1),
                max: lag_max,
                samples: 50,
            },
            stalled_for_ms: stalled,
            stalled_in: (stalled > 0.0).then(|| "GET /block?ms=500".to_string()),
            loop_utilization: 0.38,
            pool: PoolSnapshot {
                size: 4,
                threads: 4,
                busy: queued.min(4),
                queued,
                wait_ms_max: 310.0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A test fixture.
    pub(crate) fn snapshot(seq: u64, workers: Vec<WorkerSnapshot>, events: Vec<Event>) -> Snapshot {
        Snapshot {
            v: PROTOCOL_VERSION,
            seq,
            t_ms: seq.wrapping_mul(100),
            model: Model::Node,
            period_ms: 100,
            workers,
            host: HostSnapshot {
                cpu: 63.0,
                cores: 2,
            },
            events,
            runtime: None,
        }
    }
}
