//! A run's figures per worker: lag percentiles, the longest stall, the most jobs
//! queued, CPU mean and peak; the thresholds crossed. Shared by headless runs (the
//! table printed at the end) and anything else that sums up a recording.

use std::collections::BTreeMap;

use crate::protocol::{Model, Snapshot};

/// Most workers a summary keeps (a server chooses the ids).
const MAX_WORKERS: usize = 1024;
/// Most per-line medians kept per worker before thinning (a week of lines is 6M).
const MAX_P50S: usize = 100_000;

/// Figures of one worker over a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSummary {
    /// Median of the per-line lag medians, ms.
    pub lag_p50_ms: f64,
    /// Largest per-line lag p99, ms.
    pub lag_p99_ms: f64,
    /// Largest lag (or live stall), ms.
    pub lag_max_ms: f64,
    /// Longest stall seen live or as a slow poll, ms.
    pub longest_stall_ms: f64,
    /// Most jobs queued at once.
    pub max_queued: u32,
    /// Mean process CPU, % of one core (a multi-thread runtime's worker: its
    /// thread's CPU).
    pub cpu_mean: f64,
    /// Peak process CPU, % of one core (a worker thread's, as the mean).
    pub cpu_max: f64,
    p50s: Vec<f64>,
    cpu_sum: f64,
    lines: u64,
}

/// Accumulates a run's snapshots into per-worker figures.
#[derive(Debug, Default)]
pub struct Summary {
    /// Workers by model (a scenario can switch) and id.
    pub workers: BTreeMap<(Model, u32), WorkerSummary>,
    /// Lines seen.
    pub lines: u64,
}

impl Summary {
    /// Takes one snapshot.
    pub fn observe(&mut self, snap: &Snapshot) {
        self.lines += 1;
        for w in &snap.workers {
            if self.workers.len() >= MAX_WORKERS && !self.workers.contains_key(&(snap.model, w.id))
            {
                continue;
            }
            let s = self.workers.entry((snap.model, w.id)).or_default();
            if w.lag_ms.samples > 0 {
                s.p50s.push(w.lag_ms.p50);
                if s.p50s.len() >= MAX_P50S {
                    // A long run keeps a thinned sample: every other value, in order of
                    // size, which keeps the median.
                    s.p50s.sort_by(f64::total_cmp);
                    let thinned: Vec<f64> = s.p50s.iter().step_by(2).copied().collect();
                    s.p50s = thinned;
                }
            }
            s.lag_p99_ms = s.lag_p99_ms.max(w.lag_ms.p99);
            s.lag_max_ms = s.lag_max_ms.max(w.lag_ms.max).max(w.stalled_for_ms);
            s.longest_stall_ms = s.longest_stall_ms.max(w.stalled_for_ms);
            s.max_queued = s.max_queued.max(w.pool.queued);
            // A worker thread of a multi-thread runtime has a thread of its own,
            // not a process: the process CPU is on the first entry only.
            let cpu = if w.runtime.is_some() {
                w.cpu.loop_thread
            } else {
                w.cpu.process
            };
            s.cpu_sum += cpu;
            s.cpu_max = s.cpu_max.max(cpu);
            s.lines += 1;
        }
        for e in &snap.events {
            if let crate::protocol::Event::SlowPoll { worker, ms, .. } = e {
                let Some(s) = self.workers.get_mut(&(snap.model, *worker)) else {
                    continue;
                };
                s.longest_stall_ms = s.longest_stall_ms.max(*ms);
            }
        }
    }

    /// Finishes the figures that need every line.
    pub fn finish(&mut self) {
        for s in self.workers.values_mut() {
            s.p50s.sort_by(f64::total_cmp);
            s.lag_p50_ms = s.p50s.get(s.p50s.len() / 2).copied().unwrap_or(0.0);
            s.cpu_mean = if s.lines == 0 {
                0.0
            } else {
                s.cpu_sum / s.lines as f64
            };
        }
    }

    /// The table, one row per worker.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<6}{:>9}{:>9}{:>9}{:>15}{:>12}{:>10}{:>9}\n",
            "worker",
            "lag p50",
            "lag p99",
            "lag max",
            "longest stall",
            "max queued",
            "CPU mean",
            "CPU max"
        );
        let models = self.models();
        for ((model, id), s) in &self.workers {
            out.push_str(&format!(
                "{:<6}{:>9.2}{:>9.2}{:>9.1}{:>15.1}{:>12}{:>9.1}%{:>8.1}%\n",
                label(*model, *id, models),
                s.lag_p50_ms,
                s.lag_p99_ms,
                s.lag_max_ms,
                s.longest_stall_ms,
                s.max_queued,
                s.cpu_mean,
                s.cpu_max
            ));
        }
        if self.workers.keys().any(|(m, _)| *m == Model::Tokio) {
            out.push_str("(tokio: a worker's lag is its task-poll times, its CPU its thread's)\n");
        }
        out.push_str("(lag and stalls in ms; CPU in % of one core)\n");
        out
    }

    /// The thresholds crossed, as sentences.
    pub fn crossed(&self, fail_on_lag_ms: Option<f64>, fail_on_queue: Option<u32>) -> Vec<String> {
        let mut out = Vec::new();
        let models = self.models();
        for ((model, id), s) in &self.workers {
            let w = label(*model, *id, models);
            if let Some(limit) = fail_on_lag_ms {
                if s.lag_max_ms >= limit {
                    out.push(format!(
                        "{w}: loop lag reached {:.0} ms (limit {limit} ms)",
                        s.lag_max_ms
                    ));
                }
            }
            if let Some(limit) = fail_on_queue {
                if s.max_queued >= limit {
                    out.push(format!(
                        "{w}: pool queue reached {} (limit {limit})",
                        s.max_queued
                    ));
                }
            }
        }
        out
    }
}

impl Summary {
    /// How many models the run saw (a scenario can switch).
    fn models(&self) -> usize {
        let mut models: Vec<Model> = self.workers.keys().map(|(m, _)| *m).collect();
        models.dedup();
        models.len()
    }
}

/// `w0`, or `node w0` when the run saw more than one model.
fn label(model: Model, id: u32, models: usize) -> String {
    if models > 1 {
        format!("{model} w{id}")
    } else {
        format!("w{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LagSummary, Model, PoolSnapshot, Snapshot, WorkerSnapshot};

    #[test]
    fn summary_and_thresholds() {
        let mut s = Summary::default();
        for (t, max, stall, queued, cpu) in [
            (1, 1.0f64, 0.0, 0, 10.0),
            (2, 0.0, 250.0, 8, 90.0),
            (3, 412.0, 0.0, 2, 20.0),
        ] {
            s.observe(&Snapshot {
                v: 1,
                seq: t,
                t_ms: t * 100,
                model: Model::Node,
                period_ms: 100,
                workers: vec![WorkerSnapshot {
                    id: 0,
                    alive: true,
                    lag_ms: LagSummary {
                        p50: 0.3,
                        p99: max.min(5.0),
                        max,
                        samples: if max > 0.0 { 50 } else { 0 },
                    },
                    stalled_for_ms: stall,
                    pool: PoolSnapshot {
                        queued,
                        ..Default::default()
                    },
                    cpu: crate::protocol::CpuSnapshot {
                        process: cpu,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                host: Default::default(),
                events: vec![],
                runtime: None,
            });
        }
        s.finish();
        let w = &s.workers[&(Model::Node, 0)];
        assert_eq!(
            (w.lag_max_ms, w.longest_stall_ms, w.max_queued),
            (412.0, 250.0, 8)
        );
        assert_eq!((w.cpu_mean, w.cpu_max, w.lag_p50_ms), (40.0, 90.0, 0.3));
        let table = s.table();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            vec![
                "w0", "0.30", "5.00", "412.0", "250.0", "8", "40.0%", "90.0%"
            ],
            "{table}"
        );
        assert!(table.starts_with("worker  lag p50  lag p99  lag max  longest stall"));
        assert_eq!(s.crossed(Some(500.0), Some(9)), Vec::<String>::new());
        assert_eq!(
            s.crossed(Some(100.0), Some(8)),
            vec![
                "w0: loop lag reached 412 ms (limit 100 ms)".to_string(),
                "w0: pool queue reached 8 (limit 8)".to_string()
            ]
        );
    }
}
