//! Instrumentation for a tokio runtime, usable by any tokio application.
//!
//! [`Probe`] is the entry point for a service: [`Probe::builder`] installs the hooks
//! on a runtime builder, serves telemetry and samples from threads of its own;
//! [`Probe::layer`] instruments requests. Under it, a [`LoopProbe`] measures one
//! runtime, of either flavor:
//! - `current_thread` (a loop): timer-drift **tick lag** (Node's
//!   `monitorEventLoopDelay` method) with a heartbeat, so a sampler outside the loop
//!   sees a stall while it lasts; **loop utilization** from tokio's busy-time
//!   counter, corrected during stalls;
//! - `multi_thread`: per worker thread (a slot each, see `slots`), its busy share from
//!   its park hooks, its task polls and their durations from the poll hooks, and a
//!   **live stall** when its running poll lasts past the threshold; runtime-wide, the
//!   lag timer's lateness is the **scheduling delay**, and tokio-metrics'
//!   `RuntimeMonitor` gives the queues and the blocking pool;
//! - both: **slow polls** of instrumented futures, named after the request that
//!   held the loop or worker; server-side **request** counts and latency per
//!   endpoint; which threads are the runtime's, for per-thread CPU: its hooks
//!   register them in the probe's [`ThreadRegistry`] (see [`threads`]), whatever
//!   they are called.
//!
//! The [`sampler`] reads it from its own thread. Nothing here blocks the runtime:
//! its side only touches atomics, thread-locals, `try_lock`s and `try_send`s, and
//! counts what it had to drop.
//!
//! By hand, for a loop of your own:
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
mod install;
mod instrument;
mod lag;
pub mod metrics;
pub mod pool;
pub mod sampler;
pub mod server;
mod slots;
mod target;
pub mod telemetry;
pub mod threads;

pub use histogram::LatencyHistogram;
pub use install::{DEFAULT_TELEMETRY, InstallError, Probe, ProbeBuilder};
pub use instrument::{Instrumented, MakeProbeService, ProbeLayer, ProbeService, RequestTag};
pub use pool::{Pool, PoolJob, PoolKind};
pub use threads::{ThreadClass, ThreadRegistry};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::protocol::{Event, LagSummary, RequestSnapshot};
use histogram::round3;

/// How a probe measures; every worker of a server uses the same.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Interval of the lag timer. 1 ms catches a 5 ms block to within 1 ms and costs
    /// about 1,000 timer wake-ups a second (see BENCHMARKS.md). On a multi-thread
    /// runtime the timer measures the scheduling delay only (stalls come from the
    /// poll hooks), and [`Probe`] runs it at [`SCHEDULING_DELAY_RESOLUTION`] at least.
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

/// The least interval of the lag timer on a multi-thread runtime, where it samples
/// the scheduling delay: a tenth of the wake-ups of a 1 ms timer, and no stall is
/// missed (a worker's stall is seen in its polls).
pub const SCHEDULING_DELAY_RESOLUTION: Duration = Duration::from_millis(10);

/// Slow-poll events waiting for the sampler; more are dropped and counted.
const EVENT_CAPACITY: usize = 1024;

/// Measures one tokio runtime: its loop (`current_thread`) or each of its workers
/// (`multi_thread`). Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct LoopProbe {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) worker_id: u32,
    pub(crate) config: ProbeConfig,
    /// All `*_ns` atomics count from here, a raw reading of [`clock`]: the TSC,
    /// cheap enough to read on every park and poll.
    pub(crate) epoch: u64,
    /// When the lag timer last ran.
    pub(crate) heartbeat_ns: AtomicU64,
    pub(crate) lag: Mutex<LatencyHistogram>,
    /// Every lag sample since the start, never reset.
    pub(crate) lag_total: endpoints::Buckets,
    /// Time the loop spent in stalls that ended, in ns: each heartbeat gap longer
    /// than the stall threshold past the timer's interval, added when it closes.
    pub(crate) stalled_ns: AtomicU64,
    /// The measured runtime, learnt by the hooks or the lag task.
    pub(crate) runtime: OnceLock<tokio::runtime::Handle>,
    /// Ids handed to instrumented requests.
    pub(crate) request_seq: AtomicU64,
    /// Each worker thread's state: parks, polls, the request it holds, its requests.
    pub(crate) slots: slots::WorkerSlots,
    pub(crate) events_tx: SyncSender<Event>,
    pub(crate) events_rx: Mutex<Receiver<Event>>,
    pub(crate) events_dropped: AtomicU64,
    /// The sampler's view of each slot's endpoint counts at its previous report.
    pub(crate) endpoints_seen: Mutex<Vec<Vec<Vec<u64>>>>,
    /// The runtime's worker threads and its blocking threads.
    pub(crate) threads: ThreadRegistry,
    /// Whether the lag task was started.
    pub(crate) lag_spawned: std::sync::atomic::AtomicBool,
    /// See [`Shared::times_polls`].
    #[cfg(tokio_unstable)]
    pub(crate) poll_hooks: std::sync::atomic::AtomicU8,
}

impl Shared {
    /// Keeps the handle of the runtime the calling thread runs in, the first time.
    pub(crate) fn learn_runtime(&self) {
        if self.runtime.get().is_none()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let _ = self.runtime.set(handle);
        }
    }

    /// Whether the poll hooks time task polls: on a multi-thread runtime, whose
    /// workers' stalls, poll durations and culprits come from them. A
    /// `current_thread` loop is measured by its lag timer's heartbeat and its
    /// requests time their own polls, so there the hooks return at once (two clock
    /// reads a task poll saved). Decided at the first hook call, inside the runtime.
    #[cfg(tokio_unstable)]
    #[inline]
    pub(crate) fn times_polls(&self) -> bool {
        match self.poll_hooks.load(Ordering::Relaxed) {
            YES => true,
            NO | OFF => false,
            _ => self.decide_poll_timing(),
        }
    }

    /// [`times_polls`](Self::times_polls) at its first call inside the runtime.
    #[cfg(tokio_unstable)]
    #[cold]
    #[inline(never)]
    fn decide_poll_timing(&self) -> bool {
        self.learn_runtime();
        let decided = match self.runtime.get().map(|h| h.runtime_flavor()) {
            Some(tokio::runtime::RuntimeFlavor::MultiThread) => YES,
            Some(_) => NO,
            None => UNKNOWN,
        };
        self.poll_hooks.store(decided, Ordering::Relaxed);
        decided == YES
    }

    /// Now, in ns since the probe began; never 0, so that 0 can mean "not set".
    pub(crate) fn now_ns(&self) -> u64 {
        let clock = clock();
        // A raw reading scaled once, as a difference: no conversion through
        // `Instant` or `Duration` on every park and poll.
        clock.delta_as_nanos(self.epoch, clock.raw()) + 1
    }
}

/// The process's clock: the TSC where it is invariant (else the monotonic clock),
/// calibrated once, at the first probe.
fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// [`Shared::poll_hooks`]: not decided yet, the hooks time polls, they do not (a
/// `current_thread` loop), or they were turned off ([`LoopProbe::set_poll_timing`]).
#[cfg(tokio_unstable)]
const UNKNOWN: u8 = 0;
#[cfg(tokio_unstable)]
const YES: u8 = 1;
#[cfg(tokio_unstable)]
const NO: u8 = 2;
#[cfg(tokio_unstable)]
const OFF: u8 = 3;

impl LoopProbe {
    /// Turns the poll hooks' timing of task polls off, or back on (its default). While
    /// off, the hooks return at once: a multi-thread runtime's workers show no poll
    /// durations, live stalls or culprits, and requests time their own polls. Made
    /// for a benchmark that switches the probe's per-request work on and off inside
    /// one process.
    #[doc(hidden)]
    #[cfg(tokio_unstable)]
    pub fn set_poll_timing(&self, on: bool) {
        // On: decided again from the runtime's flavor at the next hook call.
        let state = if on { UNKNOWN } else { OFF };
        self.shared.poll_hooks.store(state, Ordering::Relaxed);
        if !on {
            // Polls running now never end for the hooks: not left running (they
            // would read as stalls). A hook that read the state just before the
            // store may still mark a poll as started, until a poll after the next
            // switch on replaces it.
            self.shared.slots.forget_polls();
        }
    }

    /// A probe for the loop of worker `worker_id`.
    pub fn new(worker_id: u32, config: ProbeConfig) -> Self {
        let (events_tx, events_rx) = std::sync::mpsc::sync_channel(EVENT_CAPACITY);
        let epoch = clock().raw();
        Self {
            shared: Arc::new(Shared {
                worker_id,
                config,
                epoch,
                heartbeat_ns: AtomicU64::new(0),
                lag: Mutex::new(LatencyHistogram::new()),
                lag_total: endpoints::Buckets::new(),
                stalled_ns: AtomicU64::new(0),
                runtime: OnceLock::new(),
                request_seq: AtomicU64::new(0),
                slots: slots::WorkerSlots::default(),
                events_tx,
                events_rx: Mutex::new(events_rx),
                events_dropped: AtomicU64::new(0),
                endpoints_seen: Mutex::new(Vec::new()),
                threads: ThreadRegistry::new(),
                lag_spawned: std::sync::atomic::AtomicBool::new(false),
                #[cfg(tokio_unstable)]
                poll_hooks: std::sync::atomic::AtomicU8::new(0),
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
    /// `on_thread_unpark` callbacks (and, with `--cfg tokio_unstable`, its
    /// `on_before_task_poll` and `on_after_task_poll` ones).
    ///
    /// The park hooks tell the probe when each worker thread sleeps: its busy share,
    /// and the lag timer's correction for tokio's 1 ms timer rounding. The poll
    /// hooks time every task poll per worker, so a worker held by one task is seen
    /// while it is held. They also tell the probe's [`ThreadRegistry`] which threads
    /// are the runtime's: a thread that parks is a worker ([`ThreadClass::Loop`]); a
    /// thread the runtime starts is a blocking thread ([`ThreadClass::Pool`]) until
    /// it parks as a worker. None of them waits for anything.
    pub fn install_hooks(&self, builder: &mut tokio::runtime::Builder) {
        let start = Arc::clone(&self.shared);
        let park = Arc::clone(&self.shared);
        let unpark = Arc::clone(&self.shared);
        builder
            .on_thread_start(move || {
                start.learn_runtime();
                start.threads.register_current_thread(ThreadClass::Pool)
            })
            .on_thread_park(move || {
                park.learn_runtime();
                // A thread-local look-up once registered; never waits for the sampler.
                park.threads.try_register_current_thread(ThreadClass::Loop);
                if let Some(slot) = park.slots.current() {
                    slot.park(park.now_ns());
                }
            })
            .on_thread_unpark(move || {
                if let Some(slot) = unpark.slots.current() {
                    slot.unpark(unpark.now_ns());
                }
            });
        #[cfg(tokio_unstable)]
        {
            let before = Arc::clone(&self.shared);
            let after = Arc::clone(&self.shared);
            let stall_ns = self.shared.config.stall_threshold.as_nanos() as u64;
            builder
                .on_before_task_poll(move |_| {
                    if before.times_polls()
                        && let Some(slot) = before.slots.current()
                    {
                        slot.poll_started(before.now_ns());
                    }
                })
                .on_after_task_poll(move |_| {
                    if after.times_polls()
                        && let Some(slot) = after.slots.current_if_claimed()
                    {
                        let now = after.now_ns();
                        let held = slot.poll_ended(now, stall_ns);
                        after.slots.time_deferred(slot, now);
                        // A request polled in this task poll is its culprit.
                        let id = slot.request_in_poll.load(Ordering::Relaxed);
                        if id != 0 {
                            slot.request_in_poll.store(0, Ordering::Relaxed);
                            instrument::report_slow_poll(
                                &after,
                                Some(slot),
                                slots::RequestId(id),
                                held.unwrap_or(0),
                                now,
                            );
                        }
                    }
                });
        }
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
        let resolution = self.shared.config.lag_resolution;
        self.start_lag(&tokio::runtime::Handle::current(), resolution)
    }

    /// Starts the lag timer on `handle`, every `resolution`; the runtime is the
    /// probe's from here on.
    pub(crate) fn start_lag(
        &self,
        handle: &tokio::runtime::Handle,
        resolution: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.shared.runtime.set(handle.clone());
        self.shared.lag_spawned.store(true, Ordering::Release);
        // The loop runs from here on: a block before the timer's first tick is a stall.
        let now = self.shared.now_ns();
        self.shared.heartbeat_ns.store(now, Ordering::Relaxed);
        handle.spawn(lag::run(Arc::clone(&self.shared), resolution))
    }

    /// Wraps a request future: times each poll, reports slow ones, counts the request.
    pub fn instrument<F: std::future::Future>(&self, tag: RequestTag, fut: F) -> Instrumented<F> {
        let (method, target, path, query) = tag.parts();
        let arrival =
            instrument::Arrival::new(Arc::clone(&self.shared), method, target, path, query);
        Instrumented::new(arrival, fut)
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

    /// Time the loop has spent stalled since the probe started, the stall going on
    /// now included. Read in the order the lag timer writes (the stalls that ended,
    /// then the heartbeat), so a stall that ends meanwhile is never counted twice; it
    /// may be missed once, so a reader keeps the figure it reported last if larger.
    pub(crate) fn stalled_total(&self) -> Duration {
        let done = self.shared.stalled_ns.load(Ordering::Acquire);
        Duration::from_nanos(done) + self.stalled_for().unwrap_or_default()
    }

    /// Every lag sample since the probe started.
    pub(crate) fn lag_total(&self) -> crate::protocol::DurationHistogram {
        self.shared.lag_total.histogram()
    }

    /// Registers endpoints before traffic arrives, so that a scan of unknown paths
    /// cannot push them into the shared `(other)` latency slot. Call before the
    /// runtime runs requests.
    pub fn register_endpoints<'a>(&self, endpoints: impl IntoIterator<Item = &'a str>) {
        for e in endpoints {
            self.shared.slots.register(e);
        }
    }

    /// The request whose poll is holding the loop (or a worker) right now, if any.
    pub fn request_in_poll(&self) -> Option<String> {
        let slots = &self.shared.slots;
        slots.iter().find_map(|slot| slots.request_in(slot))
    }

    /// The measured runtime's flavor, once the probe has seen the runtime run.
    pub fn flavor(&self) -> Option<tokio::runtime::RuntimeFlavor> {
        Some(self.shared.runtime.get()?.runtime_flavor())
    }

    /// The measured runtime, once the probe has seen it run.
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.shared.runtime.get().cloned()
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

    /// Takes the period's request figures of every worker thread together
    /// (`per_s` is left for the caller).
    pub fn take_requests(&self) -> RequestSnapshot {
        let mut out = RequestSnapshot::default();
        let mut seen = self
            .shared
            .endpoints_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in self.shared.slots.iter() {
            let r = requests_of(slot, &mut seen);
            out.in_flight += r.in_flight;
            out.completed += r.completed;
            for e in r.endpoints {
                match out.endpoints.iter_mut().find(|o| o.endpoint == e.endpoint) {
                    Some(o) => {
                        let n = (o.count + e.count) as f64;
                        o.p50_ms =
                            round3((o.p50_ms * o.count as f64 + e.p50_ms * e.count as f64) / n);
                        o.p99_ms = o.p99_ms.max(e.p99_ms);
                        o.max_ms = o.max_ms.max(e.max_ms);
                        o.count += e.count;
                    }
                    None => out.endpoints.push(e),
                }
            }
        }
        out.endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }

    /// Takes the period's request figures of the worker thread in slot `index`.
    pub(crate) fn take_requests_of(&self, index: usize) -> RequestSnapshot {
        let mut seen = self
            .shared
            .endpoints_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.shared.slots.get(index) {
            Some(slot) => requests_of(slot, &mut seen),
            None => RequestSnapshot::default(),
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

/// A slot's request figures since the previous call; `seen` holds every slot's
/// endpoint counts as the reader last saw them.
fn requests_of(slot: &slots::WorkerSlot, seen: &mut Vec<Vec<Vec<u64>>>) -> RequestSnapshot {
    let i = slot.index as usize;
    if seen.len() <= i {
        seen.resize_with(i + 1, Vec::new);
    }
    // Read before the latencies: a request answered meanwhile is then not counted
    // in flight and answered at once.
    let in_flight = slot.in_flight();
    let endpoints = slot.endpoints.take(&mut seen[i]);
    RequestSnapshot {
        in_flight,
        // Every answered request's latency is counted once: their sum is the count.
        completed: seen[i].iter().flatten().sum(),
        per_s: 0.0,
        endpoints,
    }
}
