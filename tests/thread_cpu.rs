//! Per-thread CPU on a real process: the CPU of a pool job counts as the pool's, job
//! after job, however the sampler first saw the pool's threads.

mod common;

use std::time::{Duration, Instant};

use common::{Demo, get, next, runtime, serial, telemetry};
use loopscope::client::http;

/// Tries per offload when no sample qualifies (a job starved by a loaded machine).
const TRIES: usize = 4;

/// The bug: after the first pool job, `pool_threads` read 0.0 while the
/// process burned a core with the pool busy, because the sampler classed threads by
/// names it cached before the threads had named themselves. Three offloads: in each,
/// the samples taken while the pool was busy over the whole period (busy at this and
/// the previous sample) and the process ran at least 30% of a core show the pool's
/// threads with at least half of the process's CPU. 20 MB (300 ms or more of
/// parsing) so that a job spans two samples even on an idle machine.
#[test]
fn three_offloads_in_the_node_model_each_count_as_pool_cpu() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        let client = http::client();
        for n in 1..=3 {
            let mut busy_samples = Vec::new();
            for _ in 0..TRIES {
                let (c, app) = (client.clone(), demo.app.clone());
                let job = tokio::spawn(async move { get(&c, &app, "/offload?mb=20").await });
                let end = Instant::now() + Duration::from_secs(30);
                let mut was_busy = false;
                loop {
                    let s = next(&mut tel).await;
                    let w = &s.workers[0];
                    let busy = w.pool.busy >= 1;
                    if busy && was_busy && w.cpu.process >= 30.0 {
                        busy_samples.push(w.cpu.clone());
                    }
                    was_busy = busy;
                    if job.is_finished() && !busy {
                        break;
                    }
                    assert!(Instant::now() < end, "offload {n} within 30 s");
                }
                let r = job.await.unwrap();
                assert_eq!(r.status, 200, "offload {n}: {}", r.text());
                if !busy_samples.is_empty() {
                    break;
                }
            }
            assert!(
                !busy_samples.is_empty(),
                "offload {n}: no sample with the pool busy over a whole period and the \
                 process at 30% or more, in {TRIES} tries"
            );
            for cpu in &busy_samples {
                assert!(
                    cpu.pool_threads >= 0.5 * cpu.process,
                    "offload {n}: pool threads {}% of a process at {}%: {busy_samples:?}",
                    cpu.pool_threads,
                    cpu.process
                );
            }
        }
    });
}
