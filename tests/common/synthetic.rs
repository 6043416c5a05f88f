//! A synthetic recording of a two-worker fastapi-style server: 100 ms lines of small
//! lag, a little queueing and CPU, requests on three endpoints, a slow poll now and
//! then, and one sample whose lag is a spike.

use std::path::Path;

use loopscope::protocol::{
    CpuSnapshot, EndpointLatency, Event, HostSnapshot, LagSummary, Model, PROTOCOL_VERSION,
    PoolSnapshot, RequestSnapshot, ServerInfo, Snapshot, Versions, WorkerInfo, WorkerSnapshot,
};
use loopscope::record::Recorder;

/// The spike's lag, ms.
pub const SPIKE_MS: f64 = 873.0;

/// Writes `seconds` of recording to `path`, the spike in the middle line, and returns
/// the spike's time in seconds from the first line.
pub fn write(path: &Path, seconds: u64) -> f64 {
    let lines = seconds * 10 + 1;
    // Off the start of a drawing bucket: a thinning that kept any point but the
    // largest would lose it.
    let spike = lines / 2 + 2;
    let mut r = Recorder::create(path).expect("create the recording");
    r.info(&ServerInfo {
        v: PROTOCOL_VERSION,
        model: Model::Fastapi,
        app: "127.0.0.1:8000".into(),
        telemetry: "127.0.0.1:9464".into(),
        pid: 4000,
        workers: vec![
            WorkerInfo { id: 0, pid: 4001 },
            WorkerInfo { id: 1, pid: 4002 },
        ],
        pool_size: 40,
        period_ms: 100,
        lag_resolution_ms: 1.0,
        slow_poll_ms: 50.0,
        versions: Versions {
            loopscope: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
        },
    })
    .unwrap();
    for i in 0..lines {
        // A deterministic wobble, different per worker.
        let wave = |k: u64| ((i * 7 + k * 13) % 29) as f64 / 29.0;
        let workers = (0..2u32)
            .map(|id| {
                let lag = if i == spike && id == 1 {
                    SPIKE_MS
                } else {
                    0.5 + 3.0 * wave(id as u64)
                };
                WorkerSnapshot {
                    id,
                    pid: 4001 + id,
                    alive: true,
                    lag_ms: LagSummary {
                        p50: 0.2,
                        p99: lag.min(2.0),
                        max: lag,
                        samples: 50,
                    },
                    loop_utilization: 0.2,
                    pool: PoolSnapshot {
                        size: 40,
                        threads: 40,
                        busy: (wave(id as u64 + 3) * 12.0) as u32,
                        queued: (wave(id as u64 + 5) * 4.0) as u32,
                        ..Default::default()
                    },
                    cpu: CpuSnapshot {
                        process: 20.0 + 30.0 * wave(1),
                        loop_thread: 15.0 + 20.0 * wave(2),
                        pool_threads: 5.0 + 10.0 * wave(3),
                    },
                    requests: RequestSnapshot {
                        in_flight: 1,
                        completed: i * 10,
                        per_s: 100.0,
                        endpoints: ["GET /hello", "GET /json", "GET /sync"]
                            .iter()
                            .enumerate()
                            .map(|(k, e)| EndpointLatency {
                                endpoint: e.to_string(),
                                count: 3 + k as u64,
                                p50_ms: 1.0 + k as f64,
                                p99_ms: 4.0 + 10.0 * wave(k as u64),
                                max_ms: 6.0 + 12.0 * wave(k as u64),
                            })
                            .collect(),
                    },
                    ..Default::default()
                }
            })
            .collect();
        let events = if i % 600 == 300 {
            vec![Event::SlowPoll {
                worker: 0,
                endpoint: "GET /json".into(),
                uri: "GET /json?mb=5".into(),
                ms: 120.0,
                t_ms: i * 100,
            }]
        } else {
            Vec::new()
        };
        r.snapshot(&Snapshot {
            v: PROTOCOL_VERSION,
            seq: i + 1,
            t_ms: 1000 + i * 100,
            model: Model::Fastapi,
            period_ms: 100,
            workers,
            host: HostSnapshot {
                cpu: 60.0 + 40.0 * wave(9),
                cores: 2,
            },
            events,
            runtime: None,
        })
        .unwrap();
    }
    spike as f64 / 10.0
}
