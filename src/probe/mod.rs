//! Instrumentation for a tokio event loop, usable by any tokio application.
//!
//! A [`LoopProbe`] measures one loop (one `current_thread` runtime):
//! - timer-drift **tick lag** (Node's `monitorEventLoopDelay` method) and a heartbeat,
//! - **loop utilization** from tokio's task-poll hooks,
//! - **slow polls** of instrumented futures, named after the request that held the loop,
//! - server-side **request** counts and latency per endpoint.
//!
//! The [`sampler`] reads it from its own thread, so a blocked loop is still reported
//! (`stalled_for_ms` grows while the loop is stuck). Nothing here blocks the loop:
//! the loop side only touches atomics, `try_lock`s and `try_send`s, and counts what
//! it had to drop.
//!
//! ```no_run
//! use loopscope::probe::{LoopProbe, ProbeConfig};
//! let probe = LoopProbe::new(0, ProbeConfig::default());
//! let mut builder = tokio::runtime::Builder::new_current_thread();
//! probe.install_hooks(&mut builder);
//! let runtime = builder.enable_all().build().unwrap();
//! runtime.block_on(async {
//!     probe.spawn_lag_task();
//!     // ... serve, wrapping request futures with `probe.instrument(...)`
//! });
//! ```

pub mod aggregate;
pub mod cpu;
mod histogram;
mod instrument;
mod lag;
pub mod metrics;
pub mod pool;
pub mod sampler;
pub mod telemetry;

pub use histogram::LatencyHistogram;
pub use instrument::{Instrumented, RequestTag};
pub use pool::{Pool, PoolJob, PoolKind};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{EndpointLatency, Event, LagSummary, RequestSnapshot};

/// How a probe measures; every worker of a server uses the same.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Interval of the lag timer. 1 ms catches a 5 ms block to within 1 ms and costs
    /// about 1,000 timer wake-ups a second (see BENCHMARKS.md).
    pub lag_resolution: Duration,
    /// How often the sampler reports.
    pub period: Duration,
    /// A poll of an instrumented future longer than this emits a slow-poll event
    /// (asyncio's `slow_callback_duration` is 100 ms).
    pub slow_poll: Duration,
    /// No heartbeat for this long means the loop is stalled.
    pub stall_threshold: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            lag_resolution: Duration::from_millis(1),
            period: Duration::from_millis(100),
            slow_poll: Duration::from_millis(50),
            stall_threshold: Duration::from_millis(10),
        }
    }
}

/// Endpoint-latency map entries beyond this share one `other` bucket, so that a scan
/// of random paths cannot grow memory.
const MAX_ENDPOINTS: usize = 64;
/// Slow-poll events waiting for the sampler; more are dropped and counted.
const EVENT_CAPACITY: usize = 1024;

/// Measures one event loop. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct LoopProbe {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) worker_id: u32,
    pub(crate) config: ProbeConfig,
    /// All `*_ns` atomics count from here.
    pub(crate) epoch: Instant,
    /// When the lag timer last ran on the loop.
    pub(crate) heartbeat_ns: AtomicU64,
    pub(crate) lag: Mutex<LatencyHistogram>,
    /// Start of the task poll running now, 0 when none is (set by the poll hooks).
    pub(crate) poll_started_ns: AtomicU64,
    /// Time spent in finished task polls.
    pub(crate) busy_ns: AtomicU64,
    /// Non-zero while an instrumented request is being polled: the id of that poll.
    pub(crate) request_poll: AtomicU64,
    pub(crate) request_poll_seq: AtomicU64,
    pub(crate) current_request: Mutex<(u64, Option<Arc<str>>)>,
    pub(crate) events_tx: SyncSender<Event>,
    pub(crate) events_rx: Mutex<Receiver<Event>>,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) endpoints: Mutex<HashMap<Arc<str>, LatencyHistogram>>,
    pub(crate) latency_dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        // Never 0, so that 0 can mean "not set".
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    pub(crate) fn ns_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
}

impl LoopProbe {
    /// A probe for the loop of worker `worker_id`.
    pub fn new(worker_id: u32, config: ProbeConfig) -> Self {
        let (events_tx, events_rx) = std::sync::mpsc::sync_channel(EVENT_CAPACITY);
        let epoch = Instant::now();
        Self {
            shared: Arc::new(Shared {
                worker_id,
                config,
                epoch,
                heartbeat_ns: AtomicU64::new(1),
                lag: Mutex::new(LatencyHistogram::new()),
                poll_started_ns: AtomicU64::new(0),
                busy_ns: AtomicU64::new(0),
                request_poll: AtomicU64::new(0),
                request_poll_seq: AtomicU64::new(0),
                current_request: Mutex::new((0, None)),
                events_tx,
                events_rx: Mutex::new(events_rx),
                events_dropped: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                endpoints: Mutex::new(HashMap::new()),
                latency_dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The worker this probe measures.
    pub fn worker_id(&self) -> u32 {
        self.shared.worker_id
    }

    /// The configuration it was made with.
    pub fn config(&self) -> ProbeConfig {
        self.shared.config
    }

    /// Installs the task-poll hooks that measure loop utilization. Call before
    /// `build()`. Without `--cfg tokio_unstable` the hooks do not exist and
    /// utilization reads 0.
    pub fn install_hooks(&self, builder: &mut tokio::runtime::Builder) {
        #[cfg(tokio_unstable)]
        {
            let before = Arc::clone(&self.shared);
            let after = Arc::clone(&self.shared);
            builder
                .on_before_task_poll(move |_| {
                    before
                        .poll_started_ns
                        .store(before.now_ns(), Ordering::Relaxed);
                })
                .on_after_task_poll(move |_| {
                    let started = after.poll_started_ns.swap(0, Ordering::Relaxed);
                    if started != 0 {
                        let now = after.now_ns();
                        after
                            .busy_ns
                            .fetch_add(now.saturating_sub(started), Ordering::Relaxed);
                    }
                });
        }
        #[cfg(not(tokio_unstable))]
        let _ = builder;
    }

    /// Starts the lag timer on the current runtime. Call from inside the loop.
    pub fn spawn_lag_task(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(lag::run(Arc::clone(&self.shared)))
    }

    /// Wraps a request future: times each poll, reports slow ones, counts the request.
    pub fn instrument<F: std::future::Future>(&self, tag: RequestTag, fut: F) -> Instrumented<F> {
        Instrumented::new(Arc::clone(&self.shared), tag, fut)
    }

    /// How long the loop has gone without a heartbeat at `now`, if that is a stall.
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        let s = &self.shared;
        let beat = s.heartbeat_ns.load(Ordering::Relaxed);
        let gap = Duration::from_nanos(s.ns_at(now).saturating_sub(beat));
        (gap > s.config.stall_threshold).then_some(gap)
    }

    /// The request whose poll is holding the loop right now, if any.
    pub fn request_in_poll(&self) -> Option<Arc<str>> {
        let s = &self.shared;
        let id = s.request_poll.load(Ordering::Acquire);
        if id == 0 {
            return None;
        }
        let slot = s.current_request.lock().ok()?;
        (slot.0 == id).then(|| slot.1.clone()).flatten()
    }

    /// Busy time of the loop up to `now`, counting a poll still running.
    pub fn busy_until(&self, now: Instant) -> Duration {
        let s = &self.shared;
        let started = s.poll_started_ns.load(Ordering::Relaxed);
        let busy = s.busy_ns.load(Ordering::Relaxed);
        let running = if started == 0 {
            0
        } else {
            s.ns_at(now).saturating_sub(started)
        };
        Duration::from_nanos(busy + running)
    }

    /// Takes the lag histogram of the period and starts a new one.
    pub fn take_lag(&self) -> LagSummary {
        match self.shared.lag.lock() {
            Ok(mut h) => {
                let summary = h.lag_summary();
                h.reset();
                summary
            }
            Err(_) => LagSummary::default(),
        }
    }

    /// Takes the period's request figures (`per_s` is left for the caller).
    pub fn take_requests(&self) -> RequestSnapshot {
        let s = &self.shared;
        let mut endpoints = Vec::new();
        if let Ok(mut map) = s.endpoints.lock() {
            for (name, h) in map.iter_mut() {
                if h.is_empty() {
                    continue;
                }
                endpoints.push(EndpointLatency {
                    endpoint: name.to_string(),
                    count: h.len(),
                    p50_ms: h.quantile_ms(0.5),
                    p99_ms: h.quantile_ms(0.99),
                    max_ms: h.max_ms(),
                });
                h.reset();
            }
        }
        endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        RequestSnapshot {
            in_flight: s.in_flight.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            per_s: 0.0,
            endpoints,
        }
    }

    /// Takes the events queued since the last call, plus a count of dropped ones.
    pub fn take_events(&self) -> Vec<Event> {
        let s = &self.shared;
        let mut events: Vec<Event> = match s.events_rx.lock() {
            Ok(rx) => rx.try_iter().collect(),
            Err(_) => Vec::new(),
        };
        let dropped = s.events_dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            events.push(Event::EventsDropped {
                worker: s.worker_id,
                count: dropped,
            });
        }
        events
    }

    pub(crate) fn emit(shared: &Shared, event: Event) {
        match shared.events_tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                shared.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn record_latency(shared: &Shared, endpoint: &Arc<str>, latency: Duration) {
        let Ok(mut map) = shared.endpoints.try_lock() else {
            shared.latency_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(h) = map.get_mut(endpoint) {
            h.record(latency);
            return;
        }
        let key: Arc<str> = if map.len() < MAX_ENDPOINTS {
            Arc::clone(endpoint)
        } else {
            Arc::from("other")
        };
        map.entry(key).or_default().record(latency);
    }
}
