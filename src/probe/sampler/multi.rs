//! Reports of a multi-thread runtime: one per worker thread, and the runtime's own
//! figures read with tokio-metrics' [`RuntimeMonitor`](tokio_metrics::RuntimeMonitor)
//! from the sampler thread, off the runtime.
//!
//! A worker is **stalled** while the task poll it is running has lasted longer than
//! the stall threshold: it is stuck on one task, and the request that task serves
//! (if instrumented) is named. Its `lag_ms` is how long task polls held it in the
//! period; its busy share comes from its park hooks. tokio's blocking pool is the
//! pool: `spawn_blocking` jobs queued, blocking threads busy and started.
//!
//! A worker's cumulative figures are every task poll's duration, the time its
//! stalling polls held it, and its thread's CPU time (the process's and the
//! blocking pool's on the first worker only, as in the period's figures).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::probe::LoopProbe;
use crate::probe::cpu::ThreadCpu;
use crate::probe::histogram::round3;
use crate::probe::sampler::round6;
use crate::probe::slots::WorkerSlot;
use crate::protocol::{
    CpuSeconds, CpuSnapshot, DurationHistogram, LagSummary, PoolSnapshot, RuntimeSnapshot,
    WorkerSnapshot, WorkerThreadSnapshot, WorkerTotals,
};

/// What the sampler keeps of one worker between reports.
#[derive(Default)]
pub(super) struct Seen {
    busy_ns: u64,
    polls: u64,
    completed: u64,
    poll_buckets: Vec<u64>,
    /// The stalled time and thread CPU seconds reported last: reports never show
    /// less.
    stalled: Duration,
    cpu_s: f64,
    #[cfg(tokio_unstable)]
    steals: u64,
}

/// The sampler's state for a multi-thread runtime.
pub(super) struct MultiThread {
    monitor: tokio_metrics::RuntimeIntervals,
    seen: Vec<Seen>,
    /// Most blocking threads, as configured (tokio's default is 512).
    pool_size: u32,
}

impl MultiThread {
    pub(super) fn new(handle: &tokio::runtime::Handle, pool_size: u32) -> Self {
        Self {
            monitor: tokio_metrics::RuntimeMonitor::new(handle).intervals(),
            seen: Vec::new(),
            pool_size,
        }
    }

    /// How long the longest-held worker has been held by its poll, if that is a
    /// stall.
    pub(super) fn stalled_for(probe: &LoopProbe) -> Option<Duration> {
        let shared = &probe.shared;
        let now = shared.now_ns();
        shared
            .slots
            .iter()
            .filter_map(|s| stall_of(s, now, shared.config.stall_threshold))
            .max()
    }

    /// The runtime-wide figures of the period; the scheduling delay is the lag
    /// timer's summary.
    pub(super) fn runtime(
        &mut self,
        scheduling_delay: LagSummary,
        total: DurationHistogram,
    ) -> RuntimeSnapshot {
        let m = self.monitor.next().unwrap_or_default();
        #[cfg_attr(not(tokio_unstable), allow(unused_mut))]
        let mut r = RuntimeSnapshot {
            workers: m.workers_count as u32,
            scheduling_delay_ms: scheduling_delay,
            scheduling_delay_total: Some(total),
            global_queue: m.global_queue_depth as u64,
            alive_tasks: m.live_tasks_count as u64,
            ..Default::default()
        };
        #[cfg(tokio_unstable)]
        {
            r.blocking_threads = m.blocking_threads_count as u32;
            r.idle_blocking_threads = m.idle_blocking_threads_count as u32;
            r.blocking_queue = m.blocking_queue_depth as u64;
        }
        r
    }

    /// tokio's blocking pool as a pool snapshot. tokio counts no completed
    /// blocking jobs and no waits: those stay 0.
    pub(super) fn pool(&self, r: &RuntimeSnapshot) -> PoolSnapshot {
        let busy = r.blocking_threads.saturating_sub(r.idle_blocking_threads);
        PoolSnapshot {
            size: self.pool_size,
            threads: r.blocking_threads,
            busy,
            queued: u32::try_from(r.blocking_queue).unwrap_or(u32::MAX),
            ..Default::default()
        }
    }

    /// One entry per worker thread for the period of `dt` seconds ending now.
    pub(super) fn workers(
        &mut self,
        probe: &LoopProbe,
        dt: f64,
        threads: &[ThreadCpu],
        process: &CpuSnapshot,
        process_total: &CpuSeconds,
        pool: &PoolSnapshot,
    ) -> Vec<WorkerSnapshot> {
        let shared = &probe.shared;
        let stall_ns = shared.config.stall_threshold.as_nanos() as u64;
        let now = shared.now_ns();
        let pid = std::process::id();
        let metrics = shared.runtime.get().map(|h| h.metrics());
        let mut out = Vec::new();
        for slot in shared.slots.iter() {
            let i = slot.index as usize;
            if self.seen.len() <= i {
                self.seen.resize_with(i + 1, Seen::default);
            }
            let busy = slot.busy_total_ns(now);
            let polls = slot.polls.load(Ordering::Relaxed);
            let stalled_total = Duration::from_nanos(slot.stalled_total_ns(now, stall_ns));
            let seen = &mut self.seen[i];
            seen.stalled = seen.stalled.max(stalled_total);
            let busy_delta = busy.saturating_sub(seen.busy_ns);
            seen.busy_ns = busy;
            let polls_delta = polls.saturating_sub(seen.polls);
            seen.polls = polls;
            let held = slot.poll_durations.take(&mut seen.poll_buckets);
            let stalled = stall_of(slot, now, shared.config.stall_threshold);
            let mut requests = probe.take_requests_of(i);
            requests.per_s = round3(requests.completed.saturating_sub(seen.completed) as f64 / dt);
            seen.completed = requests.completed;
            #[cfg_attr(not(tokio_unstable), allow(unused_mut))]
            let mut runtime = WorkerThreadSnapshot {
                tid: slot.tid,
                polls: polls_delta,
                parked: slot.parked.load(Ordering::Relaxed),
                ..Default::default()
            };
            #[cfg(tokio_unstable)]
            if let Some(m) = &metrics
                && let Some(w) =
                    (0..m.num_workers()).find(|&w| m.worker_thread_id(w) == Some(slot.thread))
            {
                let steals = m.worker_steal_count(w);
                runtime.steals = steals.saturating_sub(seen.steals);
                seen.steals = steals;
                runtime.local_queue = m.worker_local_queue_depth(w) as u64;
            }
            #[cfg(not(tokio_unstable))]
            let _ = &metrics;
            let thread = threads.iter().find(|t| t.tid == slot.tid);
            let thread_cpu = thread.map_or(0.0, |t| (t.percent * 10.0).round() / 10.0);
            if let Some(t) = thread {
                seen.cpu_s = seen.cpu_s.max(round6(t.run_s));
            }
            let first = out.is_empty();
            let totals = WorkerTotals {
                lag: slot.poll_durations.histogram(),
                stalled_s: round6(seen.stalled.as_secs_f64()),
                cpu_s: CpuSeconds {
                    process: if first { process_total.process } else { 0.0 },
                    loop_thread: seen.cpu_s,
                    pool_threads: if first {
                        process_total.pool_threads
                    } else {
                        0.0
                    },
                },
            };
            out.push(WorkerSnapshot {
                id: slot.index,
                pid,
                alive: true,
                restarts: 0,
                lag_ms: LagSummary {
                    p50: held.p50_ms,
                    p99: held.p99_ms,
                    max: held.max_ms,
                    samples: held.count,
                },
                stalled_for_ms: stalled.map_or(0.0, |d| round3(d.as_secs_f64() * 1000.0)),
                stalled_in: stalled.and_then(|_| shared.slots.request_in(slot)),
                silent_for_ms: None,
                loop_utilization: round3((busy_delta as f64 / 1e9 / dt).clamp(0.0, 1.0)),
                runtime: Some(runtime),
                // The pool and the process are the runtime's: on the first entry
                // only, so that sums over workers stay right.
                pool: if out.is_empty() {
                    pool.clone()
                } else {
                    PoolSnapshot::default()
                },
                cpu: CpuSnapshot {
                    process: if out.is_empty() { process.process } else { 0.0 },
                    loop_thread: thread_cpu,
                    pool_threads: if out.is_empty() {
                        process.pool_threads
                    } else {
                        0.0
                    },
                },
                requests,
                totals: Some(totals),
            });
        }
        out
    }
}

/// How long `slot`'s running poll has held it, if longer than `threshold`.
fn stall_of(slot: &WorkerSlot, now_ns: u64, threshold: Duration) -> Option<Duration> {
    let held = Duration::from_nanos(slot.polling_for_ns(now_ns)?);
    (held > threshold).then_some(held)
}
