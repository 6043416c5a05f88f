//! Merges worker reports into one snapshot per period and publishes it.
//!
//! In the node model one in-process sampler feeds it and a snapshot goes out as soon
//! as its report is in. In the fastapi model the supervisor feeds it every worker's
//! reports (read from their pipes) and the workers' births and deaths, and publishes
//! on its own clock, one snapshot per period whatever the workers do (at once, too,
//! when a stall begins). A worker whose reports stop (its whole process stopped,
//! swapped out or wedged, so its own sampler is stuck too) is shown as silent, with
//! its CPU read from `/proc` by the supervisor.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cpu::{HostCpu, ThreadNames};
use super::histogram::round3;
use super::telemetry::TelemetryHub;
use crate::protocol::{
    CpuSnapshot, Event, HostSnapshot, LagSummary, Model, PROTOCOL_VERSION, RuntimeSnapshot,
    Snapshot, WorkerReport, WorkerSnapshot,
};

/// A worker is silent once its reports stop for this many periods (×2)...
const SILENT_AFTER_HALF_PERIODS: u32 = 5;
/// ... and at least this long, so that scheduling delays at short periods do not
/// count as silence.
const SILENT_AFTER_MIN: Duration = Duration::from_millis(100);
/// A worker that has not reported since it started gets this much longer (a process
/// starting up is not yet silent).
const STARTUP_GRACE: Duration = Duration::from_secs(1);

/// What the aggregator is fed.
#[derive(Clone, Debug)]
pub enum Feed {
    /// A worker's periodic report.
    Report(Box<WorkerReport>),
    /// A worker process started in a slot (first start or respawn).
    WorkerStarted {
        /// Worker slot.
        id: u32,
        /// Its pid.
        pid: u32,
    },
    /// A worker process exited.
    WorkerExited {
        /// Worker slot.
        id: u32,
        /// The pid that exited.
        pid: u32,
        /// How it ended.
        status: String,
    },
}

#[derive(Debug, Default)]
struct Slot {
    last: WorkerSnapshot,
    pending: Vec<WorkerSnapshot>,
    started: bool,
    /// When this slot's process last reported, or started.
    heard: Option<Instant>,
    /// Whether it has reported since it started.
    reported: bool,
}

/// The merging state; pure apart from the clock readings passed in.
#[derive(Debug)]
pub struct Aggregator {
    model: Model,
    period: Duration,
    silent_after: Duration,
    seq: u64,
    slots: BTreeMap<u32, Slot>,
    events: Vec<Event>,
    /// The newest runtime-wide figures (multi-thread runtimes).
    runtime: Option<RuntimeSnapshot>,
}

impl Aggregator {
    /// An aggregator for `model`, reporting every `period`.
    pub fn new(model: Model, period: Duration) -> Self {
        Self {
            model,
            period,
            silent_after: (period * SILENT_AFTER_HALF_PERIODS / 2).max(SILENT_AFTER_MIN),
            seq: 0,
            slots: BTreeMap::new(),
            events: Vec::new(),
            runtime: None,
        }
    }

    /// Takes one input that arrived at `now`; returns true when it should be
    /// published at once.
    pub fn apply(&mut self, feed: Feed, now: Instant) -> bool {
        match feed {
            Feed::Report(report) => {
                let WorkerReport {
                    worker: w,
                    events,
                    urgent,
                    runtime,
                } = *report;
                let slot = self.slots.entry(w.id).or_default();
                // A late line from a process that has since been replaced.
                if slot.started && slot.last.pid != w.pid {
                    return false;
                }
                self.events.extend(events);
                if runtime.is_some() {
                    self.runtime = runtime;
                }
                slot.pending.push(w);
                slot.heard = Some(now);
                slot.reported = true;
                urgent
            }
            Feed::WorkerStarted { id, pid } => {
                let slot = self.slots.entry(id).or_default();
                let restarts = if slot.started {
                    self.events.push(Event::WorkerRestarted {
                        worker: id,
                        old_pid: slot.last.pid,
                        new_pid: pid,
                    });
                    slot.last.restarts + 1
                } else {
                    0
                };
                slot.started = true;
                slot.pending.clear();
                slot.heard = Some(now);
                slot.reported = false;
                slot.last = WorkerSnapshot {
                    id,
                    pid,
                    alive: true,
                    restarts,
                    ..Default::default()
                };
                true
            }
            Feed::WorkerExited { id, pid, status } => {
                let slot = self.slots.entry(id).or_default();
                if slot.last.pid == pid {
                    slot.last.alive = false;
                    slot.last.stalled_for_ms = 0.0;
                    slot.last.stalled_in = None;
                    slot.pending.clear();
                }
                self.events.push(Event::WorkerExited {
                    worker: id,
                    pid,
                    status,
                });
                true
            }
        }
    }

    /// How long `slot`'s live process has sent nothing, once that is long enough to
    /// call it silent.
    fn silent_for(&self, slot: &Slot, now: Instant) -> Option<Duration> {
        if !slot.started || !slot.last.alive || !slot.pending.is_empty() {
            return None;
        }
        let quiet = now.saturating_duration_since(slot.heard?);
        let limit = if slot.reported {
            self.silent_after
        } else {
            self.silent_after + STARTUP_GRACE
        };
        (quiet > limit).then_some(quiet)
    }

    /// True when every live worker that is not silent has reported since the last
    /// snapshot.
    pub fn ready(&self, now: Instant) -> bool {
        let mut live = self
            .slots
            .values()
            .filter(|s| (s.last.alive || !s.started) && self.silent_for(s, now).is_none());
        let mut any = false;
        let all = live.all(|s| {
            any = true;
            !s.pending.is_empty()
        });
        any && all
    }

    /// True when a live worker's report is due within `within` (or overdue, but the
    /// worker not yet silent) and has not arrived: a snapshot due now may wait that
    /// long for it rather than show the worker's previous figures again.
    pub fn awaiting(&self, now: Instant, within: Duration) -> bool {
        self.slots.values().any(|s| {
            s.started
                && s.last.alive
                && s.reported
                && s.pending.is_empty()
                && self.silent_for(s, now).is_none()
                && s.heard
                    .is_some_and(|h| now.saturating_duration_since(h) + within >= self.period)
        })
    }

    /// Pids of the live workers that have missed a report: nothing for more than a
    /// period and a quarter (silent ones included).
    pub fn overdue(&self, now: Instant) -> Vec<u32> {
        let late = self.period * 5 / 4;
        self.slots
            .values()
            .filter(|s| {
                s.started
                    && s.last.alive
                    && s.pending.is_empty()
                    && s.heard
                        .is_some_and(|h| now.saturating_duration_since(h) > late)
            })
            .map(|s| s.last.pid)
            .collect()
    }

    /// The next snapshot, taken at `now`; clears what it reported. A silent worker
    /// shows its last figures, `silent_for_ms` and a stall that runs from its last
    /// report.
    pub fn snapshot(&mut self, t_ms: u64, host: HostSnapshot, now: Instant) -> Snapshot {
        self.seq += 1;
        let silent: Vec<Option<Duration>> = self
            .slots
            .values()
            .map(|slot| self.silent_for(slot, now))
            .collect();
        let workers = self
            .slots
            .values_mut()
            .zip(silent)
            .map(|(slot, silent)| {
                if !slot.pending.is_empty() {
                    let merged = merge(std::mem::take(&mut slot.pending));
                    let (restarts, alive) = (slot.last.restarts, slot.last.alive || !slot.started);
                    slot.last = WorkerSnapshot {
                        restarts,
                        alive,
                        ..merged
                    };
                }
                let mut w = slot.last.clone();
                if let Some(quiet) = silent {
                    let ms = round3(quiet.as_secs_f64() * 1000.0);
                    w.silent_for_ms = Some(ms);
                    w.stalled_for_ms = round3(w.stalled_for_ms + ms);
                }
                w
            })
            .collect();
        Snapshot {
            v: PROTOCOL_VERSION,
            seq: self.seq,
            t_ms,
            model: self.model,
            period_ms: self.period.as_millis() as u64,
            workers,
            host,
            events: std::mem::take(&mut self.events),
            runtime: self.runtime.clone(),
        }
    }

    /// Runs the aggregator on its own thread until `feed` closes, publishing on its
    /// own clock: one snapshot every period whatever the workers do, plus one at once
    /// when a stall begins. A snapshot waits at most a quarter period for a report
    /// that is due at that moment, so that workers' and supervisor's clocks drifting
    /// across each other do not show one report twice and the next one never. The
    /// next tick stays on the schedule.
    pub fn spawn(
        self,
        feed: Receiver<Feed>,
        hub: Arc<TelemetryHub>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loopscope-aggregate".into())
            .spawn(move || {
                let period = self.period;
                let hold = period / 4;
                let mut publisher = Publisher::new(self, hub);
                let mut tick = Instant::now() + period;
                loop {
                    let now = Instant::now();
                    let until = if now < tick {
                        tick
                    } else if now < tick + hold && publisher.aggregator.awaiting(now, hold) {
                        tick + hold
                    } else {
                        publisher.publish();
                        tick = next_tick(tick, period, Instant::now());
                        continue;
                    };
                    match feed.recv_timeout(until.saturating_duration_since(now)) {
                        Ok(f) => {
                            if publisher.aggregator.apply(f, Instant::now()) {
                                publisher.publish();
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
    }
}

/// The tick after `tick` on its schedule, skipping ticks already past (the
/// supervisor itself was held up): no burst of catch-up snapshots.
fn next_tick(tick: Instant, period: Duration, now: Instant) -> Instant {
    let next = tick + period;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos() / period.as_nanos().max(1);
    next + period * (behind as u32 + 1)
}

/// An aggregator that publishes to a hub. Used inline by a single in-process sampler
/// (no thread hop), or on its own clock by [`Aggregator::spawn`].
pub struct Publisher {
    aggregator: Aggregator,
    hub: Arc<TelemetryHub>,
    host: HostCpu,
    /// CPU of workers that have stopped reporting, read from `/proc`.
    quiet_cpu: HashMap<u32, ProcessCpu>,
}

impl Publisher {
    /// Publishes `aggregator`'s snapshots to `hub`.
    pub fn new(aggregator: Aggregator, hub: Arc<TelemetryHub>) -> Self {
        Self {
            aggregator,
            hub,
            host: HostCpu::new(),
            quiet_cpu: HashMap::new(),
        }
    }

    /// The hub it publishes to.
    pub fn hub(&self) -> &Arc<TelemetryHub> {
        &self.hub
    }

    /// Changes the model snapshots and `/info` name (a probe learns its runtime's
    /// flavor when the runtime first runs).
    pub fn set_model(&mut self, model: Model) {
        self.aggregator.model = model;
        self.hub.update_info(|info| info.model = model);
    }

    /// Takes one input without publishing (a worker's start announced with its
    /// first report, which publishes).
    pub fn note(&mut self, feed: Feed) {
        self.aggregator.apply(feed, Instant::now());
    }

    /// Takes one input and publishes if a snapshot is due: at a stall onset, or when
    /// every live worker has reported.
    pub fn feed(&mut self, feed: Feed) {
        let now = Instant::now();
        let urgent = self.aggregator.apply(feed, now);
        if urgent || self.aggregator.ready(now) {
            self.publish();
        }
    }

    /// Publishes a snapshot now. Its host CPU covers the time since the previous
    /// one, the same period as the workers' reports it merges.
    pub fn publish(&mut self) {
        let now = Instant::now();
        let host = HostSnapshot {
            cpu: self.host.sample(),
            cores: self.host.cores(),
        };
        // Start reading a worker's CPU from outside as soon as it misses a report, so
        // that there is a baseline (a period old) by the time it counts as silent.
        let overdue = self.aggregator.overdue(now);
        self.quiet_cpu.retain(|pid, _| overdue.contains(pid));
        let t_ms = self.hub.epoch().elapsed().as_millis() as u64;
        let mut snapshot = self.aggregator.snapshot(t_ms, host, now);
        for w in &mut snapshot.workers {
            if !overdue.contains(&w.pid) {
                continue;
            }
            let cpu = self
                .quiet_cpu
                .entry(w.pid)
                .or_insert_with(|| ProcessCpu::new(w.pid))
                .sample();
            if let (Some(cpu), Some(_)) = (cpu, w.silent_for_ms) {
                w.cpu = cpu;
            }
        }
        self.hub.publish(snapshot);
    }
}

/// CPU of another process from `/proc/<pid>/task/*/schedstat` (nanoseconds), for a
/// worker that cannot report its own. A stopped process reads 0.
struct ProcessCpu {
    pid: u32,
    names: ThreadNames,
    /// When `threads` was read; `None` before the first reading.
    at: Option<Instant>,
    /// tid -> (name, cumulative run time in ns)
    threads: HashMap<u32, (String, u64)>,
}

impl ProcessCpu {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            names: ThreadNames::default(),
            at: None,
            threads: HashMap::new(),
        }
    }

    /// CPU since the previous call; `None` on the first call or when `/proc` cannot
    /// be read.
    fn sample(&mut self) -> Option<CpuSnapshot> {
        let now = Instant::now();
        let dir = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut current = HashMap::with_capacity(self.threads.len());
        let mut cpu = CpuSnapshot::default();
        let elapsed_ns = self
            .at
            .map(|at| now.duration_since(at).as_nanos().max(1) as f64);
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Some(ns) = std::fs::read_to_string(entry.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            else {
                continue;
            };
            let (name, prev) = match self.threads.remove(&tid) {
                Some((name, prev)) => (name, prev),
                None => {
                    let name = std::fs::read_to_string(entry.path().join("comm"))
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default();
                    (name, 0)
                }
            };
            if let Some(elapsed_ns) = elapsed_ns {
                let percent = ns.saturating_sub(prev) as f64 / elapsed_ns * 100.0;
                cpu.process += percent;
                if name == self.names.loop_thread {
                    cpu.loop_thread += percent;
                } else if name.starts_with(&self.names.pool_prefix) {
                    cpu.pool_threads += percent;
                }
            }
            current.insert(tid, (name, ns));
        }
        self.threads = current;
        self.at = Some(now);
        elapsed_ns?;
        let round1 = |p: f64| (p * 10.0).round() / 10.0;
        Some(CpuSnapshot {
            process: round1(cpu.process),
            loop_thread: round1(cpu.loop_thread),
            pool_threads: round1(cpu.pool_threads),
        })
    }
}

/// Several reports of one worker in one snapshot: the newest figures, with the lag
/// and queue waits of all of them.
fn merge(mut reports: Vec<WorkerSnapshot>) -> WorkerSnapshot {
    let mut out = reports.pop().expect("merge of at least one report");
    for r in &reports {
        out.lag_ms = merge_lag(out.lag_ms, r.lag_ms);
        out.pool.wait_ms_max = out.pool.wait_ms_max.max(r.pool.wait_ms_max);
        out.pool.wait_ms_p99 = out.pool.wait_ms_p99.max(r.pool.wait_ms_p99);
    }
    out
}

fn merge_lag(a: LagSummary, b: LagSummary) -> LagSummary {
    let samples = a.samples + b.samples;
    let p50 = if samples == 0 {
        0.0
    } else {
        (a.p50 * a.samples as f64 + b.p50 * b.samples as f64) / samples as f64
    };
    LagSummary {
        p50,
        p99: a.p99.max(b.p99),
        max: a.max.max(b.max),
        samples,
    }
}

#[cfg(test)]
mod tests;
