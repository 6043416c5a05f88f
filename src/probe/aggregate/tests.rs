//! The aggregator's own clock, the CPU of a silent worker, and cumulative figures.

use super::*;
use crate::protocol::{DurationHistogram, WorkerTotals};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_clock_skips_ticks_it_missed() {
    let t0 = Instant::now();
    assert_eq!(next_tick(t0, ms(100), t0 + ms(5)), t0 + ms(100));
    assert_eq!(next_tick(t0, ms(100), t0 + ms(130)), t0 + ms(200));
    assert_eq!(next_tick(t0, ms(100), t0 + ms(350)), t0 + ms(400));
}

#[cfg(target_os = "linux")]
#[test]
fn cpu_of_a_stopped_process_reads_zero() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped() && Instant::now() < deadline {
        std::thread::sleep(ms(5));
    }
    let mut cpu = ProcessCpu::new(pid);
    assert_eq!(cpu.sample(), None, "no baseline yet");
    std::thread::sleep(ms(20));
    let c = cpu.sample().expect("a second reading");
    assert_eq!(c.process, 0.0);
    let _ = child.kill();
    let _ = child.wait();
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

/// A multi-thread runtime's batch (one report per worker, the runtime's figures
/// on the last) makes one snapshot with every worker and that batch's runtime.
#[test]
fn a_batch_of_worker_reports_carries_its_own_runtime_figures() {
    use crate::protocol::{RuntimeSnapshot, WorkerReport, WorkerSnapshot};
    let mut a = Aggregator::new(Model::Tokio, ms(100));
    let t0 = Instant::now();
    for id in 0..2 {
        a.apply(Feed::WorkerStarted { id, pid: 7 }, t0);
    }
    for batch in 1..=3u64 {
        let now = t0 + ms(100 * batch);
        for id in 0..2u32 {
            let mut w = WorkerSnapshot {
                id,
                pid: 7,
                alive: true,
                ..Default::default()
            };
            w.pool.threads = batch as u32;
            let report = WorkerReport {
                worker: w,
                events: vec![],
                urgent: false,
                runtime: (id == 1).then(|| RuntimeSnapshot {
                    blocking_threads: batch as u32,
                    ..Default::default()
                }),
            };
            let publish = a.apply(Feed::Report(Box::new(report)), now);
            assert!(!publish);
            assert_eq!(a.ready(now), id == 1, "batch {batch} worker {id}");
        }
        let s = a.snapshot(batch * 100, HostSnapshot::default(), now);
        assert_eq!(s.workers.len(), 2);
        assert_eq!(s.workers[0].pool.threads, batch as u32);
        assert_eq!(s.runtime.unwrap().blocking_threads, batch as u32);
    }
}

fn with_totals(id: u32, pid: u32, stalled_s: f64, lag: Vec<u64>) -> Feed {
    Feed::Report(Box::new(WorkerReport {
        worker: WorkerSnapshot {
            id,
            pid,
            alive: true,
            totals: Some(WorkerTotals {
                lag: DurationHistogram {
                    buckets: lag,
                    sum_s: 0.5,
                },
                stalled_s,
                ..Default::default()
            }),
            ..Default::default()
        },
        events: vec![],
        urgent: false,
        runtime: None,
    }))
}

/// Cumulative figures: the newest report's, never less than shown before for the
/// same process, growing with a silence, from zero again for a new process.
#[test]
fn totals_are_the_newest_and_only_grow_per_process() {
    let t0 = Instant::now();
    let mut agg = Aggregator::new(Model::Fastapi, ms(100));
    agg.apply(Feed::WorkerStarted { id: 0, pid: 10 }, t0);
    agg.apply(with_totals(0, 10, 0.25, vec![5]), t0);
    agg.apply(with_totals(0, 10, 0.75, vec![9, 0, 1]), t0);
    let totals = |s: &Snapshot| s.workers[0].totals.clone().unwrap();
    let s1 = agg.snapshot(100, HostSnapshot::default(), t0);
    assert_eq!(totals(&s1).lag.buckets, vec![9, 0, 1]);
    assert_eq!(totals(&s1).stalled_s, 0.75);
    // A report that read a stall as it ended (a moment's undercount) shows no less.
    agg.apply(with_totals(0, 10, 0.7, vec![9, 0, 1]), t0 + ms(100));
    let s2 = agg.snapshot(200, HostSnapshot::default(), t0 + ms(100));
    assert_eq!(totals(&s2).stalled_s, 0.75);
    // Silent for 2 s: its stall goes on from its last report.
    let late = t0 + ms(2100);
    let s3 = agg.snapshot(2100, HostSnapshot::default(), late);
    assert!(s3.workers[0].silent_for_ms.is_some());
    assert!(
        (totals(&s3).stalled_s - 2.7).abs() < 1e-6,
        "{:?}",
        totals(&s3)
    );
    // A new process starts from zero.
    agg.apply(Feed::WorkerStarted { id: 0, pid: 20 }, late);
    agg.apply(with_totals(0, 20, 0.0, vec![1]), late);
    let s4 = agg.snapshot(2200, HostSnapshot::default(), late);
    assert_eq!((s4.workers[0].pid, totals(&s4).stalled_s), (20, 0.0));
}
