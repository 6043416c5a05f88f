//! Instrumentation for a tokio event loop, usable by any tokio application.
//!
//! A [`LoopProbe`] measures one loop (one `current_thread` runtime):
//! - timer-drift **tick lag** (Node's `monitorEventLoopDelay` method) and a heartbeat,
//! - **loop utilization** from tokio's busy-time counter, corrected during stalls
//!   (the counter only moves when the loop parks),
//! - **slow polls** of instrumented futures, named after the request that held the loop,
//! - server-side **request** counts and latency per endpoint,
//! - which threads are the loop's, for per-thread CPU: its runtime hooks register
//!   them in the probe's [`ThreadRegistry`] (see [`threads`]), so a loop thread
//!   counts as the loop whatever it is called.
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
mod endpoints;
mod histogram;
mod instrument;
mod lag;
pub mod metrics;
pub mod pool;
pub mod sampler;
pub mod server;
mod target;
pub mod telemetry;
pub mod threads;

pub use histogram::LatencyHistogram;
pub use instrument::{Instrumented, ProbeLayer, ProbeService, RequestTag};
pub use pool::{Pool, PoolJob, PoolKind};
pub use threads::{ThreadClass, ThreadRegistry};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::protocol::{Event, LagSummary, RequestSnapshot};

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
    /// No heartbeat for this long past the lag timer's interval means the loop is
    /// stalled.
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
    /// All `*_ns` atomics count from here; the TSC clock, cheap enough to read on
    /// every park and poll.
    pub(crate) epoch: quanta::Instant,
    /// When the lag timer last ran on the loop.
    pub(crate) heartbeat_ns: AtomicU64,
    /// Recent intervals in which the loop slept (only the loop thread touches it).
    pub(crate) parks: lag::ParkLog,
    pub(crate) lag: Mutex<LatencyHistogram>,
    /// The runtime of the loop, for its busy-time counter.
    pub(crate) runtime: OnceLock<tokio::runtime::Handle>,
    /// Ids handed to instrumented requests.
    pub(crate) request_seq: LoopCounter,
    /// The id of the request being polled now, 0 when none is.
    pub(crate) request_in_poll: LoopCounter,
    /// The target of the request being polled (or polled last).
    pub(crate) target: target::TargetSlot,
    pub(crate) events_tx: SyncSender<Event>,
    pub(crate) events_rx: Mutex<Receiver<Event>>,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) in_flight: LoopCounter,
    pub(crate) completed: LoopCounter,
    pub(crate) endpoints: endpoints::EndpointTable,
    /// The sampler's view of the endpoint counts at its previous report.
    pub(crate) endpoints_seen: Mutex<Vec<Vec<u64>>>,
    /// The loop's threads and its runtime's blocking threads.
    pub(crate) threads: ThreadRegistry,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        self.ns_at(quanta::Instant::now())
    }

    pub(crate) fn ns_at(&self, t: quanta::Instant) -> u64 {
        // Never 0, so that 0 can mean "not set".
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
}

impl LoopProbe {
    /// A probe for the loop of worker `worker_id`.
    pub fn new(worker_id: u32, config: ProbeConfig) -> Self {
        let (events_tx, events_rx) = std::sync::mpsc::sync_channel(EVENT_CAPACITY);
        let epoch = quanta::Instant::now();
        Self {
            shared: Arc::new(Shared {
                worker_id,
                config,
                epoch,
                heartbeat_ns: AtomicU64::new(0),
                parks: lag::ParkLog::default(),
                lag: Mutex::new(LatencyHistogram::new()),
                runtime: OnceLock::new(),
                request_seq: LoopCounter::default(),
                request_in_poll: LoopCounter::default(),
                target: target::TargetSlot::default(),
                events_tx,
                events_rx: Mutex::new(events_rx),
                events_dropped: AtomicU64::new(0),
                in_flight: LoopCounter::default(),
                completed: LoopCounter::default(),
                endpoints: endpoints::EndpointTable::default(),
                endpoints_seen: Mutex::new(Vec::new()),
                threads: ThreadRegistry::new(),
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

    /// Installs the runtime hooks the probe measures with. Call before `build()`;
    /// they replace the builder's `on_thread_start`, `on_thread_park` and
    /// `on_thread_unpark` callbacks.
    ///
    /// The park hooks let the lag timer tell sleeping from being held: without them
    /// tokio's 1 ms timer rounding adds up to 1 ms to every lag sample. They also
    /// tell the probe's [`ThreadRegistry`] which threads are the loop's: a thread
    /// that parks is a runtime worker ([`ThreadClass::Loop`]); a thread the runtime
    /// starts is a blocking thread ([`ThreadClass::Pool`]) until it parks as one.
    pub fn install_hooks(&self, builder: &mut tokio::runtime::Builder) {
        let park = Arc::clone(&self.shared);
        let unpark = Arc::clone(&self.shared);
        let start = self.shared.threads.clone();
        builder
            .on_thread_start(move || start.register_current_thread(ThreadClass::Pool))
            .on_thread_park(move || {
                // A thread-local look-up once registered; never waits for the sampler.
                park.threads.try_register_current_thread(ThreadClass::Loop);
                park.parks.parked(park.now_ns())
            })
            .on_thread_unpark(move || unpark.parks.unparked(unpark.now_ns()));
    }

    /// The threads this probe knows to be its loop's ([`ThreadClass::Loop`]) and its
    /// runtime's blocking threads ([`ThreadClass::Pool`]); the sampler classes
    /// per-thread CPU by it. An application may register threads of its own here,
    /// e.g. those of its own thread pool, from each of them:
    /// `probe.thread_registry().register_current_thread(ThreadClass::Pool)`.
    pub fn thread_registry(&self) -> &ThreadRegistry {
        &self.shared.threads
    }

    /// Starts the lag timer on the current runtime. Call from inside the loop.
    /// The thread the timer runs on is registered as the loop's.
    pub fn spawn_lag_task(&self) -> tokio::task::JoinHandle<()> {
        let _ = self.shared.runtime.set(tokio::runtime::Handle::current());
        // The loop runs from here on: a block before the timer's first tick is a stall.
        let now = self.shared.now_ns();
        self.shared.heartbeat_ns.store(now, Ordering::Relaxed);
        tokio::spawn(lag::run(Arc::clone(&self.shared)))
    }

    /// Wraps a request future: times each poll, reports slow ones, counts the request.
    pub fn instrument<F: std::future::Future>(&self, tag: RequestTag, fut: F) -> Instrumented<F> {
        Instrumented::new(Arc::clone(&self.shared), tag, fut)
    }

    /// How long the loop has gone without a heartbeat, if that is a stall: longer
    /// than the threshold past the timer's own interval. `None` before the lag
    /// timer first ran (a loop still starting is not stalled).
    pub fn stalled_for(&self) -> Option<Duration> {
        let s = &self.shared;
        let beat = s.heartbeat_ns.load(Ordering::Relaxed);
        if beat == 0 {
            return None;
        }
        let gap = Duration::from_nanos(s.now_ns().saturating_sub(beat));
        (gap > s.config.stall_threshold + s.config.lag_resolution).then_some(gap)
    }

    /// Registers endpoints before traffic arrives, so that a scan of unknown paths
    /// cannot push them into the shared `(other)` latency slot.
    pub fn register_endpoints<'a>(&self, endpoints: impl IntoIterator<Item = &'a str>) {
        for e in endpoints {
            self.shared.endpoints.index(e);
        }
    }

    /// The request whose poll is holding the loop right now, if any.
    pub fn request_in_poll(&self) -> Option<String> {
        match self.shared.request_in_poll.get() {
            0 => None,
            id => self.shared.target.read(id),
        }
    }

    /// Time the loop has spent busy (tokio's counter, updated when the loop parks),
    /// or `None` before the lag task started.
    pub fn busy_total(&self) -> Option<Duration> {
        let rt = self.shared.runtime.get()?;
        Some(rt.metrics().worker_total_busy_duration(0))
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
        let endpoints = match s.endpoints_seen.lock() {
            Ok(mut seen) => s.endpoints.take(&mut seen),
            Err(_) => Vec::new(),
        };
        RequestSnapshot {
            in_flight: s.in_flight.get(),
            completed: s.completed.get(),
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
}

/// A counter written only by the loop thread and read by others: a plain load and
/// store instead of a locked read-modify-write, which the per-request path cannot
/// afford. Writers on several threads would lose updates (never corrupt them): a
/// probe measures one `current_thread` loop.
#[derive(Debug, Default)]
pub(crate) struct LoopCounter(AtomicU64);

impl LoopCounter {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `d` and returns the new value.
    pub(crate) fn add(&self, d: i64) -> u64 {
        let v = self.get().wrapping_add_signed(d);
        self.set(v);
        v
    }
}
