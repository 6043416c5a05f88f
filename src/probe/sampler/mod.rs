//! The sampler: a thread of its own that reads a [`LoopProbe`], its pool and the
//! process CPU, and hands one [`WorkerReport`] per period to a sink: one report for
//! a `current_thread` runtime (its loop), one per worker thread for a `multi_thread`
//! one (the `multi` module).
//!
//! Each report also carries the worker's cumulative figures ([`WorkerTotals`]):
//! every lag sample (or task poll) in fixed buckets, seconds stalled and CPU
//! seconds since the start, so that a reader sampling far less often than once a
//! period misses nothing.
//!
//! It never runs on the runtime it measures, so a blocked loop is still reported. It
//! looks for a stall every 25 ms (the loop's heartbeat, or a worker's running poll)
//! and sends an early (`urgent`) report the moment one begins, so a reader sees it
//! within ~35 ms instead of up to a period later; with
//! [`Sampler::check_stalls_while`], only while someone reads the reports live.

mod multi;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::RuntimeFlavor;

use super::cpu::{CpuSampler, ThreadNames};
use super::histogram::round3;
use super::{LoopProbe, Pool};
use crate::protocol::{WorkerReport, WorkerSnapshot, WorkerTotals};

/// Rounds seconds to microseconds (keeps lines short).
pub(crate) fn round6(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

/// tokio's default cap on blocking threads.
pub const TOKIO_BLOCKING_THREADS: u32 = 512;

/// How often the heartbeat is checked between reports: a stall shows within
/// threshold + this (35 ms); checking more often costs the measured process CPU.
const STALL_CHECK: Duration = Duration::from_millis(25);

/// Builds reports for one worker; [`Sampler::spawn`] drives it on a thread.
pub struct Sampler {
    probe: LoopProbe,
    pool: Option<Pool>,
    cpu: CpuSampler,
    pid: u32,
    last_at: Instant,
    last_busy: Duration,
    /// Stall time already reported as busy that tokio's counter has not caught up
    /// with (it only moves when the loop parks, so a blocked loop looks idle to it).
    credited: Duration,
    last_completed: u64,
    last_pool_completed: u64,
    /// The stalled time reported last: reports never show less.
    last_stalled: Duration,
    /// Set once the runtime is seen to be a multi-thread one.
    multi: Option<multi::MultiThread>,
    blocking_pool_size: u32,
    /// Whether anyone waits for an early report now; `None`: always.
    watched: Option<Box<dyn Fn() -> bool + Send>>,
}

impl Sampler {
    /// A sampler of `probe`, `pool` and this process. Per-thread CPU is classed by
    /// the threads that `probe` and `pool` registered ([`LoopProbe::thread_registry`],
    /// [`Pool::thread_registry`]); `names` classes the threads neither registered.
    pub fn new(probe: LoopProbe, pool: Option<Pool>, names: ThreadNames) -> Self {
        let now = Instant::now();
        let mut cpu = CpuSampler::new(names);
        // The pool's first: a pool thread stays one even if it parks a runtime.
        if let Some(pool) = &pool {
            cpu.watch(pool.thread_registry().clone());
        }
        cpu.watch(probe.thread_registry().clone());
        Self {
            last_busy: Duration::ZERO,
            credited: Duration::ZERO,
            probe,
            pool,
            cpu,
            pid: std::process::id(),
            last_at: now,
            last_completed: 0,
            last_pool_completed: 0,
            last_stalled: Duration::ZERO,
            multi: None,
            blocking_pool_size: TOKIO_BLOCKING_THREADS,
            watched: None,
        }
    }

    /// Looks for a stall between reports only while `watched` says someone reads
    /// the reports as they come (a `/telemetry` stream): the early report of a stall
    /// onset is for them. Unwatched, the sampler wakes once a period instead of
    /// four times (each wake-up costs the measured process ~20 – 50 µs of CPU).
    pub fn check_stalls_while(mut self, watched: impl Fn() -> bool + Send + 'static) -> Self {
        self.watched = Some(Box::new(watched));
        self
    }

    /// The cap on a multi-thread runtime's blocking threads, if it is not tokio's
    /// default ([`TOKIO_BLOCKING_THREADS`]): the size of its pool.
    pub fn blocking_pool_size(mut self, size: u32) -> Self {
        self.blocking_pool_size = size;
        self
    }

    /// True once the measured runtime is known to be a multi-thread one.
    fn is_multi(&mut self) -> bool {
        if self.multi.is_none()
            && let Some(handle) = self.probe.runtime()
            && handle.runtime_flavor() == RuntimeFlavor::MultiThread
        {
            self.multi = Some(multi::MultiThread::new(&handle, self.blocking_pool_size));
        }
        self.multi.is_some()
    }

    /// How long the loop, or the longest-held worker, has been stalled.
    fn stalled_for(&mut self) -> Option<Duration> {
        if self.is_multi() {
            multi::MultiThread::stalled_for(&self.probe)
        } else {
            self.probe.stalled_for()
        }
    }

    /// Starts the sampler thread; `sink` gets every report, in order. The thread ends
    /// when `sink` returns false.
    pub fn spawn(
        self,
        mut sink: impl FnMut(WorkerReport) -> bool + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loopscope-sampler".into())
            .spawn(move || {
                let mut sampler = self;
                let period = sampler.probe.config().period;
                let mut next_report = Instant::now() + period;
                let mut was_stalled = false;
                loop {
                    let now = Instant::now();
                    let checking = sampler.watched.as_ref().is_none_or(|w| w());
                    let wake = if checking {
                        next_report.min(now + STALL_CHECK)
                    } else {
                        next_report
                    };
                    std::thread::sleep(wake.saturating_duration_since(now));
                    let now = Instant::now();
                    let stalled = sampler.stalled_for().is_some();
                    // Early: a stall that began since the last look, before the
                    // report was due.
                    let onset = stalled && !was_stalled && now < next_report;
                    was_stalled = stalled;
                    if onset || now >= next_report {
                        let reports = sampler.reports(now, onset);
                        // Late or early (a stall onset): the next period starts now.
                        next_report = if onset || now >= next_report + period {
                            now + period
                        } else {
                            next_report + period
                        };
                        for report in reports {
                            if !sink(report) {
                                return;
                            }
                        }
                    }
                }
            })
    }

    fn utilization(&mut self, dt: f64, stalled: Option<Duration>) -> f64 {
        let Some(busy) = self.probe.busy_total() else {
            return 0.0;
        };
        let mut delta = busy.saturating_sub(self.last_busy);
        self.last_busy = busy;
        let absorbed = delta.min(self.credited);
        self.credited -= absorbed;
        delta -= absorbed;
        if let Some(stall) = stalled {
            let period = Duration::from_secs_f64(dt);
            let blocked = stall.min(period);
            self.credited += blocked;
            delta += blocked;
        }
        (delta.as_secs_f64() / dt).clamp(0.0, 1.0)
    }

    /// The reports for the period ending `now`: the loop's, or one per worker
    /// thread of a multi-thread runtime (the last one carries `urgent` and the
    /// runtime's figures, so that a reader publishing when all are in sees all).
    pub fn reports(&mut self, now: Instant, urgent: bool) -> Vec<WorkerReport> {
        if !self.is_multi() {
            return vec![self.report(now, urgent)];
        }
        let dt = now
            .saturating_duration_since(self.last_at)
            .as_secs_f64()
            .max(1e-6);
        self.last_at = now;
        let cpu = self.cpu.sample();
        let delay = self.probe.take_lag();
        let Some(multi) = &mut self.multi else {
            return Vec::new();
        };
        let runtime = multi.runtime(delay, self.probe.lag_total());
        let pool = multi.pool(&runtime);
        let totals = self.cpu.totals();
        let workers = multi.workers(&self.probe, dt, self.cpu.threads(), &cpu, &totals, &pool);
        let mut events = self.probe.take_events();
        let n = workers.len();
        workers
            .into_iter()
            .enumerate()
            .map(|(i, worker)| {
                let last = i + 1 == n;
                WorkerReport {
                    worker,
                    events: if last {
                        std::mem::take(&mut events)
                    } else {
                        Vec::new()
                    },
                    urgent: urgent && last,
                    runtime: last.then(|| runtime.clone()),
                }
            })
            .collect()
    }

    /// The loop's report for the period ending `now`.
    pub fn report(&mut self, now: Instant, urgent: bool) -> WorkerReport {
        let dt = now
            .saturating_duration_since(self.last_at)
            .as_secs_f64()
            .max(1e-6);
        self.last_at = now;

        // The stalls that ended first, then the one going on (their writing order).
        self.last_stalled = self.last_stalled.max(self.probe.stalled_total());
        let stalled = self.probe.stalled_for();
        let utilization = self.utilization(dt, stalled);
        let mut requests = self.probe.take_requests();
        requests.per_s = round3(requests.completed.saturating_sub(self.last_completed) as f64 / dt);
        self.last_completed = requests.completed;

        let pool = match &self.pool {
            Some(pool) => {
                let mut snap = pool.snapshot();
                snap.completed_per_s =
                    round3(snap.completed.saturating_sub(self.last_pool_completed) as f64 / dt);
                self.last_pool_completed = snap.completed;
                snap
            }
            None => Default::default(),
        };

        let cpu = self.cpu.sample();
        let totals = WorkerTotals {
            lag: self.probe.lag_total(),
            stalled_s: round6(self.last_stalled.as_secs_f64()),
            cpu_s: self.cpu.totals(),
        };
        WorkerReport {
            worker: WorkerSnapshot {
                id: self.probe.worker_id(),
                pid: self.pid,
                alive: true,
                restarts: 0,
                lag_ms: self.probe.take_lag(),
                stalled_for_ms: stalled.map_or(0.0, |d| round3(d.as_secs_f64() * 1000.0)),
                stalled_in: stalled.and_then(|_| self.probe.request_in_poll()),
                silent_for_ms: None,
                loop_utilization: round3(utilization),
                runtime: None,
                pool,
                cpu,
                requests,
                totals: Some(totals),
            },
            events: self.probe.take_events(),
            urgent,
            runtime: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeConfig;
    use std::sync::mpsc;

    /// Unwatched, the sampler wakes once a period and a stall shows at the next
    /// periodic report; watched, it looks four times a period and the stall shows
    /// within ~35 ms of its onset, in an early report.
    #[test]
    fn stalls_are_looked_for_between_reports_only_while_watched() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let _serial = crate::test_support::timing_lock();
        let probe = LoopProbe::new(0, ProbeConfig::default());
        let watched = Arc::new(AtomicBool::new(false));
        // The sampler's wake-ups in each phase: it asks once per wake-up.
        let looks = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (w, l) = (Arc::clone(&watched), Arc::clone(&looks));
        // Once the loop ends its heartbeat stops, which would read as a stall.
        let done = Arc::new(AtomicBool::new(false));
        let (ended, phase) = (Arc::clone(&done), Arc::clone(&watched));
        let (tx, rx) = mpsc::channel();
        Sampler::new(probe.clone(), None, ThreadNames::default())
            .check_stalls_while(move || {
                let on = w.load(Ordering::Relaxed);
                l[usize::from(on)].fetch_add(1, Ordering::Relaxed);
                on
            })
            .spawn(move |r| {
                let report = (
                    phase.load(Ordering::Relaxed),
                    r.worker.stalled_for_ms,
                    r.urgent,
                );
                !ended.load(Ordering::Relaxed) && tx.send(report).is_ok()
            })
            .unwrap();
        let loop_probe = probe.clone();
        let flag = Arc::clone(&watched);
        let looper = std::thread::spawn(move || {
            let mut b = tokio::runtime::Builder::new_current_thread();
            loop_probe.install_hooks(&mut b);
            let rt = b.enable_all().build().unwrap();
            rt.block_on(async {
                loop_probe.spawn_lag_task();
                for watch in [false, true] {
                    flag.store(watch, Ordering::Relaxed);
                    // Past the sampler's current sleep (one period at most).
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    tokio::spawn(async { std::thread::sleep(Duration::from_millis(300)) })
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                done.store(true, Ordering::Relaxed);
            });
        });
        looper.join().unwrap();
        let reports: Vec<(bool, f64, bool)> = rx.try_iter().collect();
        let stalled = |on: bool| -> Vec<(f64, bool)> {
            reports
                .iter()
                .filter(|(w, ms, _)| *w == on && *ms > 0.0)
                .map(|(_, ms, urgent)| (*ms, *urgent))
                .collect()
        };
        // ~800 ms a phase: ~8 wake-ups unwatched, ~32 watched.
        let (quiet, busy) = (
            looks[0].load(Ordering::Relaxed),
            looks[1].load(Ordering::Relaxed),
        );
        assert!(quiet <= 14 && busy >= 20, "{quiet} and {busy} looks");
        let (unwatched, watched) = (stalled(false), stalled(true));
        assert!(!unwatched.is_empty(), "{reports:?}");
        assert!(unwatched.iter().all(|(_, urgent)| !urgent), "{reports:?}");
        assert!(
            watched.first().is_some_and(|(ms, _)| *ms <= 75.0),
            "{reports:?}"
        );
    }

    /// A loop blocked for 300 ms: the sampler reports the stall while it lasts,
    /// early, then the lag histogram shows it once the loop runs again; the
    /// cumulative figures keep it (stalled seconds that never go down, a lag sample
    /// above 0.25 s).
    #[test]
    fn reports_a_stall_while_it_lasts_then_the_lag() {
        let _serial = crate::test_support::timing_lock();
        let probe = LoopProbe::new(0, ProbeConfig::default());
        let (tx, rx) = mpsc::channel();
        Sampler::new(probe.clone(), None, ThreadNames::default())
            .spawn(move |r| tx.send(r).is_ok())
            .unwrap();
        let loop_probe = probe.clone();
        let looper = std::thread::Builder::new()
            .name("loop".into())
            .spawn(move || {
                let mut b = tokio::runtime::Builder::new_current_thread();
                loop_probe.install_hooks(&mut b);
                let rt = b.enable_all().build().unwrap();
                rt.block_on(async {
                    loop_probe.spawn_lag_task();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let tag = crate::probe::RequestTag::new("GET", "/block?ms=300");
                    // A spawned task, as a connection is: the poll hooks see it.
                    let request = loop_probe.instrument(tag, async {
                        std::thread::sleep(Duration::from_millis(300));
                    });
                    tokio::spawn(request).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                });
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut live_stall: Option<WorkerReport> = None;
        let mut max_lag = 0.0f64;
        let mut max_util = 0.0f64;
        let mut stalled_s = Vec::new();
        let mut last_totals = None;
        let mut keep = |r: &WorkerReport| {
            let t = r.worker.totals.clone().expect("cumulative figures");
            stalled_s.push(t.stalled_s);
            last_totals = Some(t);
        };
        while Instant::now() < deadline && !looper.is_finished() {
            let Ok(r) = rx.recv_timeout(Duration::from_millis(500)) else {
                continue;
            };
            max_lag = max_lag.max(r.worker.lag_ms.max);
            max_util = max_util.max(r.worker.loop_utilization);
            keep(&r);
            if r.worker.stalled_for_ms > 100.0 && live_stall.is_none() {
                live_stall = Some(r);
            }
        }
        looper.join().unwrap();
        while let Ok(r) = rx.try_recv() {
            max_lag = max_lag.max(r.worker.lag_ms.max);
            keep(&r);
        }
        assert!(stalled_s.is_sorted(), "{stalled_s:?}");
        let totals = last_totals.unwrap();
        assert!((0.25..1.0).contains(&totals.stalled_s), "{totals:?}");
        let above_quarter = totals.lag.count() - totals.lag.at_most()[9];
        assert_eq!(crate::protocol::HISTOGRAM_BOUNDS_US[9], 250_000);
        assert_eq!(above_quarter, 1, "{totals:?}");
        assert!(totals.lag.sum_s >= 0.28, "{totals:?}");
        let stall = live_stall.expect("a report during the stall");
        assert!(stall.worker.stalled_for_ms < 300.0);
        assert_eq!(
            stall.worker.stalled_in.as_deref(),
            Some("GET /block?ms=300")
        );
        assert!((280.0..400.0).contains(&max_lag), "lag max {max_lag}");
        assert!(max_util > 0.9, "utilization {max_util}");
    }
}
