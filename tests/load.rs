//! The load generator against real demo processes: its connections are spread over
//! the workers, so a blocked worker delays its own clients and nobody else's.

mod common;

use std::time::{Duration, Instant};

use common::{Demo, runtime, serial};
use loopscope::client::http;
use loopscope::client::load::{LoadGenerator, LoadPlan, LoadStats, WorkerLoadStats};

/// Takes windows (every 300 ms) until one satisfies `ready`; fails past `within`.
async fn warm_up(load: &LoadGenerator, within: Duration, ready: impl Fn(&LoadStats) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = load.take();
        if ready(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not warm within {within:?}: {s:?}"
        );
    }
}

#[test]
fn a_blocked_worker_delays_its_own_clients_only() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "fastapi", "--workers", "2"]);
    runtime().block_on(async {
        let load = LoadGenerator::start(
            http::client(),
            demo.app.clone(),
            LoadPlan {
                rate: 100.0,
                workers: 2,
                ..LoadPlan::default()
            },
        );
        // Both workers answer, promptly.
        warm_up(&load, Duration::from_secs(20), |s| {
            s.workers.len() == 2
                && s.workers.iter().all(|w| w.ok >= 5 && w.max_ms < 50.0)
                && s.errors + s.timeouts == 0
        })
        .await;

        // Block worker 0 for 500 ms over a connection it accepted.
        let mut conns = tokio::time::timeout(
            Duration::from_secs(10),
            http::connections_to_worker(&demo.app, 0, 1, 100),
        )
        .await
        .expect("connections within 10 s")
        .expect("connect");
        let mut conn = conns.pop().expect("a connection to worker 0");
        // Worker 1's clients must not wait for the block at all (< 250 ms, always)
        // and stay fast (< 50 ms). A busy 2-core machine can stall any process for
        // tens of ms, so the fast bound gets up to three blocks to hold once.
        let mut fast = false;
        for attempt in 1..=3 {
            load.take();
            let blocked = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                http::get_on(&mut conn, &demo.app, "/block?ms=500"),
            )
            .await
            .expect("the block ends within 10 s")
            .expect("the block answers");
            assert_eq!(r.status, 200);
            assert_eq!(r.json().unwrap()["worker"], 0, "{}", r.text());
            let held = blocked.elapsed();
            // The requests that waited come back; then the window covering the block.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let s = load.take();
            eprintln!("attempt {attempt}: block held {held:?}; stats {s:?}");
            assert_eq!(s.workers.len(), 2, "{s:?}");
            let (w0, w1) = (&s.workers[0], &s.workers[1]);
            assert_eq!((w0.worker, w1.worker), (0, 1));
            assert!(w0.max_ms >= 300.0, "worker 0's clients waited: {s:?}");
            assert!(w1.max_ms < 250.0, "worker 1's clients did not: {s:?}");
            assert!(w0.ok > 0 && w1.ok > 0, "{s:?}");
            assert_eq!(s.errors + s.timeouts, 0, "{s:?}");
            assert_eq!(s.ok, w0.ok + w1.ok);
            // ~90 requests in the window, half each; the blocked half queued.
            assert!(s.ok >= 50, "{s:?}");
            assert!(s.delayed_sends > 0, "{s:?}");
            if w1.max_ms < 50.0 {
                fast = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            fast,
            "worker 1's clients stayed under 50 ms in none of 3 blocks"
        );
    });
}

/// Requests the demo answered since it started, from a fresh telemetry snapshot.
async fn completed(demo: &Demo) -> u64 {
    let mut telemetry = common::telemetry(&demo.telemetry).await;
    common::next(&mut telemetry)
        .await
        .workers
        .iter()
        .map(|w| w.requests.completed)
        .sum()
}

#[test]
fn an_unreachable_worker_times_out_without_spinning_and_plans_apply_at_once() {
    let _serial = serial();
    // The node demo has one worker: worker 1 of the plan never answers.
    let demo = Demo::start(&["--model", "node"]);
    runtime().block_on(async {
        let completed_before = completed(&demo).await;
        let timeout = Duration::from_millis(500);
        let load = LoadGenerator::start(
            http::client(),
            demo.app.clone(),
            LoadPlan {
                rate: 100.0,
                workers: 2,
                timeout,
                ..LoadPlan::default()
            },
        );
        let cpu0 = common::own_cpu_seconds();
        let mut sent = 0;
        let mut total = LoadStats {
            workers: (0..2)
                .map(|worker| WorkerLoadStats {
                    worker,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let s = load.take();
            sent += s.ok + s.errors;
            total.ok += s.ok;
            total.errors += s.errors;
            total.timeouts += s.timeouts;
            for (t, w) in total.workers.iter_mut().zip(&s.workers) {
                t.ok += w.ok;
                t.timeouts += w.timeouts;
                t.errors += w.errors;
            }
        }
        let cpu = common::own_cpu_seconds() - cpu0;
        // Pause: what is on the wire ends within the timeout; then nothing is sent.
        load.set_plan(LoadPlan {
            rate: 0.0,
            ..load.plan()
        });
        tokio::time::sleep(timeout + Duration::from_millis(300)).await;
        let s = load.take();
        sent += s.ok + s.errors;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let paused = load.take();
        eprintln!("3 s with worker 1 unreachable: {total:?}, {cpu:.2} s CPU; paused: {paused:?}");
        assert_eq!(
            (paused.ok, paused.errors, paused.timeouts),
            (0, 0, 0),
            "{paused:?}"
        );
        assert_eq!(paused.in_flight, 0, "{paused:?}");

        // Worker 0 served its half; worker 1's half waited and timed out.
        let (w0, w1) = (&total.workers[0], &total.workers[1]);
        assert!(w0.ok >= 100 && w0.timeouts == 0, "{total:?}");
        assert!(w1.ok == 0 && w1.timeouts >= 100, "{total:?}");
        assert_eq!(total.errors, 0, "{total:?}");
        assert!(cpu < 1.0, "the generator spins: {cpu:.2} s CPU in 3 s");
        // The attempts to reach worker 1 are bounded: every `/hello` the server
        // answered beyond the load's own requests was one.
        let completed_after = completed(&demo).await;
        let attempts = (completed_after - completed_before).saturating_sub(sent);
        eprintln!("attempts to reach worker 1 (and the first connections): {attempts}");
        assert!(attempts <= 30, "{attempts} connection attempts in 3 s");

        // A new plan applies at once: one worker, all answered.
        load.set_plan(LoadPlan {
            rate: 100.0,
            workers: 1,
            ..load.plan()
        });
        warm_up(&load, Duration::from_secs(10), |s| {
            s.workers.len() == 1 && s.workers[0].ok >= 10 && s.timeouts == 0
        })
        .await;
    });
}
