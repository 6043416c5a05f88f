//! The timer-drift lag probe: a timer on the loop fires every resolution interval and
//! records how late it ran (Node's `monitorEventLoopDelay`), stamping a heartbeat
//! each time so that a sampler outside the loop can see a stall while it lasts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use super::Shared;

/// How many recent sleeps of the loop are remembered.
const PARKS_KEPT: usize = 16;

/// Recent intervals in which a worker thread slept, written by its park hooks.
///
/// Only that thread writes it; the lag task reads the log of the thread it runs on.
/// Plain relaxed atomics suffice; they make it `Sync` for the hooks' closures.
#[derive(Debug, Default)]
pub(crate) struct ParkLog {
    parked_at: AtomicU64,
    /// (parked, woke) in ns since the probe's epoch; a ring.
    sleeps: [(AtomicU64, AtomicU64); PARKS_KEPT],
    next: AtomicUsize,
}

impl ParkLog {
    pub(crate) fn parked(&self, now_ns: u64) {
        self.parked_at.store(now_ns, Ordering::Relaxed);
    }

    pub(crate) fn unparked(&self, now_ns: u64) {
        let start = self.parked_at.swap(0, Ordering::Relaxed);
        if start != 0 {
            let i = self.next.load(Ordering::Relaxed);
            self.sleeps[i].0.store(start, Ordering::Relaxed);
            self.sleeps[i].1.store(now_ns, Ordering::Relaxed);
            self.next.store((i + 1) % PARKS_KEPT, Ordering::Relaxed);
        }
    }

    /// When the loop woke from the sleep it was in at `t_ns`, if it was asleep then.
    pub(crate) fn wake_after(&self, t_ns: u64) -> Option<u64> {
        self.sleeps.iter().find_map(|(start, end)| {
            let (start, end) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
            (start <= t_ns && t_ns <= end).then_some(end)
        })
    }
}

/// Samples kept on the loop while the sampler holds the histogram; beyond this the
/// oldest are dropped (the sampler holds it for microseconds, so this stays near 0).
const PENDING_CAP: usize = 256;

/// Runs the lag timer every `resolution`, forever.
pub(crate) async fn run(shared: Arc<Shared>, resolution: std::time::Duration) {
    // Tasks run on the loop (or a runtime worker): the thread that runs this is one.
    // If the sampler holds the table, the park hook registers it at the next park.
    shared
        .threads
        .try_register_current_thread(super::ThreadClass::Loop);
    let stall_after_ns = (shared.config.stall_threshold + resolution).as_nanos() as u64;
    let mut pending: Vec<u64> = Vec::new();
    // The timer needs the std clock; lateness is measured on the probe's clock.
    let mut deadline = Instant::now() + resolution;
    let mut deadline_ns = shared.now_ns() + resolution.as_nanos() as u64;
    loop {
        tokio::time::sleep_until(deadline.into()).await;
        let now_ns = shared.now_ns();
        let beat = shared.heartbeat_ns.swap(now_ns, Ordering::Release);
        // A gap the sampler saw as a stall (`LoopProbe::stalled_for`) is added once
        // it closes, after the heartbeat moved on (see `LoopProbe::stalled_total`).
        let gap = now_ns.saturating_sub(beat);
        if beat != 0 && gap > stall_after_ns {
            shared.stalled_ns.fetch_add(gap, Ordering::Release);
        }
        // Lateness past the deadline, the resolution not counted. If the loop was
        // asleep at the deadline (tokio rounds timers up to its next 1 ms tick), the
        // timer could not be late before the loop woke: count from the wake-up.
        let ready_ns = shared
            .slots
            .current_if_claimed()
            .and_then(|slot| slot.parks.wake_after(deadline_ns))
            .unwrap_or(deadline_ns);
        let late_us = now_ns.saturating_sub(ready_ns.max(deadline_ns)) / 1000;
        shared.lag_total.record_us(late_us);
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
        deadline = Instant::now() + resolution;
        deadline_ns = now_ns + resolution.as_nanos() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_inside_a_sleep_counts_from_the_wake_up() {
        let log = ParkLog::default();
        log.parked(1_000);
        log.unparked(3_000);
        // A zero-length park after a block does not contain earlier deadlines.
        log.parked(9_000);
        log.unparked(9_001);
        assert_eq!(log.wake_after(2_000), Some(3_000));
        assert_eq!(log.wake_after(5_000), None);
        assert_eq!(log.wake_after(500), None);
        for i in 0..PARKS_KEPT as u64 {
            log.parked(10_000 + i * 10);
            log.unparked(10_000 + i * 10 + 5);
        }
        assert_eq!(
            log.wake_after(2_000),
            None,
            "forgotten after {PARKS_KEPT} sleeps"
        );
        assert_eq!(log.wake_after(10_002), Some(10_005));
    }
}
