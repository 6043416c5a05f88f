//! Prometheus text exposition (format 0.0.4) of the newest snapshot, in base units
//! (seconds, ratios) after the Prometheus naming conventions.
//!
//! What a scrape every 15 s must not miss is cumulative: the lag and task-poll
//! histograms, the stalled seconds and the CPU seconds come from each worker's
//! [`WorkerTotals`](crate::protocol::WorkerTotals) (counted since its process started, so a stall between two
//! scrapes is in the second one: `histogram_quantile(0.99,
//! rate(loopscope_loop_lag_seconds_bucket[1m]))` works). Everything else is a gauge
//! of the moment or a `_total` counter. A worker process that is replaced starts
//! its counters again from zero, which `rate()` takes as a counter reset.
//!
//! Every series has the label `model`; per-worker ones `worker` (the slot, stable
//! across restarts); `loopscope_worker_up` also has `pid`. The families:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `loopscope_loop_lag_seconds` | histogram | `worker` |
//! | `loopscope_worker_poll_duration_seconds` | histogram | `worker` |
//! | `loopscope_runtime_scheduling_delay_seconds` | histogram | |
//! | `loopscope_loop_stalled_seconds_total` | counter | `worker` |
//! | `loopscope_cpu_seconds_total` | counter | `worker`, `thread` (`loop`, `pool`, `process`) |
//! | `loopscope_loop_current_stall_seconds` | gauge | `worker` |
//! | `loopscope_loop_utilization_ratio` | gauge | `worker` |
//! | `loopscope_worker_up` | gauge | `worker`, `pid` |
//! | `loopscope_worker_restarts_total` | counter | `worker` |
//! | `loopscope_pool_size`, `_threads`, `_busy`, `_queued` | gauge | `worker` |
//! | `loopscope_pool_oldest_wait_seconds` | gauge | `worker` |
//! | `loopscope_pool_completed_total` | counter | `worker` |
//! | `loopscope_requests_in_flight` | gauge | `worker` |
//! | `loopscope_requests_completed_total` | counter | `worker` |
//! | `loopscope_runtime_global_queue`, `loopscope_runtime_alive_tasks` | gauge | |
//! | `loopscope_host_cpu_utilization_ratio`, `loopscope_host_cores` | gauge | |
//! | `loopscope_telemetry_skipped_lines_total` | counter | |
//!
//! Loop lag and task-poll durations are two families, not one with a label: they
//! measure different things (how late a timer on an event loop ran; how long a
//! task held a multi-thread runtime's worker), so a sum or quantile across both
//! would mean nothing. A `current_thread` loop has the first, each worker of a
//! `multi_thread` runtime the second, and its runtime the scheduling delay (the lag
//! timer's method on the whole runtime). Families with no series are left out.
//!
//! Written by hand: the figures already exist as one snapshot, and the format is a few
//! lines per family; a metrics registry would only copy them again.

use std::fmt::Write;

use crate::protocol::{DurationHistogram, HISTOGRAM_BOUNDS_US, Snapshot, WorkerSnapshot};

/// The text being written, one family after another.
struct Text {
    out: String,
    model: &'static str,
}

impl Text {
    /// A family's `# HELP` and `# TYPE` lines and its samples, unless it has none.
    /// Each row is (labels after `model`, each `,name="value"`; value).
    fn family(&mut self, name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>) {
        if rows.is_empty() {
            return;
        }
        self.head(name, kind, help);
        for (labels, value) in rows {
            self.sample(name, &labels, value);
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP loopscope_{name} {help}");
        let _ = writeln!(self.out, "# TYPE loopscope_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let model = self.model;
        let _ = writeln!(
            self.out,
            "loopscope_{name}{{model=\"{model}\"{labels}}} {value}"
        );
    }

    /// A histogram family: `_bucket` per bound and `+Inf`, `_sum`, `_count`.
    fn histogram(&mut self, name: &str, help: &str, rows: Vec<(String, &DurationHistogram)>) {
        if rows.is_empty() {
            return;
        }
        self.head(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (labels, h) in rows {
            for (bound, n) in HISTOGRAM_BOUNDS_US.iter().zip(h.at_most()) {
                let le = *bound as f64 / 1e6;
                self.sample(&bucket, &format!("{labels},le=\"{le}\""), n);
            }
            let count = h.count();
            self.sample(&bucket, &format!("{labels},le=\"+Inf\""), count);
            self.sample(&format!("{name}_sum"), &labels, h.sum_s);
            self.sample(&format!("{name}_count"), &labels, count);
        }
    }
}

fn worker_label(w: &WorkerSnapshot) -> String {
    format!(",worker=\"{}\"", w.id)
}

/// The snapshot as Prometheus text; `skipped_lines` counts telemetry lines slow
/// readers skipped.
pub fn render(s: &Snapshot, skipped_lines: u64) -> String {
    let mut t = Text {
        out: String::with_capacity(8192),
        model: s.model.as_str(),
    };
    let per_worker = |f: &dyn Fn(&WorkerSnapshot) -> f64| -> Vec<(String, f64)> {
        s.workers.iter().map(|w| (worker_label(w), f(w))).collect()
    };
    let with_totals = || {
        s.workers
            .iter()
            .filter_map(|w| Some((w, w.totals.as_ref()?)))
    };

    let (polls, loops): (Vec<_>, Vec<_>) = with_totals().partition(|(w, _)| w.runtime.is_some());
    t.histogram(
        "loop_lag_seconds",
        "How late the event loop ran its lag timer: every sample since the worker started.",
        loops
            .iter()
            .map(|(w, x)| (worker_label(w), &x.lag))
            .collect(),
    );
    t.histogram(
        "worker_poll_duration_seconds",
        "How long each task poll held a multi-thread runtime's worker, since it started.",
        polls
            .iter()
            .map(|(w, x)| (worker_label(w), &x.lag))
            .collect(),
    );
    let delay = s
        .runtime
        .as_ref()
        .and_then(|r| r.scheduling_delay_total.as_ref());
    t.histogram(
        "runtime_scheduling_delay_seconds",
        "How long a ready task waited for a worker of the runtime, since it started.",
        delay.map(|h| (String::new(), h)).into_iter().collect(),
    );
    t.family(
        "loop_stalled_seconds_total",
        "counter",
        "Time the loop (or worker) spent stalled, the stall going on now included.",
        with_totals()
            .map(|(w, x)| (worker_label(w), x.stalled_s))
            .collect(),
    );
    let mut cpu = Vec::new();
    for (w, x) in with_totals() {
        for (thread, v) in [
            ("loop", x.cpu_s.loop_thread),
            ("pool", x.cpu_s.pool_threads),
            ("process", x.cpu_s.process),
        ] {
            cpu.push((format!(",worker=\"{}\",thread=\"{thread}\"", w.id), v));
        }
    }
    t.family(
        "cpu_seconds_total",
        "counter",
        "CPU time of the worker's loop thread, its pool threads, its whole process.",
        cpu,
    );
    t.family(
        "loop_current_stall_seconds",
        "gauge",
        "How long the loop (or worker) has been stalled right now; 0 while it runs.",
        per_worker(&|w| w.stalled_for_ms / 1000.0),
    );
    t.family(
        "loop_utilization_ratio",
        "gauge",
        "Busy fraction of the event-loop thread over the last sample period.",
        per_worker(&|w| w.loop_utilization),
    );
    t.family(
        "worker_up",
        "gauge",
        "1 while the worker process is alive.",
        s.workers
            .iter()
            .map(|w| {
                let labels = format!(",worker=\"{}\",pid=\"{}\"", w.id, w.pid);
                (labels, if w.alive { 1.0 } else { 0.0 })
            })
            .collect(),
    );
    t.family(
        "worker_restarts_total",
        "counter",
        "Times the worker slot was respawned.",
        per_worker(&|w| w.restarts as f64),
    );
    pool_and_requests(&mut t, &per_worker);
    if let Some(r) = &s.runtime {
        t.family(
            "runtime_global_queue",
            "gauge",
            "Tasks waiting in the runtime's global queue.",
            vec![(String::new(), r.global_queue as f64)],
        );
        t.family(
            "runtime_alive_tasks",
            "gauge",
            "Tasks alive in the runtime.",
            vec![(String::new(), r.alive_tasks as f64)],
        );
    }
    let cores = s.host.cores.max(1) as f64;
    t.family(
        "host_cpu_utilization_ratio",
        "gauge",
        "Host CPU over the last sample period, as a fraction of all its cores.",
        vec![(String::new(), s.host.cpu / 100.0 / cores)],
    );
    t.family(
        "host_cores",
        "gauge",
        "Logical cores of the host.",
        vec![(String::new(), s.host.cores as f64)],
    );
    t.family(
        "telemetry_skipped_lines_total",
        "counter",
        "Telemetry lines that slow readers skipped.",
        vec![(String::new(), skipped_lines as f64)],
    );
    t.out
}

type PerWorker<'a> = dyn Fn(&dyn Fn(&WorkerSnapshot) -> f64) -> Vec<(String, f64)> + 'a;

fn pool_and_requests(t: &mut Text, per_worker: &PerWorker<'_>) {
    for (name, kind, help, f) in [
        (
            "pool_size",
            "gauge",
            "Most pool jobs that can run at once.",
            (|w| w.pool.size as f64) as fn(&WorkerSnapshot) -> f64,
        ),
        ("pool_threads", "gauge", "Pool threads started.", |w| {
            w.pool.threads as f64
        }),
        ("pool_busy", "gauge", "Pool jobs running.", |w| {
            w.pool.busy as f64
        }),
        (
            "pool_queued",
            "gauge",
            "Pool jobs waiting for a thread.",
            |w| w.pool.queued as f64,
        ),
        (
            "pool_oldest_wait_seconds",
            "gauge",
            "How long the oldest job waiting for a pool thread has waited.",
            |w| w.pool.oldest_wait_ms / 1000.0,
        ),
        (
            "pool_completed_total",
            "counter",
            "Pool jobs completed.",
            |w| w.pool.completed as f64,
        ),
        (
            "requests_in_flight",
            "gauge",
            "Requests accepted and not yet answered.",
            |w| w.requests.in_flight as f64,
        ),
        (
            "requests_completed_total",
            "counter",
            "Requests answered.",
            |w| w.requests.completed as f64,
        ),
    ] {
        t.family(name, kind, help, per_worker(&f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        CpuSeconds, HostSnapshot, Model, RuntimeSnapshot, WorkerThreadSnapshot, WorkerTotals,
    };

    fn totals(buckets: Vec<u64>, stalled_s: f64) -> Option<WorkerTotals> {
        Some(WorkerTotals {
            lag: DurationHistogram {
                buckets,
                sum_s: 1.25,
            },
            stalled_s,
            cpu_s: CpuSeconds {
                process: 3.5,
                loop_thread: 2.0,
                pool_threads: 1.0,
            },
        })
    }

    fn snapshot(model: Model, workers: Vec<WorkerSnapshot>) -> Snapshot {
        Snapshot {
            v: 2,
            seq: 1,
            t_ms: 100,
            model,
            period_ms: 100,
            workers,
            host: HostSnapshot {
                cpu: 50.0,
                cores: 2,
            },
            events: vec![],
            runtime: None,
        }
    }

    /// The text, checked line by line: every sample belongs to the family declared
    /// just before it, and a family is declared once.
    fn families(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut help = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = Some(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help.take().as_deref(), Some(name), "HELP before TYPE");
                assert!(out.iter().all(|(n, _)| n != name), "{name} twice");
                out.push((name.into(), kind.into()));
            } else {
                let (name, kind) = out.last().expect("a sample after a TYPE");
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<f64>().unwrap();
                let metric = series.split('{').next().unwrap();
                let ok = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| metric.strip_suffix(s) == Some(name.as_str())),
                    _ => metric == name,
                };
                assert!(ok, "{metric} under {name} ({kind})");
                assert!(series.contains("{model=\""), "{line}");
            }
        }
        out
    }

    #[test]
    fn a_loop_renders_cumulative_histograms_and_counters_in_seconds() {
        let mut w0 = WorkerSnapshot {
            id: 0,
            pid: 100,
            alive: true,
            stalled_for_ms: 250.0,
            totals: totals(vec![900, 50, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2], 0.75),
            ..Default::default()
        };
        w0.pool.oldest_wait_ms = 1500.0;
        // Just restarted: no cumulative figures yet, so no series of them.
        let w1 = WorkerSnapshot {
            id: 1,
            pid: 101,
            alive: true,
            ..Default::default()
        };
        let text = render(&snapshot(Model::Fastapi, vec![w0, w1]), 3);
        let fams = families(&text);
        let kind = |n: &str| fams.iter().find(|(f, _)| f == n).map(|(_, k)| k.as_str());
        assert_eq!(kind("loopscope_loop_lag_seconds"), Some("histogram"));
        assert_eq!(
            kind("loopscope_loop_stalled_seconds_total"),
            Some("counter")
        );
        assert_eq!(kind("loopscope_cpu_seconds_total"), Some("counter"));
        assert_eq!(kind("loopscope_pool_oldest_wait_seconds"), Some("gauge"));
        assert_eq!(kind("loopscope_worker_poll_duration_seconds"), None);
        assert!(
            fams.iter()
                .all(|(f, _)| !f.contains("_ms") && !f.contains("percent"))
        );
        for line in [
            "loopscope_loop_lag_seconds_bucket{model=\"fastapi\",worker=\"0\",le=\"0.0001\"} 900\n",
            "loopscope_loop_lag_seconds_bucket{model=\"fastapi\",worker=\"0\",le=\"0.25\"} 950\n",
            "loopscope_loop_lag_seconds_bucket{model=\"fastapi\",worker=\"0\",le=\"0.5\"} 951\n",
            "loopscope_loop_lag_seconds_bucket{model=\"fastapi\",worker=\"0\",le=\"10\"} 953\n",
            "loopscope_loop_lag_seconds_bucket{model=\"fastapi\",worker=\"0\",le=\"+Inf\"} 953\n",
            "loopscope_loop_lag_seconds_sum{model=\"fastapi\",worker=\"0\"} 1.25\n",
            "loopscope_loop_lag_seconds_count{model=\"fastapi\",worker=\"0\"} 953\n",
            "loopscope_loop_stalled_seconds_total{model=\"fastapi\",worker=\"0\"} 0.75\n",
            "loopscope_cpu_seconds_total{model=\"fastapi\",worker=\"0\",thread=\"process\"} 3.5\n",
            "loopscope_loop_current_stall_seconds{model=\"fastapi\",worker=\"0\"} 0.25\n",
            "loopscope_worker_up{model=\"fastapi\",worker=\"1\",pid=\"101\"} 1\n",
            "loopscope_pool_oldest_wait_seconds{model=\"fastapi\",worker=\"0\"} 1.5\n",
            "loopscope_host_cpu_utilization_ratio{model=\"fastapi\"} 0.25\n",
            "loopscope_telemetry_skipped_lines_total{model=\"fastapi\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("le=\"").count(), HISTOGRAM_BOUNDS_US.len() + 1);
        assert!(
            !text.contains("loopscope_loop_stalled_seconds_total{model=\"fastapi\",worker=\"1\"}")
        );
    }

    #[test]
    fn multi_thread_workers_render_poll_durations_and_the_runtime_delay() {
        let workers = (0..2)
            .map(|id| WorkerSnapshot {
                id,
                alive: true,
                runtime: Some(WorkerThreadSnapshot::default()),
                totals: totals(vec![10, 0, 1], 0.0),
                ..Default::default()
            })
            .collect();
        let mut snap = snapshot(Model::Tokio, workers);
        snap.runtime = Some(RuntimeSnapshot {
            workers: 2,
            global_queue: 4,
            scheduling_delay_total: Some(DurationHistogram {
                buckets: vec![0, 7],
                sum_s: 0.002,
            }),
            ..Default::default()
        });
        let text = render(&snap, 0);
        let fams = families(&text);
        let names: Vec<&str> = fams.iter().map(|(f, _)| f.as_str()).collect();
        assert!(!names.contains(&"loopscope_loop_lag_seconds"), "{names:?}");
        assert!(names.contains(&"loopscope_worker_poll_duration_seconds"));
        assert!(names.contains(&"loopscope_runtime_scheduling_delay_seconds"));
        assert!(text.contains(
            "loopscope_worker_poll_duration_seconds_bucket{model=\"tokio\",worker=\"1\",le=\"0.001\"} 11\n"
        ));
        assert!(text.contains(
            "loopscope_runtime_scheduling_delay_seconds_bucket{model=\"tokio\",le=\"0.0005\"} 7\n"
        ));
        assert!(text.contains("loopscope_runtime_global_queue{model=\"tokio\"} 4\n"));
    }
}
