//! The schedule, the lanes and the figures of the load generator.

use super::lane::backoff;
use super::*;

#[test]
fn schedule_is_evenly_spaced_from_the_start() {
    let t0 = Instant::now();
    assert_eq!(intended_send(t0, 100.0, 0), t0);
    assert_eq!(
        intended_send(t0, 100.0, 150) - t0,
        Duration::from_millis(1500)
    );
    assert_eq!(intended_send(t0, 4.0, 3) - t0, Duration::from_millis(750));
}

/// 100 req/s over `workers`, 100 ms timeout.
fn sched(t0: Instant, workers: u32) -> Schedule {
    Schedule {
        start: t0,
        rate: 100.0,
        workers,
        timeout: Duration::from_millis(100),
    }
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

#[test]
fn requests_go_round_robin_and_each_lane_sends_only_its_own() {
    assert_eq!(
        (0..7).map(|n| worker_for(n, 3)).collect::<Vec<_>>(),
        [0, 1, 2, 0, 1, 2, 0]
    );
    assert_eq!(worker_for(5, 1), 0);
    assert_eq!(worker_for(5, 0), 0);

    // 3 workers at 100 req/s, plenty of connections: after 195 ms, requests
    // 0..=19 went out, each to its worker, at its own intended time.
    let t0 = Instant::now();
    let s = Schedule {
        timeout: Duration::from_secs(1),
        ..sched(t0, 3)
    };
    let mut lanes: Vec<Lane<u32>> = (0..3).map(|w| Lane::new(w, t0)).collect();
    for lane in &mut lanes {
        lane.idle.extend(0..10);
    }
    let mut sent = Vec::new();
    for now in [ms(t0, 0), ms(t0, 42), ms(t0, 195)] {
        let mut step = Step::default();
        for lane in &mut lanes {
            lane.step(&s, now, |_| true, &mut step);
        }
        assert_eq!(step.delayed, 0);
        sent.extend(step.sends.into_iter().map(|x| (x.worker, x.intended)));
    }
    sent.sort_by_key(|&(_, t)| t);
    let expect: Vec<_> = (0..20u64)
        .map(|n| (worker_for(n, 3), ms(t0, n * 10)))
        .collect();
    assert_eq!(sent, expect);
}

#[test]
fn a_lane_without_an_idle_connection_waits_then_expires() {
    // Worker 0 of 2: its requests are 0, 2, 4, … due every 20 ms.
    let t0 = Instant::now();
    let s = sched(t0, 2);
    let mut lane: Lane<u32> = Lane::new(0, t0);
    lane.idle.push_back(7);
    let mut step = Step::default();
    lane.step(&s, ms(t0, 25), |_| true, &mut step);
    // Request 0 took the only connection; request 2 (due at 20 ms) waits.
    assert_eq!(step.sends.len(), 1);
    assert_eq!((step.delayed, lane.waiting(&s), lane.busy), (1, 1, 1));
    // Counted once, however often the lane is looked at.
    let mut again = Step::default();
    lane.step(&s, ms(t0, 30), |_| true, &mut again);
    assert_eq!((again.delayed, again.sends.len()), (0, 0));
    assert_eq!(lane.wake(&s, ms(t0, 30)), ms(t0, 120));
    // The connection comes back at 50 ms: request 2 goes out with its intended
    // time; request 4 (due at 40 ms) was counted and still waits.
    lane.busy -= 1;
    lane.idle.push_back(7);
    let mut back = Step::default();
    lane.step(&s, ms(t0, 50), |_| true, &mut back);
    assert_eq!(back.sends.len(), 1);
    assert_eq!(back.sends[0].intended, ms(t0, 20));
    assert_eq!(back.delayed, 1);
    // Nothing comes back: at 165 ms, requests 4 (40 ms) and 6 (60 ms) are past
    // the 100 ms timeout.
    let mut late = Step::default();
    lane.step(&s, ms(t0, 165), |_| true, &mut late);
    assert_eq!(
        late.expired,
        [
            (0, Duration::from_millis(125)),
            (0, Duration::from_millis(105))
        ]
    );
    assert_eq!(lane.next, 8);
    // 8, 10, 12, 14, 16 (80…160 ms) now wait, newly counted.
    assert_eq!((late.delayed, lane.waiting(&s)), (5, 5));
}

#[test]
fn closed_connections_are_skipped() {
    let t0 = Instant::now();
    let s = sched(t0, 1);
    let mut lane: Lane<u32> = Lane::new(0, t0);
    // The newest idle connection is used first; closed ones met on the way go.
    lane.idle.extend([3, 1, 2]);
    let mut step = Step::default();
    lane.step(&s, ms(t0, 0), |&c| c == 3, &mut step);
    assert_eq!(step.sends.len(), 1);
    assert_eq!(step.sends[0].conn, 3);
    assert_eq!(lane.connections(), 1);
    // Closed idle connections are pruned ahead of need.
    lane.idle.extend([4, 5, 6]);
    lane.prune(|&c| c != 5);
    assert_eq!(lane.idle, [4, 6]);
}

#[test]
fn stats_are_kept_per_worker_and_emptied_by_take() {
    let mut w = Window::default();
    for i in 1..=10 {
        w.record(0, Outcome::Ok, Duration::from_millis(i));
    }
    w.record(1, Outcome::Ok, Duration::from_millis(500));
    w.record(1, Outcome::Timeout, Duration::from_millis(2000));
    w.record(1, Outcome::Error, Duration::from_millis(1));
    w.delayed_sends = 4;
    let s = w.take(3, 6);
    assert_eq!((s.ok, s.errors, s.timeouts), (11, 1, 1));
    assert_eq!((s.in_flight, s.delayed_sends), (6, 4));
    assert!((s.max_ms - 2000.0).abs() < 2.0, "{s:?}");
    assert_eq!(s.workers.len(), 3);
    let (w0, w1, w2) = (&s.workers[0], &s.workers[1], &s.workers[2]);
    assert_eq!((w0.worker, w0.ok, w0.errors, w0.timeouts), (0, 10, 0, 0));
    assert!((w0.max_ms - 10.0).abs() < 0.1 && (w0.p50_ms - 5.0).abs() < 0.1);
    assert_eq!((w1.worker, w1.ok, w1.errors, w1.timeouts), (1, 1, 1, 1));
    assert!((w1.p50_ms - 500.0).abs() < 1.0 && (w1.max_ms - 2000.0).abs() < 2.0);
    assert_eq!(
        *w2,
        WorkerLoadStats {
            worker: 2,
            ..Default::default()
        }
    );

    // Emptied; fewer workers asked for, fewer entries.
    let s = w.take(1, 0);
    assert_eq!(
        s,
        LoadStats {
            workers: vec![WorkerLoadStats::default()],
            ..Default::default()
        }
    );
}

#[test]
fn connections_are_capped_and_retries_back_off() {
    let plan = |workers, max_in_flight, connections_per_worker| LoadPlan {
        workers,
        max_in_flight,
        connections_per_worker,
        ..LoadPlan::default()
    };
    assert_eq!(plan(2, 256, 4).per_worker(), 4);
    assert_eq!(plan(4, 8, 4).per_worker(), 2);
    assert_eq!(plan(4, 1, 4).per_worker(), 1);
    assert_eq!(plan(0, 256, 0).per_worker(), 1);
    assert_eq!(backoff(0), Duration::ZERO);
    assert_eq!(backoff(1), Duration::from_millis(10));
    assert_eq!(backoff(3), Duration::from_millis(40));
    assert_eq!(backoff(100), Duration::from_secs(1));
}

#[test]
fn a_plan_change_counts_requests_still_waiting_as_timeouts() {
    let t0 = Instant::now();
    let sched = Schedule {
        start: t0,
        rate: 10.0,
        workers: 2,
        timeout: Duration::from_secs(2),
    };
    let mut lane: Lane<u32> = Lane::new(1, t0);
    // Worker 1 gets requests 1, 3, 5, …: by 1 s, 1 3 5 7 9 are due, none sent.
    let waited = lane.abandon(&sched, t0 + Duration::from_secs(1));
    assert_eq!(waited.len(), 5);
    assert_eq!(waited[0], Duration::from_millis(900));
    assert_eq!(waited[4], Duration::from_millis(100));
    // They are not counted twice.
    assert!(lane.abandon(&sched, t0 + Duration::from_secs(1)).is_empty());
    // A rate too small to schedule means "later", not a panic.
    assert!(intended_send(t0, 1e-300, 5) > t0 + Duration::from_secs(3600));
}
