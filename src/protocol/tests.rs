//! Decoding, round trips and bounding of telemetry lines.

use super::*;

#[test]
fn design_example_line_decodes() {
    let line = r#"{"v":1,"seq":42,"t_ms":4200,"model":"fastapi",
 "workers":[{"id":0,"pid":4242,"alive":true,
   "lag_ms":{"p50":0.3,"p99":1.2,"max":2.9,"samples":10},
   "stalled_for_ms":0,
   "loop_utilization":0.12,
   "pool":{"size":40,"busy":3,"queued":0,"wait_ms_max":0.0},
   "cpu":{"process":12.5,"loop_thread":10.1,"pool_threads":2.0},
   "requests":{"in_flight":3,"completed":250}}],
 "host":{"cpu":23.0},
 "events":[{"kind":"slow_poll","worker":0,"endpoint":"GET /json","ms":412.0},
       {"kind":"from_the_future","x":1}]}"#;
    let snap: Snapshot = serde_json::from_str(line).unwrap();
    assert_eq!(snap.seq, 42);
    assert_eq!(snap.model, Model::Fastapi);
    assert_eq!(snap.workers[0].pool.size, 40);
    assert_eq!(snap.workers[0].lag_ms.max, 2.9);
    assert_eq!(snap.workers[0].requests.completed, 250);
    assert!(matches!(&snap.events[0], Event::SlowPoll { ms, .. } if *ms == 412.0));
    assert_eq!(snap.events[1], Event::Unknown);
}

#[test]
fn snapshot_round_trips() {
    let snap = Snapshot {
        v: PROTOCOL_VERSION,
        seq: 7,
        t_ms: 700,
        model: Model::Node,
        period_ms: 100,
        workers: vec![WorkerSnapshot {
            id: 0,
            pid: 1,
            alive: true,
            stalled_for_ms: 312.0,
            stalled_in: Some("GET /block?ms=500".into()),
            ..Default::default()
        }],
        host: HostSnapshot {
            cpu: 50.0,
            cores: 2,
        },
        events: vec![Event::WorkerRestarted {
            worker: 1,
            old_pid: 10,
            new_pid: 11,
        }],
        runtime: None,
    };
    let line = serde_json::to_string(&snap).unwrap();
    assert!(line.contains(r#""kind":"worker_restarted""#));
    assert_eq!(serde_json::from_str::<Snapshot>(&line).unwrap(), snap);
}

#[test]
fn bounding_cuts_what_a_hostile_server_sends() {
    let long = "x".repeat(1_000_000);
    let mut snap = Snapshot {
        v: PROTOCOL_VERSION,
        seq: 1,
        t_ms: 1,
        model: Model::Node,
        period_ms: 100,
        workers: (0..10_000)
            .map(|id| WorkerSnapshot {
                id,
                stalled_in: Some(long.clone()),
                ..Default::default()
            })
            .take(300)
            .collect(),
        host: HostSnapshot::default(),
        events: (0..100)
            .map(|_| Event::SlowPoll {
                worker: 0,
                endpoint: long.clone(),
                uri: long.clone(),
                ms: 1.0,
                t_ms: 0,
            })
            .collect(),
        runtime: None,
    };
    snap.workers[1].totals = Some(WorkerTotals {
        lag: DurationHistogram {
            buckets: vec![1; 100_000],
            sum_s: f64::NAN,
        },
        stalled_s: -1.0,
        cpu_s: CpuSeconds {
            process: f64::INFINITY,
            ..Default::default()
        },
    });
    let cuts = snap.bound();
    assert_eq!(snap.workers.len(), MAX_WORKERS);
    let totals = snap.workers[1].totals.as_ref().unwrap();
    assert_eq!(totals.lag.buckets.len(), totals::HISTOGRAM_BUCKETS);
    assert_eq!(
        (totals.lag.sum_s, totals.stalled_s, totals.cpu_s.process),
        (0.0, 0.0, MAX_FIGURE)
    );
    assert_eq!(snap.events.len(), MAX_EVENTS);
    assert_eq!(
        snap.workers[0].stalled_in.as_ref().unwrap().chars().count(),
        MAX_STRING
    );
    assert_eq!(cuts.len(), 5, "{cuts:?}");
    let mut fine = snap.clone();
    assert!(fine.bound().is_empty(), "bounding twice cuts nothing more");
}

/// Version 2 adds optional fields only: a version-1 line (a recording made
/// before) decodes with them absent, and a version-2 line with them round-trips.
#[test]
fn version_one_lines_still_decode_and_version_two_round_trips() {
    let v1 = r#"{"v":1,"seq":1,"t_ms":100,"model":"node","period_ms":100,
 "workers":[{"id":0,"pid":7,"alive":true,"lag_ms":{"p50":0.1,"p99":0.2,"max":0.3,"samples":90},
   "stalled_for_ms":0,"loop_utilization":0.1,
   "pool":{"size":4,"busy":0,"queued":0,"wait_ms_max":0.0},
   "cpu":{"process":1.0,"loop_thread":1.0,"pool_threads":0.0},
   "requests":{"in_flight":0,"completed":0}}],
 "host":{"cpu":3.0}}"#;
    let old: Snapshot = serde_json::from_str(v1).unwrap();
    assert_eq!(old.v, 1);
    assert_eq!(old.runtime, None);
    assert_eq!(old.workers[0].runtime, None);
    let line = serde_json::to_string(&old).unwrap();
    assert!(
        !line.contains("runtime"),
        "absent fields stay absent: {line}"
    );

    let mut new = old.clone();
    new.v = PROTOCOL_VERSION;
    new.model = Model::Tokio;
    new.workers[0].runtime = Some(WorkerThreadSnapshot {
        tid: 12,
        polls: 480,
        steals: 3,
        local_queue: 2,
        parked: false,
    });
    new.runtime = Some(RuntimeSnapshot {
        workers: 2,
        global_queue: 5,
        blocking_queue: 120,
        blocking_threads: 8,
        ..Default::default()
    });
    let line = serde_json::to_string(&new).unwrap();
    assert!(line.contains(r#""model":"tokio""#), "{line}");
    assert_eq!(serde_json::from_str::<Snapshot>(&line).unwrap(), new);
}
