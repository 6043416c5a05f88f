//! The timer-drift lag probe: a timer on the loop fires every resolution interval and
//! records how late it ran (Node's `monitorEventLoopDelay`), stamping a heartbeat
//! each time so that a sampler outside the loop can see a stall while it lasts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Shared;

/// Samples kept on the loop while the sampler holds the histogram; beyond this the
/// oldest are dropped (the sampler holds it for microseconds, so this stays near 0).
const PENDING_CAP: usize = 256;

pub(crate) async fn run(shared: Arc<Shared>) {
    let resolution = shared.config.lag_resolution;
    let mut pending: Vec<u64> = Vec::new();
    let mut deadline = Instant::now() + resolution;
    loop {
        tokio::time::sleep_until(deadline.into()).await;
        let now = Instant::now();
        shared
            .heartbeat_ns
            .store(shared.ns_at(now), Ordering::Relaxed);
        // Lateness past the deadline we asked for: the resolution is not counted.
        let late_us = now.saturating_duration_since(deadline).as_micros() as u64;
        match shared.lag.try_lock() {
            Ok(mut h) => {
                for v in pending.drain(..) {
                    h.record_us(v);
                }
                h.record_us(late_us);
            }
            Err(_) => {
                if pending.len() == PENDING_CAP {
                    pending.remove(0);
                }
                pending.push(late_us);
            }
        }
        // Re-armed from now, as a repeating libuv timer is.
        deadline = now + resolution;
    }
}
