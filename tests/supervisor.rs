//! What the supervisor reports about workers that cannot report themselves: the
//! merging of reports on its own (a pure state machine fed with clock readings), then
//! a real fastapi demo with a worker stopped. And what a burst of big requests leaves
//! in memory. Real processes over loopback.

mod common;

use std::time::{Duration, Instant};

use common::{Demo, get, next, runtime, serial, telemetry, until};
use loopscope::client::http;
use loopscope::probe::aggregate::{Aggregator, Feed};
use loopscope::protocol::{
    Event, HostSnapshot, LagSummary, Model, Snapshot, WorkerReport, WorkerSnapshot,
};

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
        runtime: None,
    }))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn publishes_when_every_live_worker_reported() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    agg.apply(Feed::WorkerStarted { id: 1, pid: 11 }, t0);
    assert!(!agg.ready(t0));
    assert!(!agg.apply(report(0, 10, 1.0, false), t0));
    assert!(!agg.ready(t0));
    agg.apply(report(0, 10, 480.0, false), t0);
    agg.apply(report(1, 11, 2.0, false), t0);
    assert!(agg.ready(t0));
    let snap = agg.snapshot(100, HostSnapshot::default(), t0);
    assert_eq!(snap.seq, 1);
    assert_eq!(snap.workers.len(), 2);
    // Two reports of worker 0 merged: the larger max survives, samples add up.
    assert_eq!(snap.workers[0].lag_ms.max, 480.0);
    assert_eq!(snap.workers[0].lag_ms.samples, 20);
    assert_eq!(snap.workers[1].lag_ms.max, 2.0);
    assert!(!agg.ready(t0));
}

#[test]
fn a_stall_onset_is_urgent() {
    let mut agg = Aggregator::new(Model::Node, ms(100));
    let t0 = Instant::now();
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    assert!(agg.apply(report(0, 10, 0.0, true), t0));
}

#[test]
fn a_respawned_worker_gets_its_new_pid_and_stale_lines_are_ignored() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 1, pid: 11 }, t0);
    agg.apply(
        Feed::WorkerExited {
            id: 1,
            pid: 11,
            status: "killed by signal 9".into(),
        },
        t0,
    );
    let snap = agg.snapshot(100, HostSnapshot::default(), t0);
    assert!(!snap.workers[0].alive);
    assert_eq!(snap.events.len(), 1);
    agg.apply(Feed::WorkerStarted { id: 1, pid: 12 }, t0);
    agg.apply(report(1, 11, 99.0, false), t0);
    let snap = agg.snapshot(200, HostSnapshot::default(), t0);
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

/// A worker whose reports stop keeps its last figures, and shows how long it has
/// been silent and a stall counted from its last report; the others go on; the
/// silence ends with its next report.
#[test]
fn a_worker_whose_reports_stop_is_silent_then_not() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    agg.apply(Feed::WorkerStarted { id: 1, pid: 11 }, t0);
    agg.apply(report(0, 10, 1.0, false), t0 + ms(100));
    let mut last_of_1 = report(1, 11, 7.0, false);
    if let Feed::Report(r) = &mut last_of_1 {
        r.worker.stalled_for_ms = 40.0;
        r.worker.cpu.process = 2.0;
    }
    agg.apply(last_of_1, t0 + ms(100));
    agg.snapshot(100, HostSnapshot::default(), t0 + ms(100));

    // Worker 1 goes quiet; worker 0 reports on.
    for k in 2..=3 {
        agg.apply(report(0, 10, 1.0, false), t0 + ms(100 * k));
        let snap = agg.snapshot(100 * k, HostSnapshot::default(), t0 + ms(100 * k));
        assert_eq!(snap.workers[1].silent_for_ms, None, "not silent yet at {k}");
        assert_eq!(snap.workers[1].stalled_for_ms, 40.0);
    }
    assert_eq!(agg.overdue(t0 + ms(300)), vec![11]);
    assert!(agg.awaiting(t0 + ms(300), ms(25)), "its report is overdue");
    agg.apply(report(0, 10, 1.0, false), t0 + ms(400));
    assert!(agg.ready(t0 + ms(400)), "a silent worker is not waited for");
    assert!(!agg.awaiting(t0 + ms(400), ms(25)));
    let snap = agg.snapshot(400, HostSnapshot::default(), t0 + ms(400));
    let w1 = &snap.workers[1];
    assert_eq!(w1.silent_for_ms, Some(300.0));
    assert_eq!(
        w1.stalled_for_ms, 340.0,
        "its stall runs on from its last report"
    );
    assert!(w1.alive);
    assert_eq!(w1.lag_ms.max, 7.0, "its last figures are kept");
    let w0 = &snap.workers[0];
    assert_eq!((w0.silent_for_ms, w0.stalled_for_ms), (None, 0.0));

    let snap = agg.snapshot(500, HostSnapshot::default(), t0 + ms(500));
    assert_eq!(snap.workers[1].silent_for_ms, Some(400.0));

    agg.apply(report(1, 11, 2100.0, false), t0 + ms(550));
    let snap = agg.snapshot(600, HostSnapshot::default(), t0 + ms(600));
    let w1 = &snap.workers[1];
    assert_eq!((w1.silent_for_ms, w1.stalled_for_ms), (None, 0.0));
    assert_eq!(w1.lag_ms.max, 2100.0);
}

#[test]
fn a_starting_worker_gets_a_grace_and_a_dead_one_is_not_silent() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    let snap = agg.snapshot(500, HostSnapshot::default(), t0 + ms(500));
    assert_eq!(snap.workers[0].silent_for_ms, None);
    let snap = agg.snapshot(1300, HostSnapshot::default(), t0 + ms(1300));
    assert_eq!(snap.workers[0].silent_for_ms, Some(1300.0));
    agg.apply(
        Feed::WorkerExited {
            id: 0,
            pid: 10,
            status: "killed by signal 9".into(),
        },
        t0 + ms(1300),
    );
    let snap = agg.snapshot(1400, HostSnapshot::default(), t0 + ms(1400));
    assert_eq!(snap.workers[0].silent_for_ms, None);
    assert!(agg.overdue(t0 + ms(1400)).is_empty());
}

#[test]
fn a_report_due_now_is_awaited_one_due_later_is_not() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    assert!(
        !agg.awaiting(t0 + ms(200), ms(25)),
        "never reported: not awaited"
    );
    agg.apply(report(0, 10, 1.0, false), t0 + ms(10));
    agg.snapshot(100, HostSnapshot::default(), t0 + ms(20));
    // Its next report comes about t0 + 110 ms.
    assert!(!agg.awaiting(t0 + ms(70), ms(25)));
    assert!(agg.awaiting(t0 + ms(100), ms(25)));
    agg.apply(report(0, 10, 1.0, false), t0 + ms(108));
    assert!(!agg.awaiting(t0 + ms(108), ms(25)), "it arrived");
}

/// A worker process held with SIGSTOP; continued when dropped, whatever happened.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        // SAFETY: kill(2) on the pid of a worker of the demo this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn fastapi_a_stopped_worker_is_reported_silent_and_the_stream_keeps_its_period() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "fastapi", "--workers", "2"]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        let ready = until(&mut tel, Duration::from_secs(10), |s| {
            s.workers.len() == 2 && s.workers.iter().all(|w| w.alive && w.lag_ms.samples > 0)
        })
        .await
        .expect("both workers report");
        let pid = ready.workers[1].pid;

        let stopped = Stopped::new(pid);
        let t_stop = Instant::now();
        let mut during: Vec<Snapshot> = Vec::new();
        while t_stop.elapsed() < Duration::from_secs(2) {
            during.push(next(&mut tel).await);
        }
        drop(stopped);

        // Within a second, worker 1 shows as silent, for longer and longer, and stalled.
        let first = during
            .iter()
            .position(|s| s.workers[1].silent_for_ms.is_some_and(|ms| ms >= 300.0))
            .expect("worker 1 shown silent for >= 300 ms during the stop");
        let line = |s: &Snapshot| {
            let w = &s.workers[1];
            (s.t_ms, w.silent_for_ms, w.stalled_for_ms, w.cpu.process)
        };
        let lines: Vec<_> = during.iter().map(line).collect();
        let shown_at = during[first].t_ms - during[0].t_ms;
        assert!(
            shown_at <= 1000,
            "silent only {shown_at} ms into the stop: {lines:?}"
        );
        let silent: Vec<&Snapshot> = during[first..].iter().collect();
        assert!(silent.len() >= 5, "{lines:?}");
        for pair in silent.windows(2) {
            let (a, b) = (&pair[0].workers[1], &pair[1].workers[1]);
            assert!(
                b.silent_for_ms > a.silent_for_ms,
                "silent_for_ms grows: {lines:?}"
            );
        }
        for s in &silent {
            let w = &s.workers[1];
            assert!(w.alive);
            assert!(
                w.stalled_for_ms >= w.silent_for_ms.unwrap(),
                "stalled since its last report: {lines:?}"
            );
            // Read by the supervisor: a stopped process uses no CPU.
            assert_eq!(w.cpu.process, 0.0, "{lines:?}");
        }
        // Worker 0 runs on as usual.
        for s in &during {
            let w = &s.workers[0];
            assert!(
                w.alive && w.silent_for_ms.is_none() && w.stalled_for_ms < 100.0,
                "worker 0: {w:?}"
            );
        }
        // The stream keeps its period while a worker says nothing.
        let intervals: Vec<f64> = during
            .windows(2)
            .map(|p| p[1].t_ms.saturating_sub(p[0].t_ms) as f64)
            .collect();
        let period = median(intervals.clone());
        assert!(
            (80.0..=120.0).contains(&period),
            "median interval {period} ms: {intervals:?}"
        );

        // Continued, it reports again and the silence is over.
        until(&mut tel, Duration::from_secs(3), |s| {
            s.workers[1].pid == pid && s.workers[1].silent_for_ms.is_none()
        })
        .await
        .expect("silent_for_ms clears once worker 1 reports again");
    });
}

/// Resident and peak resident memory of a process, in MB (VmRSS, VmHWM).
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Six concurrent 32 MB parses on the node demo's four pool threads: the peak stays
/// within the 1024 MB budget plus its 256 MB margin (each parse holds ~370 MB, so
/// only two may run at once), and the memory goes back to the system afterwards
/// (only the 32 MB document stays cached).
#[test]
fn node_a_burst_of_big_parses_stays_in_budget_and_memory_is_returned() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    runtime().block_on(async {
        let _tel = telemetry(&demo.telemetry).await;
        let client = http::client();
        let jobs: Vec<_> = (0..6)
            .map(|_| {
                let c = client.clone();
                let app = demo.app.clone();
                tokio::spawn(async move { get(&c, &app, "/offload?mb=32").await })
            })
            .collect();
        for j in jobs {
            let r = j.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    let (_, peak) = memory_mb(demo.pid);
    assert!(peak < 1024.0 + 256.0, "peak RSS {peak:.0} MB");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rss = memory_mb(demo.pid).0;
    while rss >= 200.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        rss = memory_mb(demo.pid).0;
    }
    assert!(
        rss < 200.0,
        "RSS {rss:.0} MB after the burst (peak {peak:.0} MB)"
    );
}
