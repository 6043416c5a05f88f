//! An instrumented thread pool for blocking work, with the gauge a profiler needs:
//! size, busy, queued, the oldest job's wait, wait percentiles, completions.
//!
//! Two shapes, after the two runtimes the demo imitates:
//! - [`PoolKind::Eager`]: all threads start at once (libuv's 4-thread pool);
//! - [`PoolKind::Lazy`]: `size` is a limit of tokens and threads start on demand
//!   (anyio's 40-token limiter in front of a thread cache).
//!
//! A job's result comes back through a oneshot that the loop awaits, so a completion
//! waits for the loop exactly as a libuv callback does.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::histogram::{LatencyHistogram, round3};
use super::threads::{ThreadClass, ThreadRegistry};
use crate::protocol::PoolSnapshot;

/// How a pool starts its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Every thread starts with the pool.
    Eager,
    /// Threads start when a job finds no idle one, up to the size. A thread still
    /// watching the queue after its last job (a few µs) is not idle yet.
    Lazy,
}

/// A fixed-size pool of named threads. Cheap to clone.
///
/// The submitting side ([`Pool::run`], called on the event loop) takes no lock:
/// the queue is a lock-free MPMC queue, the gauge is atomic counters, and an idle
/// thread is woken with `unpark` (a futex on Linux). The pool threads and
/// [`Pool::snapshot`] share one mutex, the wait histogram, which the loop never
/// touches. In a [`PoolKind::Lazy`] pool the submitting thread may start a pool
/// thread (a `clone` syscall, no lock of the pool's), at most `size` times.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    size: u32,
    kind: PoolKind,
    queue: SegQueue<Job>,
    /// Jobs submitted so far; a job's sequence number is the count before it.
    submitted: AtomicU64,
    /// Jobs taken off the queue: started, or dropped after a shutdown.
    taken: AtomicU64,
    /// Enqueue time by sequence number, for the oldest queued job's wait.
    enqueued_at: EnqueueRing,
    /// One per thread the pool may start, indexed by the thread's number.
    slots: Box<[Slot]>,
    /// Slots handed out to threads (claimed by compare-and-swap, up to `size`).
    claimed: AtomicU32,
    /// Threads started.
    threads: AtomicU32,
    /// Threads not yet exited (a shutdown ends them).
    live: AtomicU32,
    /// Threads asleep or about to sleep: submit looks for one to wake only then.
    idle: AtomicU32,
    busy: AtomicU32,
    completed: AtomicU64,
    shutdown: AtomicBool,
    /// Origin of the ring's timestamps.
    epoch: Instant,
    /// Taken by the pool threads and the sampler, never by the submitting thread.
    waits: Mutex<LatencyHistogram>,
    /// The pool's threads, each registered by itself as it starts.
    registry: ThreadRegistry,
}

/// How many times an idle pool thread looks at the queue (a `pause` apart, a few
/// microseconds in all) before it sleeps.
const SPIN_BEFORE_SLEEP: u32 = 200;

/// A pool thread's parking place.
struct Slot {
    thread: OnceLock<Thread>,
    /// Set by the thread before it parks; cleared by whoever wakes it.
    sleeping: AtomicBool,
}

/// Runs the work and returns how to deliver its result, so that the gauge counts
/// the job as completed before its caller can see the result.
type Work = Box<dyn FnOnce(Duration) -> Box<dyn FnOnce() + Send> + Send>;

struct Job {
    enqueued: Instant,
    run: Work,
}

/// Enqueue times of the latest [`EnqueueRing::LEN`] jobs by sequence number, so the
/// sampler can read the oldest queued job's without a lock: jobs leave the queue in
/// submission order, so the oldest queued one is number `taken`.
///
/// A slot packs the job's lap around the ring (20 bits, plus one so that a slot
/// never written matches no job) with its enqueue time in µs since the pool's
/// epoch (44 bits, 203 days, compared with wrapping arithmetic) into one atomic
/// word: a reader sees a whole entry and can tell whether it is the job it wants.
/// With more than `LEN` jobs queued, the oldest entries are overwritten and the
/// figure becomes a lower bound: the wait of the job `LEN` places from the back.
struct EnqueueRing {
    slots: Box<[AtomicU64]>,
}

impl EnqueueRing {
    const LEN: u64 = 4096;
    const TIME_BITS: u32 = 44;
    const TIME_MASK: u64 = (1 << Self::TIME_BITS) - 1;
    const LAP_MASK: u64 = (1 << (64 - Self::TIME_BITS)) - 1;

    fn new() -> Self {
        Self {
            slots: (0..Self::LEN).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn tag(seq: u64) -> u64 {
        (seq / Self::LEN + 1) & Self::LAP_MASK
    }

    fn record(&self, seq: u64, micros: u64) {
        let entry = (Self::tag(seq) << Self::TIME_BITS) | (micros & Self::TIME_MASK);
        self.slots[(seq % Self::LEN) as usize].store(entry, Ordering::Relaxed);
    }

    /// Job `seq`'s enqueue time, if its entry is in the ring.
    fn get(&self, seq: u64) -> Option<u64> {
        let entry = self.slots[(seq % Self::LEN) as usize].load(Ordering::Relaxed);
        (entry >> Self::TIME_BITS == Self::tag(seq)).then_some(entry & Self::TIME_MASK)
    }

    /// The enqueue time of the oldest job in `taken..submitted` still in the ring.
    /// A job whose submitter has not written its entry yet is skipped.
    fn oldest(&self, taken: u64, submitted: u64) -> Option<u64> {
        (taken.max(submitted.saturating_sub(Self::LEN))..submitted).find_map(|seq| self.get(seq))
    }

    /// Microseconds from `then` to `now`, both read from this ring's clock.
    fn elapsed_us(then: u64, now: u64) -> u64 {
        let d = now.wrapping_sub(then) & Self::TIME_MASK;
        // An entry written after `now` was read is "just now".
        if d > Self::TIME_MASK / 2 { 0 } else { d }
    }
}

/// What a finished job hands back.
#[derive(Debug)]
pub struct PoolJob<R> {
    /// The closure's result.
    pub value: R,
    /// How long the job waited for a thread.
    pub queued: Duration,
    /// How long it ran.
    pub ran: Duration,
}

/// The pool was shut down, or its thread panicked, before the job completed.
#[derive(Debug, thiserror::Error)]
#[error("the thread pool dropped the job")]
pub struct PoolClosed;

impl Pool {
    /// A pool of `size` threads named `{name}-{n}`.
    pub fn new(name: &str, size: u32, kind: PoolKind) -> Self {
        let size = size.max(1);
        let pool = Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                size,
                kind,
                queue: SegQueue::new(),
                submitted: AtomicU64::new(0),
                taken: AtomicU64::new(0),
                enqueued_at: EnqueueRing::new(),
                slots: (0..size)
                    .map(|_| Slot {
                        thread: OnceLock::new(),
                        sleeping: AtomicBool::new(false),
                    })
                    .collect(),
                claimed: AtomicU32::new(0),
                threads: AtomicU32::new(0),
                live: AtomicU32::new(0),
                idle: AtomicU32::new(0),
                busy: AtomicU32::new(0),
                completed: AtomicU64::new(0),
                shutdown: AtomicBool::new(false),
                epoch: Instant::now(),
                waits: Mutex::new(LatencyHistogram::new()),
                registry: ThreadRegistry::new(),
            }),
        };
        if kind == PoolKind::Eager {
            for _ in 0..size {
                pool.start_thread();
            }
        }
        pool
    }

    /// The most jobs that run at once.
    pub fn size(&self) -> u32 {
        self.inner.size
    }

    /// The pool's live threads, each registered as [`ThreadClass::Pool`] by itself
    /// before it takes a job (whatever its name), so that its CPU counts as the
    /// pool's.
    pub fn thread_registry(&self) -> &ThreadRegistry {
        &self.inner.registry
    }

    /// Runs `f` on a pool thread; resolves when it finished and the caller's loop
    /// polled the completion. Takes no lock on the calling thread.
    pub async fn run<F, R>(&self, f: F) -> Result<PoolJob<R>, PoolClosed>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |queued| {
            let start = Instant::now();
            let value = f();
            let job = PoolJob {
                value,
                queued,
                ran: start.elapsed(),
            };
            Box::new(move || {
                let _ = tx.send(job);
            })
        }));
        rx.await.map_err(|_| PoolClosed)
    }

    /// Queues a job and wakes or starts a thread for it. Lock-free: atomics, the
    /// queue's push, and at most one `unpark` or (Lazy) one thread start.
    fn submit(&self, run: Work) {
        let inner = &*self.inner;
        if inner.shutdown.load(Ordering::SeqCst) {
            // Dropping the job drops its sender: the caller sees PoolClosed.
            return;
        }
        let enqueued = Instant::now();
        let seq = inner.submitted.fetch_add(1, Ordering::SeqCst);
        inner.enqueued_at.record(seq, inner.micros(enqueued));
        inner.queue.push(Job { enqueued, run });
        // Pairs with the fence of a thread going to sleep: either it sees this job
        // or this sees it asleep (or idle, about to be).
        fence(Ordering::SeqCst);
        if !inner.wake_one() && inner.kind == PoolKind::Lazy {
            // No idle thread: start one, unless all `size` run.
            self.start_thread();
        }
        // Pairs with the last thread leaving after a shutdown: either it drops this
        // job or this sees it gone and drops it, so no caller waits forever.
        if inner.shutdown.load(Ordering::SeqCst) && inner.live.load(Ordering::SeqCst) == 0 {
            inner.drain();
        }
    }

    /// Claims a slot and starts its thread; false when all `size` are claimed.
    fn start_thread(&self) -> bool {
        let inner = &self.inner;
        let mut n = inner.claimed.load(Ordering::SeqCst);
        loop {
            if n >= inner.size {
                return false;
            }
            match inner
                .claimed
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(current) => n = current,
            }
        }
        inner.live.fetch_add(1, Ordering::SeqCst);
        let worker = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{n}", inner.name))
            .spawn(move || worker.work(n as usize));
        if spawned.is_ok() {
            inner.threads.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            inner.live.fetch_sub(1, Ordering::SeqCst);
            // Give the slot back if no later one was claimed meanwhile.
            let _ = inner
                .claimed
                .compare_exchange(n + 1, n, Ordering::SeqCst, Ordering::SeqCst);
            false
        }
    }

    /// The gauge now: busy and queued right now, waits since the previous call.
    pub fn snapshot(&self) -> PoolSnapshot {
        let inner = &*self.inner;
        // `taken` first: it never passes `submitted`, so queued never underflows.
        let taken = inner.taken.load(Ordering::SeqCst);
        let submitted = inner.submitted.load(Ordering::SeqCst);
        let queued = submitted.saturating_sub(taken);
        let oldest = if queued == 0 {
            None
        } else {
            inner.enqueued_at.oldest(taken, submitted)
        };
        let now = inner.micros(Instant::now());
        let oldest_ms = oldest.map_or(0.0, |t| EnqueueRing::elapsed_us(t, now) as f64 / 1000.0);
        let (p50, p99, max) = {
            let mut waits = inner.waits.lock().unwrap_or_else(PoisonError::into_inner);
            let r = (
                waits.quantile_ms(0.5),
                waits.quantile_ms(0.99),
                waits.max_ms(),
            );
            waits.reset();
            r
        };
        PoolSnapshot {
            size: inner.size,
            threads: inner.threads.load(Ordering::Relaxed),
            busy: inner.busy.load(Ordering::Relaxed),
            queued: queued.min(u32::MAX as u64) as u32,
            oldest_wait_ms: round3(oldest_ms),
            // A job still waiting has waited at least this long: count it too.
            wait_ms_max: round3(max.max(oldest_ms)),
            wait_ms_p50: round3(p50),
            wait_ms_p99: round3(p99),
            completed: inner.completed.load(Ordering::Relaxed),
            completed_per_s: 0.0,
        }
    }

    /// Stops the threads once the queue is empty. Jobs submitted afterwards are
    /// dropped: their callers see [`PoolClosed`].
    pub fn shutdown(&self) {
        let inner = &*self.inner;
        inner.shutdown.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for slot in inner.claimed_slots() {
            inner.wake(slot);
        }
    }
}

impl Inner {
    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn claimed_slots(&self) -> &[Slot] {
        let n = (self.claimed.load(Ordering::SeqCst) as usize).min(self.slots.len());
        &self.slots[..n]
    }

    /// Wakes one sleeping thread, if any; true if it did.
    fn wake_one(&self) -> bool {
        if self.idle.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.claimed_slots().iter().any(|slot| self.wake(slot))
    }

    /// Wakes the slot's thread if it sleeps; true if this call woke it.
    fn wake(&self, slot: &Slot) -> bool {
        if !slot.sleeping.load(Ordering::SeqCst)
            || slot
                .sleeping
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        self.idle.fetch_sub(1, Ordering::SeqCst);
        if let Some(thread) = slot.thread.get() {
            thread.unpark();
        }
        true
    }

    fn take(&self) -> Option<Job> {
        let job = self.queue.pop()?;
        self.taken.fetch_add(1, Ordering::SeqCst);
        Some(job)
    }

    /// Drops every queued job (after a shutdown, once no thread is left).
    fn drain(&self) {
        while self.take().is_some() {}
    }

    fn work(&self, n: usize) {
        self.registry.register_current_thread(ThreadClass::Pool);
        let slot = &self.slots[n];
        let _ = slot.thread.set(std::thread::current());
        // Busy from the job it takes until it finds none: a thread between two
        // jobs (delivering one, taking the next) is not idle, so a sample never
        // reads a free thread with jobs queued.
        let mut busy = false;
        loop {
            if let Some(job) = self.take() {
                if !busy {
                    self.busy.fetch_add(1, Ordering::Relaxed);
                    busy = true;
                }
                self.execute(job);
                continue;
            }
            if busy {
                self.busy.fetch_sub(1, Ordering::Relaxed);
                busy = false;
            }
            // A burst's next job usually comes within microseconds: look a little
            // longer before sleeping, so that its submit needs no wake-up syscall.
            if self.spin_for_work() {
                continue;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                    // The last one out drops what a racing submit queued.
                    fence(Ordering::SeqCst);
                    self.drain();
                }
                return;
            }
            // Announce the sleep, then look again: a submit that ran before the
            // announcement is seen here, one after it sees this thread asleep.
            self.idle.fetch_add(1, Ordering::SeqCst);
            slot.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.queue.is_empty() || self.shutdown.load(Ordering::SeqCst) {
                // Withdraw, unless a waker took this thread already (its unpark
                // then leaves a token that the next park consumes).
                if slot.sleeping.swap(false, Ordering::SeqCst) {
                    self.idle.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            while slot.sleeping.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }

    /// Watches the queue for up to [`SPIN_BEFORE_SLEEP`] spins; true if a job came.
    fn spin_for_work(&self) -> bool {
        for _ in 0..SPIN_BEFORE_SLEEP {
            if !self.queue.is_empty() {
                return true;
            }
            if self.shutdown.load(Ordering::Relaxed) {
                return false;
            }
            std::hint::spin_loop();
        }
        false
    }

    fn execute(&self, job: Job) {
        let queued = job.enqueued.elapsed();
        self.waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(queued);
        // A panicking job drops its sender, so its caller sees PoolClosed; the
        // thread lives on.
        let deliver = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(queued)));
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Ok(deliver) = deliver {
            deliver();
        }
    }
}

#[cfg(test)]
mod tests;
