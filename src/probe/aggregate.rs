//! Merges worker reports into one snapshot per period and publishes it.
//!
//! In the node model one in-process sampler feeds it; in the fastapi model the
//! supervisor feeds it every worker's reports (read from their pipes) and the
//! workers' births and deaths. A snapshot goes out as soon as every live worker has
//! reported, at once when a stall begins, and at the latest 1.5 periods after the
//! previous one, so the stream keeps flowing whatever the workers do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cpu::HostCpu;
use super::telemetry::TelemetryHub;
use crate::protocol::{
    Event, HostSnapshot, LagSummary, Model, PROTOCOL_VERSION, Snapshot, WorkerReport,
    WorkerSnapshot,
};

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
}

/// The merging state; pure apart from the clock readings passed in.
#[derive(Debug)]
pub struct Aggregator {
    model: Model,
    period: Duration,
    seq: u64,
    slots: BTreeMap<u32, Slot>,
    events: Vec<Event>,
}

impl Aggregator {
    /// An aggregator for `model`, reporting every `period`.
    pub fn new(model: Model, period: Duration) -> Self {
        Self {
            model,
            period,
            seq: 0,
            slots: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Takes one input; returns true when it should be published at once.
    pub fn apply(&mut self, feed: Feed) -> bool {
        match feed {
            Feed::Report(report) => {
                let WorkerReport {
                    worker: w,
                    events,
                    urgent,
                } = *report;
                let slot = self.slots.entry(w.id).or_default();
                // A late line from a process that has since been replaced.
                if slot.started && slot.last.pid != w.pid {
                    return false;
                }
                self.events.extend(events);
                slot.pending.push(w);
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

    /// True when every live worker has reported since the last snapshot.
    pub fn ready(&self) -> bool {
        let mut live = self.slots.values().filter(|s| s.last.alive || !s.started);
        let mut any = false;
        let all = live.all(|s| {
            any = true;
            !s.pending.is_empty()
        });
        any && all
    }

    /// The next snapshot; clears what it reported.
    pub fn snapshot(&mut self, t_ms: u64, host: HostSnapshot) -> Snapshot {
        self.seq += 1;
        let workers = self
            .slots
            .values_mut()
            .map(|slot| {
                if !slot.pending.is_empty() {
                    let merged = merge(std::mem::take(&mut slot.pending));
                    let (restarts, alive) = (slot.last.restarts, slot.last.alive || !slot.started);
                    slot.last = WorkerSnapshot {
                        restarts,
                        alive,
                        ..merged
                    };
                }
                slot.last.clone()
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
        }
    }

    /// Runs the aggregator on its own thread until `feed` closes; a snapshot goes out
    /// at the latest 1.5 periods after the previous one, whatever the workers do.
    pub fn spawn(
        self,
        feed: Receiver<Feed>,
        hub: Arc<TelemetryHub>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loopscope-aggregate".into())
            .spawn(move || {
                let longest_gap = self.period * 3 / 2;
                let mut publisher = Publisher::new(self, hub);
                loop {
                    let wait = (publisher.last_publish + longest_gap)
                        .saturating_duration_since(Instant::now());
                    match feed.recv_timeout(wait) {
                        Ok(f) => publisher.feed(f),
                        Err(RecvTimeoutError::Timeout) => publisher.publish(),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
    }
}

/// An aggregator that publishes to a hub as soon as a snapshot is ready. Used
/// inline by a single in-process sampler (no thread hop), or by [`Aggregator::spawn`].
pub struct Publisher {
    aggregator: Aggregator,
    hub: Arc<TelemetryHub>,
    host: HostCpu,
    last_publish: Instant,
}

impl Publisher {
    /// Publishes `aggregator`'s snapshots to `hub`.
    pub fn new(aggregator: Aggregator, hub: Arc<TelemetryHub>) -> Self {
        Self {
            aggregator,
            hub,
            host: HostCpu::new(),
            last_publish: Instant::now(),
        }
    }

    /// Takes one input and publishes if a snapshot is due.
    pub fn feed(&mut self, feed: Feed) {
        let urgent = self.aggregator.apply(feed);
        if urgent || self.aggregator.ready() {
            self.publish();
        }
    }

    /// Publishes a snapshot now. Its host CPU covers the time since the previous
    /// one, the same period as the workers' reports it merges.
    pub fn publish(&mut self) {
        self.last_publish = Instant::now();
        let host = HostSnapshot {
            cpu: self.host.sample(),
            cores: self.host.cores(),
        };
        let t_ms = self.hub.epoch().elapsed().as_millis() as u64;
        self.hub.publish(self.aggregator.snapshot(t_ms, host));
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
mod tests {
    use super::*;

    fn report(id: u32, pid: u32, lag_max: f64, urgent: bool) -> Feed {
        Feed::Report(Box::new(WorkerReport {
            worker: WorkerSnapshot {
                id,
                pid,
                alive: true,
                lag_ms: LagSummary {
                    p50: 0.5,
                    p99: lag_max,
                    max: lag_max,
                    samples: 10,
                },
                ..Default::default()
            },
            events: vec![],
            urgent,
        }))
    }

    #[test]
    fn publishes_when_every_live_worker_reported() {
        let mut agg = Aggregator::new(Model::Fastapi, Duration::from_millis(100));
        agg.apply(Feed::WorkerStarted { id: 0, pid: 10 });
        agg.apply(Feed::WorkerStarted { id: 1, pid: 11 });
        assert!(!agg.ready());
        assert!(!agg.apply(report(0, 10, 1.0, false)));
        assert!(!agg.ready());
        agg.apply(report(0, 10, 480.0, false));
        agg.apply(report(1, 11, 2.0, false));
        assert!(agg.ready());
        let snap = agg.snapshot(100, HostSnapshot::default());
        assert_eq!(snap.seq, 1);
        assert_eq!(snap.workers.len(), 2);
        // Two reports of worker 0 merged: the larger max survives, samples add up.
        assert_eq!(snap.workers[0].lag_ms.max, 480.0);
        assert_eq!(snap.workers[0].lag_ms.samples, 20);
        assert_eq!(snap.workers[1].lag_ms.max, 2.0);
        assert!(!agg.ready());
    }

    #[test]
    fn a_stall_onset_is_urgent() {
        let mut agg = Aggregator::new(Model::Node, Duration::from_millis(100));
        agg.apply(Feed::WorkerStarted { id: 0, pid: 10 });
        assert!(agg.apply(report(0, 10, 0.0, true)));
    }

    #[test]
    fn a_respawned_worker_gets_its_new_pid_and_stale_lines_are_ignored() {
        let mut agg = Aggregator::new(Model::Fastapi, Duration::from_millis(100));
        agg.apply(Feed::WorkerStarted { id: 1, pid: 11 });
        agg.apply(Feed::WorkerExited {
            id: 1,
            pid: 11,
            status: "killed by signal 9".into(),
        });
        let snap = agg.snapshot(100, HostSnapshot::default());
        assert!(!snap.workers[0].alive);
        assert_eq!(snap.events.len(), 1);
        agg.apply(Feed::WorkerStarted { id: 1, pid: 12 });
        agg.apply(report(1, 11, 99.0, false));
        let snap = agg.snapshot(200, HostSnapshot::default());
        let w = &snap.workers[0];
        assert_eq!((w.pid, w.alive, w.restarts), (12, true, 1));
        assert_eq!(w.lag_ms.max, 0.0, "the dead process's line was ignored");
        assert_eq!(
            snap.events,
            vec![Event::WorkerRestarted {
                worker: 1,
                old_pid: 11,
                new_pid: 12
            }]
        );
    }

    /// A thread spins for 300 ms; the snapshot whose period covers 250 ms of it
    /// shows it in host CPU (it used to be measured over a different, longer window).
    #[cfg(target_os = "linux")]
    #[test]
    fn host_cpu_covers_the_snapshot_period() {
        use crate::protocol::{ServerInfo, Versions};
        let _serial = crate::test_support::timing_lock();
        let info = ServerInfo {
            v: PROTOCOL_VERSION,
            model: Model::Node,
            app: "127.0.0.1:0".into(),
            telemetry: "127.0.0.1:0".into(),
            pid: std::process::id(),
            workers: vec![],
            pool_size: 4,
            period_ms: 100,
            lag_resolution_ms: 1.0,
            slow_poll_ms: 50.0,
            versions: Versions {
                loopscope: "test".into(),
                protocol: PROTOCOL_VERSION,
            },
        };
        let hub = Arc::new(TelemetryHub::new(info, Instant::now()));
        let mut publisher = Publisher::new(
            Aggregator::new(Model::Node, Duration::from_millis(100)),
            Arc::clone(&hub),
        );
        let spinner = std::thread::spawn(|| {
            let end = Instant::now() + Duration::from_millis(300);
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            x
        });
        std::thread::sleep(Duration::from_millis(20));
        publisher.publish();
        std::thread::sleep(Duration::from_millis(250));
        publisher.publish();
        spinner.join().unwrap();
        let host = hub.latest().expect("a snapshot").host.clone();
        // A full core when idle; a loaded 2-core machine still gives it half.
        assert!(host.cpu >= 50.0, "{host:?}");
        assert!(host.cpu <= 100.0 * host.cores as f64 + 0.1, "{host:?}");
    }
}
