//! Time the event loop spends submitting a job to the probe's thread pool, measured
//! on the loop thread: the lock-free pool (`loopscope::probe::Pool`) against the
//! mutex pool it replaced, kept below only for this comparison. Figures are printed.
//!
//! `cargo bench --bench pool_submit` (`-- ROUNDS`, default 6). Results go in
//! BENCHMARKS.md.
//!
//! Load: a `current_thread` runtime submits bursts of 64 jobs that each spin 20 µs
//! and awaits them, for 1 s per round; a sampler thread calls `snapshot()` every
//! 1 ms; the pool's threads are busy. Setups: an Eager 4-thread pool (node), a Lazy
//! 40-thread one (fastapi), the Eager one with empty jobs (pool threads always at
//! the queue), and the Eager one with every thread on one CPU. Timed: the first poll of `run`'s future, which
//! is where `submit` runs (it also creates the oneshot and boxes the job, the same
//! work for both pools). Rounds alternate old and new on the same machine.
//!
//! Wall time inside `submit` also counts the loop thread being descheduled, which
//! on 2 cores with busy pool threads happens to both pools. So each submit is also
//! classed by the loop thread's context switches (`getrusage(RUSAGE_THREAD)`, read
//! outside the timed span): a *voluntary* switch means the thread blocked (a
//! contended mutex's futex wait), an *involuntary* one that it was preempted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use loopscope::probe::{Pool, PoolKind};

/// The mutex pool as it was before the lock-free one (only what the bench needs).
mod old {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};

    use loopscope::probe::{LatencyHistogram, PoolKind};
    use loopscope::protocol::PoolSnapshot;

    #[derive(Clone)]
    pub struct Pool {
        inner: Arc<Inner>,
    }

    struct Inner {
        name: String,
        size: u32,
        state: Mutex<State>,
        work_ready: Condvar,
        busy: AtomicU32,
        threads: AtomicU32,
        completed: AtomicU64,
        waits: Mutex<LatencyHistogram>,
    }

    struct State {
        queue: VecDeque<Job>,
        idle: usize,
        threads: u32,
        shutdown: bool,
    }

    type Work = Box<dyn FnOnce(Duration) -> Box<dyn FnOnce() + Send> + Send>;

    struct Job {
        enqueued: Instant,
        run: Work,
    }

    pub struct PoolJob<R> {
        pub value: R,
    }

    impl Pool {
        pub fn new(name: &str, size: u32, kind: PoolKind) -> Self {
            let size = size.max(1);
            let pool = Self {
                inner: Arc::new(Inner {
                    name: name.to_string(),
                    size,
                    state: Mutex::new(State {
                        queue: VecDeque::new(),
                        idle: 0,
                        threads: 0,
                        shutdown: false,
                    }),
                    work_ready: Condvar::new(),
                    busy: AtomicU32::new(0),
                    threads: AtomicU32::new(0),
                    completed: AtomicU64::new(0),
                    waits: Mutex::new(LatencyHistogram::new()),
                }),
            };
            if kind == PoolKind::Eager {
                let mut state = pool.inner.lock();
                for _ in 0..size {
                    pool.start_thread(&mut state);
                }
            }
            pool
        }

        pub async fn run<F, R>(&self, f: F) -> Result<PoolJob<R>, ()>
        where
            F: FnOnce() -> R + Send + 'static,
            R: Send + 'static,
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.submit(Box::new(move |_queued| {
                let value = f();
                Box::new(move || {
                    let _ = tx.send(PoolJob { value });
                })
            }));
            rx.await.map_err(|_| ())
        }

        fn submit(&self, run: Work) {
            let mut state = self.inner.lock();
            state.queue.push_back(Job {
                enqueued: Instant::now(),
                run,
            });
            if state.queue.len() > state.idle && state.threads < self.inner.size {
                self.start_thread(&mut state);
            }
            drop(state);
            self.inner.work_ready.notify_one();
        }

        fn start_thread(&self, state: &mut State) {
            let n = state.threads;
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", self.inner.name))
                .spawn(move || inner.work());
            if spawned.is_ok() {
                state.threads += 1;
                self.inner.threads.store(state.threads, Ordering::Relaxed);
            }
        }

        pub fn snapshot(&self) -> PoolSnapshot {
            let now = Instant::now();
            let (queued, oldest) = {
                let state = self.inner.lock();
                let oldest = state
                    .queue
                    .front()
                    .map(|j| now.saturating_duration_since(j.enqueued));
                (state.queue.len() as u32, oldest)
            };
            let (p50, p99, max) = {
                let mut waits = self
                    .inner
                    .waits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let r = (
                    waits.quantile_ms(0.5),
                    waits.quantile_ms(0.99),
                    waits.max_ms(),
                );
                waits.reset();
                r
            };
            let oldest_ms = oldest.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            PoolSnapshot {
                size: self.inner.size,
                threads: self.inner.threads.load(Ordering::Relaxed),
                busy: self.inner.busy.load(Ordering::Relaxed),
                queued,
                oldest_wait_ms: oldest_ms,
                wait_ms_max: max.max(oldest_ms),
                wait_ms_p50: p50,
                wait_ms_p99: p99,
                completed: self.inner.completed.load(Ordering::Relaxed),
                completed_per_s: 0.0,
            }
        }

        pub fn shutdown(&self) {
            self.inner.lock().shutdown = true;
            self.inner.work_ready.notify_all();
        }
    }

    impl Inner {
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn work(&self) {
            loop {
                let job = {
                    let mut state = self.lock();
                    loop {
                        if let Some(job) = state.queue.pop_front() {
                            break job;
                        }
                        if state.shutdown {
                            return;
                        }
                        state.idle += 1;
                        state = self
                            .work_ready
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                        state.idle -= 1;
                    }
                };
                self.busy.fetch_add(1, Ordering::Relaxed);
                let queued = job.enqueued.elapsed();
                self.waits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(queued);
                let deliver =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(queued)));
                self.busy.fetch_sub(1, Ordering::Relaxed);
                self.completed.fetch_add(1, Ordering::Relaxed);
                if let Ok(deliver) = deliver {
                    deliver();
                }
            }
        }
    }
}

/// What the scenario needs of a pool.
trait BenchPool: Clone + Send + Sync + 'static {
    fn new(name: &str, size: u32, kind: PoolKind) -> Self;
    /// Runs a job that spins `us` µs; resolves true when it completed.
    fn spin(&self, us: u64) -> impl Future<Output = bool> + 'static;
    fn sample(&self) -> u32;
    fn shutdown(&self);
}

impl BenchPool for Pool {
    fn new(name: &str, size: u32, kind: PoolKind) -> Self {
        Pool::new(name, size, kind)
    }
    fn spin(&self, us: u64) -> impl Future<Output = bool> + 'static {
        let pool = self.clone();
        async move {
            let done = pool.run(move || spin_for(us)).await;
            done.map(|j| std::hint::black_box(j.value)).is_ok()
        }
    }
    fn sample(&self) -> u32 {
        self.snapshot().queued
    }
    fn shutdown(&self) {
        Pool::shutdown(self)
    }
}

impl BenchPool for old::Pool {
    fn new(name: &str, size: u32, kind: PoolKind) -> Self {
        old::Pool::new(name, size, kind)
    }
    fn spin(&self, us: u64) -> impl Future<Output = bool> + 'static {
        let pool = self.clone();
        async move {
            let done = pool.run(move || spin_for(us)).await;
            done.map(|j| std::hint::black_box(j.value)).is_ok()
        }
    }
    fn sample(&self) -> u32 {
        self.snapshot().queued
    }
    fn shutdown(&self) {
        old::Pool::shutdown(self)
    }
}

fn spin_for(us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(us);
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    x
}

const BURST: usize = 64;
const JOB_US: u64 = 20;
const ROUND: Duration = Duration::from_secs(1);

/// Context switches of the calling thread so far: (voluntary, involuntary).
fn switches() -> (i64, i64) {
    // SAFETY: getrusage writes into the struct we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        (u.ru_nvcsw as i64, u.ru_nivcsw as i64)
    }
}

/// Submit times of one round, and how many submits blocked or were preempted.
struct Stats {
    ns: Histogram<u64>,
    /// Submits during which the loop thread was not preempted: the submit path's own
    /// cost, lock waits included.
    unpreempted_ns: Histogram<u64>,
    blocked: u64,
    preempted: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            ns: Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
            unpreempted_ns: Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
            blocked: 0,
            preempted: 0,
        }
    }

    fn add(&mut self, other: &Stats) {
        self.ns.add(&other.ns).unwrap();
        self.unpreempted_ns.add(&other.unpreempted_ns).unwrap();
        self.blocked += other.blocked;
        self.preempted += other.preempted;
    }
}

/// One round on a fresh pool.
fn round<P: BenchPool>(size: u32, kind: PoolKind, job_us: u64) -> Stats {
    let pool = P::new("bench-pool", size, kind);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(pool.sample());
                    n += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                n
            })
            .unwrap()
    };
    let mut stats = Stats::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loop_pool = pool.clone();
    let stats_ref = &mut stats;
    rt.block_on(async move {
        let end = Instant::now() + ROUND;
        let mut pending: Vec<Pin<Box<dyn Future<Output = bool>>>> = Vec::with_capacity(BURST);
        while Instant::now() < end {
            for _ in 0..BURST {
                let mut job: Pin<Box<dyn Future<Output = bool>>> = Box::pin(loop_pool.spin(job_us));
                let (vol0, invol0) = switches();
                let t0 = Instant::now();
                let first = std::future::poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await;
                let took = t0.elapsed();
                let (vol1, invol1) = switches();
                stats_ref.ns.saturating_record(took.as_nanos() as u64);
                if invol1 == invol0 {
                    stats_ref
                        .unpreempted_ns
                        .saturating_record(took.as_nanos() as u64);
                }
                stats_ref.blocked += u64::from(vol1 > vol0);
                stats_ref.preempted += u64::from(invol1 > invol0);
                match first {
                    Poll::Ready(ok) => assert!(ok),
                    Poll::Pending => pending.push(job),
                }
            }
            for job in pending.drain(..) {
                // Bounded: a lost job would otherwise hang the bench.
                let done = tokio::time::timeout(Duration::from_secs(10), job).await;
                assert_eq!(done, Ok(true), "a job did not complete");
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    assert!(sampler.join().unwrap() > 0);
    pool.shutdown();
    stats
}

/// The CPUs this thread may run on.
fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts the calling thread (and threads it starts later) to `cpus`.
fn set_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn line(label: &str, s: &Stats) {
    let (h, u) = (&s.ns, &s.unpreempted_ns);
    println!(
        "  {label:<26} n={:>6}  p50 {:>5.2}  p99 {:>6.2}  p99.9 {:>6.1}  max {:>6.0} µs  \
         | blocked {:>3}  preempted {:>5} | not preempted: p99 {:>5.2}  p99.9 {:>5.1}  max {:>5.0} µs",
        h.len(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        s.blocked,
        s.preempted,
        us(u.value_at_quantile(0.99)),
        us(u.value_at_quantile(0.999)),
        us(u.max()),
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse().ok())
        .unwrap_or(6);
    let all_cpus = affinity();
    for (label, size, kind, job_us, one_cpu) in [
        ("node: Eager, 4 threads", 4, PoolKind::Eager, JOB_US, false),
        (
            "fastapi: Lazy, 40 threads",
            40,
            PoolKind::Lazy,
            JOB_US,
            false,
        ),
        // Empty jobs: the pool threads go back to the queue at once, so the old
        // pool's mutex is contended all the time.
        ("node, empty jobs", 4, PoolKind::Eager, 0, false),
        // Loop, pool and sampler share a core: a pool thread preempted while it
        // holds the old pool's mutex would make the loop wait for its next slice.
        ("node, one core for all", 4, PoolKind::Eager, JOB_US, true),
    ] {
        // Threads inherit the affinity of the thread that starts them.
        set_affinity(if one_cpu { &[1] } else { &all_cpus });
        println!(
            "{label}: bursts of {BURST} jobs of {job_us} µs, snapshot() every 1 ms, {rounds} rounds of {} s each",
            ROUND.as_secs_f64()
        );
        let mut all_old = Stats::new();
        let mut all_new = Stats::new();
        for r in 0..rounds {
            // Alternate which goes first, so drift in the machine's load hits both.
            let (o, n) = if r % 2 == 0 {
                let o = round::<old::Pool>(size, kind, job_us);
                (o, round::<Pool>(size, kind, job_us))
            } else {
                let n = round::<Pool>(size, kind, job_us);
                (round::<old::Pool>(size, kind, job_us), n)
            };
            line(&format!("round {r} old (mutex)"), &o);
            line(&format!("round {r} new (lock-free)"), &n);
            all_old.add(&o);
            all_new.add(&n);
        }
        line("all rounds old (mutex)", &all_old);
        line("all rounds new (lock-free)", &all_new);
        println!();
    }
}
