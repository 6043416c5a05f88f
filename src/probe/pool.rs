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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::histogram::{LatencyHistogram, round3};
use crate::protocol::PoolSnapshot;

/// How a pool starts its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Every thread starts with the pool.
    Eager,
    /// Threads start when a job finds no idle one, up to the size.
    Lazy,
}

/// A fixed-size pool of named threads. Cheap to clone.
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

/// Runs the work and returns how to deliver its result, so that the gauge counts
/// the job as completed before its caller can see the result.
type Work = Box<dyn FnOnce(Duration) -> Box<dyn FnOnce() + Send> + Send>;

struct Job {
    enqueued: Instant,
    run: Work,
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

    /// The most jobs that run at once.
    pub fn size(&self) -> u32 {
        self.inner.size
    }

    /// Runs `f` on a pool thread; resolves when it finished and the caller's loop
    /// polled the completion.
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

    fn submit(&self, run: Work) {
        let mut state = self.inner.lock();
        state.queue.push_back(Job {
            enqueued: Instant::now(),
            run,
        });
        // An idle thread will take it unless more jobs wait than threads idle.
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

    /// The gauge now: busy and queued right now, waits since the previous call.
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
            oldest_wait_ms: round3(oldest_ms),
            // A job still waiting has waited at least this long: count it too.
            wait_ms_max: round3(max.max(oldest_ms)),
            wait_ms_p50: round3(p50),
            wait_ms_p99: round3(p99),
            completed: self.inner.completed.load(Ordering::Relaxed),
            completed_per_s: 0.0,
        }
    }

    /// Stops the threads once the queue is empty.
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
            // A panicking job drops its sender, so its caller sees PoolClosed; the
            // thread lives on.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn eager_pool_runs_jobs_in_waves_of_its_size() {
        let pool = Pool::new("t-eager", 2, PoolKind::Eager);
        assert_eq!(pool.snapshot().threads, 2);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let rt = rt();
        rt.block_on(async {
            let mut jobs = Vec::new();
            for _ in 0..5 {
                let rx = Arc::clone(&release_rx);
                let pool = pool.clone();
                jobs.push(tokio::spawn(async move {
                    pool.run(move || rx.lock().unwrap().recv().unwrap()).await
                }));
            }
            // Wait (bounded) until both threads hold a job and three wait.
            let deadline = Instant::now() + Duration::from_secs(5);
            let snap = loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let s = pool.snapshot();
                if s.busy == 2 && s.queued == 3 || Instant::now() > deadline {
                    break s;
                }
            };
            assert_eq!((snap.busy, snap.queued, snap.size), (2, 3, 2));
            assert!(snap.oldest_wait_ms > 0.0);
            for _ in 0..5 {
                release_tx.send(()).unwrap();
            }
            for j in jobs {
                j.await.unwrap().unwrap();
            }
        });
        let s = pool.snapshot();
        assert_eq!((s.busy, s.queued, s.completed), (0, 0, 5));
        pool.shutdown();
    }

    #[test]
    fn lazy_pool_starts_threads_on_demand_up_to_its_size() {
        let pool = Pool::new("t-lazy", 3, PoolKind::Lazy);
        assert_eq!(pool.snapshot().threads, 0);
        let rt = rt();
        let out = rt.block_on(pool.run(|| 6 * 7)).unwrap();
        assert_eq!(out.value, 42);
        assert_eq!(pool.snapshot().threads, 1);
        rt.block_on(async {
            let jobs: Vec<_> = (0..10)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        pool.run(|| std::thread::sleep(Duration::from_millis(20)))
                            .await
                    })
                })
                .collect();
            for j in jobs {
                j.await.unwrap().unwrap();
            }
        });
        let s = pool.snapshot();
        assert_eq!(s.threads, 3);
        assert_eq!(s.completed, 11);
        // 10 jobs on 3 threads: somebody waited at least one 20 ms turn.
        assert!(s.wait_ms_max >= 15.0, "{s:?}");
        pool.shutdown();
    }

    #[test]
    fn a_panicking_job_reports_closed_and_the_thread_survives() {
        let pool = Pool::new("t-panic", 1, PoolKind::Eager);
        let rt = rt();
        let r = rt.block_on(pool.run(|| -> u32 { panic!("job failed") }));
        assert!(r.is_err());
        assert_eq!(rt.block_on(pool.run(|| 1)).unwrap().value, 1);
        pool.shutdown();
    }
}
