//! Prometheus text exposition (format 0.0.4) of the newest snapshot.
//!
//! Written by hand: the figures already exist as one snapshot, and the format is a few
//! lines per family; a metrics registry would only copy them again.

use std::fmt::Write;

use crate::protocol::Snapshot;

/// The snapshot as Prometheus text; `skipped_lines` counts telemetry lines slow
/// readers skipped.
pub fn render(s: &Snapshot, skipped_lines: u64) -> String {
    let mut out = String::with_capacity(4096);
    let model = s.model.as_str();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP loopscope_{name} {help}");
        let _ = writeln!(out, "# TYPE loopscope_{name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "loopscope_{name}{{model=\"{model}\"{labels}}} {value}");
        }
    };
    let per_worker = |f: &dyn Fn(&crate::protocol::WorkerSnapshot) -> f64| -> Vec<(String, f64)> {
        s.workers
            .iter()
            .map(|w| (format!(",worker=\"{}\",pid=\"{}\"", w.id, w.pid), f(w)))
            .collect()
    };

    let mut lag = Vec::new();
    for w in &s.workers {
        for (q, v) in [
            ("0.5", w.lag_ms.p50),
            ("0.99", w.lag_ms.p99),
            ("1", w.lag_ms.max),
        ] {
            lag.push((format!(",worker=\"{}\",quantile=\"{q}\"", w.id), v));
        }
    }
    family(
        "loop_lag_ms",
        "gauge",
        "Event-loop timer lag over the last sample period, in milliseconds.",
        lag,
    );
    family(
        "loop_stalled_for_ms",
        "gauge",
        "How long the loop has been blocked right now (0 while it runs).",
        per_worker(&|w| w.stalled_for_ms),
    );
    family(
        "loop_utilization_ratio",
        "gauge",
        "Busy fraction of the event-loop thread over the last period.",
        per_worker(&|w| w.loop_utilization),
    );
    family(
        "worker_up",
        "gauge",
        "1 while the worker process is alive.",
        per_worker(&|w| if w.alive { 1.0 } else { 0.0 }),
    );
    family(
        "worker_restarts_total",
        "counter",
        "Times the worker slot was respawned.",
        per_worker(&|w| w.restarts as f64),
    );
    family(
        "pool_size",
        "gauge",
        "Most pool jobs that can run at once.",
        per_worker(&|w| w.pool.size as f64),
    );
    family(
        "pool_busy",
        "gauge",
        "Pool jobs running.",
        per_worker(&|w| w.pool.busy as f64),
    );
    family(
        "pool_queued",
        "gauge",
        "Pool jobs waiting for a thread.",
        per_worker(&|w| w.pool.queued as f64),
    );
    family(
        "pool_wait_max_ms",
        "gauge",
        "Longest pool queue wait over the last period, in milliseconds.",
        per_worker(&|w| w.pool.wait_ms_max),
    );
    family(
        "pool_completed_total",
        "counter",
        "Pool jobs completed.",
        per_worker(&|w| w.pool.completed as f64),
    );
    let mut cpu = Vec::new();
    for w in &s.workers {
        for (thread, v) in [
            ("process", w.cpu.process),
            ("loop", w.cpu.loop_thread),
            ("pool", w.cpu.pool_threads),
        ] {
            cpu.push((format!(",worker=\"{}\",thread=\"{thread}\"", w.id), v));
        }
    }
    family(
        "cpu_percent",
        "gauge",
        "CPU over the last period, in percent of one core.",
        cpu,
    );
    family(
        "requests_in_flight",
        "gauge",
        "Requests accepted and not yet answered.",
        per_worker(&|w| w.requests.in_flight as f64),
    );
    family(
        "requests_completed_total",
        "counter",
        "Requests answered.",
        per_worker(&|w| w.requests.completed as f64),
    );
    family(
        "host_cpu_percent",
        "gauge",
        "Host CPU, in percent of one core.",
        vec![(String::new(), s.host.cpu)],
    );
    family(
        "telemetry_skipped_lines_total",
        "counter",
        "Telemetry lines that slow readers skipped.",
        vec![(String::new(), skipped_lines as f64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HostSnapshot, LagSummary, Model, WorkerSnapshot};

    #[test]
    fn renders_every_worker_with_labels() {
        let snap = Snapshot {
            v: 1,
            seq: 1,
            t_ms: 100,
            model: Model::Fastapi,
            period_ms: 100,
            workers: (0..2)
                .map(|id| WorkerSnapshot {
                    id,
                    pid: 100 + id,
                    alive: true,
                    lag_ms: LagSummary {
                        p50: 0.25,
                        p99: 1.5,
                        max: 412.0,
                        samples: 90,
                    },
                    ..Default::default()
                })
                .collect(),
            host: HostSnapshot {
                cpu: 37.5,
                cores: 2,
            },
            events: vec![],
            runtime: None,
        };
        let text = render(&snap, 3);
        assert!(text.contains(
            "loopscope_loop_lag_ms{model=\"fastapi\",worker=\"1\",quantile=\"1\"} 412\n"
        ));
        assert!(
            text.contains("loopscope_worker_up{model=\"fastapi\",worker=\"0\",pid=\"100\"} 1\n")
        );
        assert!(text.contains("loopscope_host_cpu_percent{model=\"fastapi\"} 37.5\n"));
        assert!(text.contains("loopscope_telemetry_skipped_lines_total{model=\"fastapi\"} 3\n"));
        assert!(text.contains("# TYPE loopscope_pool_queued gauge\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
