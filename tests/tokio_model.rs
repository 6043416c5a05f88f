//! The tokio model on a real process over loopback: `loopscope demo --model tokio`,
//! a multi-thread runtime of two worker threads, its telemetry one entry per worker.

mod common;

use std::time::{Duration, Instant};

use common::{Demo, get, runtime, serial, telemetry, until};
use loopscope::client::http::{TelemetryStream, client_without_keepalive};
use loopscope::protocol::{Model, Snapshot};

/// The demo in the tokio model with two worker threads, and `extra` flags.
fn tokio_demo(extra: &[&str]) -> Demo {
    let mut args = vec!["--model", "tokio", "--workers", "2"];
    args.extend_from_slice(extra);
    Demo::start(&args)
}

/// Waits until both worker threads report (each appears once it first runs or parks).
async fn both_workers(tel: &mut TelemetryStream) -> Snapshot {
    until(tel, Duration::from_secs(10), |s| {
        s.model == Model::Tokio && s.workers.len() == 2 && s.workers.iter().all(|w| w.alive)
    })
    .await
    .expect("two worker threads report within 10 s")
}

/// Workers held by a request's poll for 100 ms or more. (A poll of anything else
/// that a busy machine preempts can last that long too: it is no request's.)
fn held(s: &Snapshot) -> Vec<(u32, String)> {
    s.workers
        .iter()
        .filter(|w| w.stalled_for_ms >= 100.0)
        .filter_map(|w| Some((w.id, w.stalled_in.clone()?)))
        .collect()
}

/// One worker of two blocked for 1 s, with the I/O driver handed over eagerly:
/// exactly that worker shows the stall with the request named, and the other
/// answers `/hello` on new connections at once while it lasts.
#[test]
fn a_blocked_worker_is_named_and_the_other_keeps_serving() {
    let _serial = serial();
    let demo = tokio_demo(&["--eager-driver-handoff"]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        let info = both_workers(&mut tel).await;
        assert_eq!(info.workers[0].pool.size, 512, "the blocking pool is w0's");

        let fresh = client_without_keepalive();
        let (c, app) = (fresh.clone(), demo.app.clone());
        let block = tokio::spawn(async move { get(&c, &app, "/block?ms=1000").await });
        let live = until(&mut tel, Duration::from_secs(3), |s| !held(s).is_empty())
            .await
            .expect("a worker stalls within 3 s");
        assert!(!block.is_finished(), "seen while it lasts");
        let stalled = held(&live);
        assert_eq!(stalled.len(), 1, "exactly one worker held: {stalled:?}");
        let (blocked, culprit) = stalled[0].clone();
        assert_eq!(culprit, "GET /block?ms=1000");

        let left = Instant::now();
        let during = common::hello_while_blocked(&block, &fresh, &demo.app, blocked).await;
        assert!(
            during >= 3,
            "only {during} /hello answered in the {:?} left of the block",
            left.elapsed()
        );
        let r = block.await.unwrap();
        assert_eq!(r.json().unwrap()["worker"].as_u64(), Some(blocked as u64));
    });
}

/// The same block on tokio's default runtime: the stall is named on one worker
/// alone whichever way the race for the I/O driver goes, and `/hello` is answered
/// (at once, or when the block ends).
#[test]
fn without_driver_handoff_the_block_is_still_named_on_one_worker() {
    let _serial = serial();
    let demo = tokio_demo(&[]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        both_workers(&mut tel).await;
        let fresh = client_without_keepalive();
        let (c, app) = (fresh.clone(), demo.app.clone());
        let block = tokio::spawn(async move { get(&c, &app, "/block?ms=500").await });
        let live = until(&mut tel, Duration::from_secs(3), |s| !held(s).is_empty())
            .await
            .expect("a worker stalls within 3 s");
        let stalled = held(&live);
        assert_eq!(stalled.len(), 1, "exactly one worker held: {stalled:?}");
        assert_eq!(stalled[0].1, "GET /block?ms=500");
        let t = Instant::now();
        let r = get(&fresh, &demo.app, "/hello").await;
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(block.await.unwrap().status, 200);
    });
}

/// Both workers blocked (two concurrent blocks of 1 s): both show the stall, and a
/// `/hello` sent meanwhile is answered only when a block ends.
#[test]
fn blocking_every_worker_stalls_everything() {
    let _serial = serial();
    let demo = tokio_demo(&["--eager-driver-handoff"]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        both_workers(&mut tel).await;
        let fresh = client_without_keepalive();
        let sent = Instant::now();
        let blocks: Vec<_> = (0..2)
            .map(|_| {
                let (c, app) = (fresh.clone(), demo.app.clone());
                tokio::spawn(async move { get(&c, &app, "/block?ms=1000").await })
            })
            .collect();
        let live = until(&mut tel, Duration::from_secs(3), |s| held(s).len() == 2)
            .await
            .expect("both workers stall within 3 s");
        for (_, culprit) in held(&live) {
            assert_eq!(culprit, "GET /block?ms=1000");
        }

        let asked = Instant::now();
        let r = get(&fresh, &demo.app, "/hello").await;
        let done = Instant::now();
        assert_eq!(r.status, 200);
        // Neither block can end before 1 s after it was sent.
        assert!(
            done - sent >= Duration::from_millis(950),
            "/hello answered {:?} after the blocks were sent",
            done - sent
        );
        // It waited for most of what was left of the blocks.
        let left = Duration::from_millis(1000).saturating_sub(asked - sent);
        assert!(
            done - asked >= left * 4 / 5,
            "/hello waited {:?}, {left:?} of the blocks were left",
            done - asked
        );
        for b in blocks {
            assert_eq!(b.await.unwrap().status, 200);
        }
    });
}

/// Pool work goes through `spawn_blocking`: it shows as w0's pool (tokio's blocking
/// pool) while no worker is held.
#[test]
fn pool_work_runs_on_the_blocking_pool_and_holds_no_worker() {
    let _serial = serial();
    let demo = tokio_demo(&["--pool", "8"]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        both_workers(&mut tel).await;
        let fresh = client_without_keepalive();
        let offload = get(&fresh, &demo.app, "/offload?mb=1").await;
        assert_eq!(offload.status, 200);
        let reply = offload.json().unwrap();
        assert_eq!(
            (reply["model"].as_str(), reply["ran_on"].as_str()),
            (Some("tokio"), Some("pool"))
        );
        assert!(reply["queued_ms"].is_number(), "{reply}");

        let (c, app) = (fresh.clone(), demo.app.clone());
        let sync = tokio::spawn(async move { get(&c, &app, "/sync?ms=800").await });
        let busy = until(&mut tel, Duration::from_secs(3), |s| {
            s.workers[0].pool.busy >= 1
        })
        .await
        .expect("a busy blocking thread within 3 s");
        assert_eq!(busy.workers[0].pool.size, 8);
        assert!(
            held(&busy).is_empty(),
            "a worker was held: {:?}",
            held(&busy)
        );
        assert!(!sync.is_finished(), "seen while it runs");
        let t = Instant::now();
        assert_eq!(get(&fresh, &demo.app, "/hello").await.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            sync.await.unwrap().json().unwrap()["ran_on"].as_str(),
            Some("pool")
        );
    });
}

/// The driver hand-off is a tokio runtime setting: the other models refuse it.
#[test]
fn eager_driver_handoff_is_for_the_tokio_model_only() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "demo",
            "--model",
            "node",
            "--port",
            "0",
            "--telemetry-port",
            "0",
        ])
        .arg("--eager-driver-handoff")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo binary");
    let out = common::output_within(child, Duration::from_secs(20), "demo", || {});
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--model tokio only"), "{stderr}");
}
