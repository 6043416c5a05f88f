//! Each shipped scenario played headless on real processes: the signal it is meant to
//! show appears in the telemetry.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::serial;
use loopscope::protocol::{Event, Snapshot};

/// Plays `assets/scenarios/{name}` headless (≤ 60 s) and returns its snapshots.
fn play(name: &str) -> Vec<Snapshot> {
    play_with_stderr(name).0
}

/// The snapshots and what went to stderr (captions, diagnosis).
fn play_with_stderr(name: &str) -> (Vec<Snapshot>, String) {
    let file = format!("{}/assets/scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    let log = std::env::temp_dir().join(format!("loopscope-scenario-{}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "--headless",
            "--scenario",
            &file,
            "--log-file",
            log.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopscope");
    let out = common::output_within(child, Duration::from_secs(60), name, || {});
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(
        stderr.contains("caption: "),
        "{name}: no caption played: {stderr}"
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (lines, stderr.into_owned())
}

/// Slow polls in the run: (worker, target, ms).
fn slow_polls(lines: &[Snapshot]) -> Vec<(u32, String, f64)> {
    lines
        .iter()
        .flat_map(|s| &s.events)
        .filter_map(|e| match e {
            Event::SlowPoll {
                worker, uri, ms, ..
            } => Some((*worker, uri.clone(), *ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn node_json_stall_and_its_offload_fix() {
    let _serial = serial();
    let (lines, stderr) = play_with_stderr("node-json-stall.toml");
    // The stall is 10 s before the end of the run: the diagnosis still names it.
    assert!(
        stderr.contains("diagnosis: w0: GET /json?mb=20 held the loop")
            && stderr.contains("move CPU-heavy work off the loop"),
        "{stderr}"
    );
    let polls = slow_polls(&lines);
    assert!(
        polls
            .iter()
            .any(|(_, t, ms)| t == "GET /json?mb=20" && *ms >= 100.0),
        "the parse held the loop: {polls:?}"
    );
    assert!(
        !polls.iter().any(|(_, t, _)| t.starts_with("GET /offload")),
        "the offloaded parse held the loop: {polls:?}"
    );
    assert!(
        lines.iter().any(|s| s.workers[0].pool.busy >= 1),
        "the offloaded parse ran on the pool"
    );
}

#[test]
fn fastapi_blocking_call_stalls_one_worker_and_the_sync_endpoint_does_not() {
    let _serial = serial();
    let lines = play("fastapi-blocking-vs-sync.toml");
    let polls = slow_polls(&lines);
    let (blocked, _, ms) = polls
        .iter()
        .find(|(_, t, _)| t == "GET /block?ms=500")
        .cloned()
        .unwrap_or_else(|| panic!("no slow poll of the block: {polls:?}"));
    assert!(ms >= 450.0, "{ms}");
    let other_max = lines
        .iter()
        .flat_map(|s| s.workers.iter().filter(|w| w.id != blocked))
        .map(|w| w.lag_ms.max)
        .fold(0.0, f64::max);
    assert!(
        other_max < 100.0,
        "the other worker stalled too: {other_max} ms"
    );
    assert!(
        !polls.iter().any(|(_, t, _)| t.starts_with("GET /sync")),
        "{polls:?}"
    );
    assert!(
        lines
            .iter()
            .any(|s| s.workers.iter().any(|w| w.pool.busy >= 1))
    );
}

#[test]
fn node_pool_saturation_queues_behind_four_threads() {
    let _serial = serial();
    let lines = play("node-pool-saturation.toml");
    // The most saturated line: a line taken while the pool's threads were still
    // waking to the burst can hold the most queued with fewer busy.
    let peak = lines
        .iter()
        .map(|s| &s.workers[0].pool)
        .max_by_key(|p| (p.busy, p.queued))
        .unwrap();
    assert_eq!(peak.size, 4);
    assert_eq!(peak.busy, 4, "{peak:?}");
    assert!(peak.queued >= 6, "{peak:?}");
    assert!(
        slow_polls(&lines).is_empty(),
        "hashes on the pool left the loop free"
    );
}

#[test]
fn fastapi_pool_exhaustion_fills_forty_tokens() {
    let _serial = serial();
    let lines = play("fastapi-pool-exhaustion.toml");
    let peak = lines
        .iter()
        .map(|s| &s.workers[0].pool)
        .max_by_key(|p| p.queued)
        .unwrap();
    assert_eq!((peak.size, peak.busy), (40, 40), "{peak:?}");
    assert!(peak.queued >= 15, "{peak:?}");
}

#[test]
fn tokio_blocking_call_holds_one_worker_and_spawn_blocking_holds_none() {
    let _serial = serial();
    let lines = play("tokio-blocked-worker.toml");
    // A worker thread appears once it first runs or parks.
    assert!(
        lines.iter().all(|s| s.workers.len() <= 2) && lines.iter().any(|s| s.workers.len() == 2),
        "two workers"
    );
    let polls = slow_polls(&lines);
    assert!(
        polls
            .iter()
            .any(|(_, t, ms)| t == "GET /block?ms=500" && *ms >= 450.0),
        "the block held a worker: {polls:?}"
    );
    // The worker held, by the stall it shows (a slow poll names the probe, not the
    // worker thread).
    let blocked = lines
        .iter()
        .flat_map(|s| &s.workers)
        .find(|w| w.stalled_for_ms >= 100.0 && w.stalled_in.as_deref() == Some("GET /block?ms=500"))
        .map(|w| w.id)
        .expect("the stall was seen");
    // While it was held, the other worker answered the background load.
    let held = |s: &&Snapshot| {
        s.workers
            .iter()
            .any(|w| w.id == blocked && w.stalled_for_ms >= 100.0)
    };
    assert!(
        lines.iter().filter(held).any(|s| s
            .workers
            .iter()
            .any(|w| w.id != blocked && w.requests.per_s > 0.0)),
        "the other worker served during the block"
    );
    // Held by a request: a poll of anything else can be preempted that long.
    assert!(
        !lines.iter().any(|s| s
            .workers
            .iter()
            .all(|w| w.stalled_for_ms >= 100.0 && w.stalled_in.is_some())),
        "both workers were never held at once"
    );
    assert!(
        polls.iter().any(|(_, t, _)| t == "GET /json?mb=20"),
        "the parse in the handler held its worker: {polls:?}"
    );
    assert!(
        !polls
            .iter()
            .any(|(_, t, _)| t.starts_with("GET /sync") || t.starts_with("GET /offload")),
        "spawn_blocking work held a worker: {polls:?}"
    );
    // tokio's blocking pool is worker 0's pool.
    let peak = lines
        .iter()
        .map(|s| &s.workers[0].pool)
        .max_by_key(|p| p.busy);
    assert!(
        peak.is_some_and(|p| p.size == 512 && p.busy >= 1),
        "{peak:?}"
    );
}
