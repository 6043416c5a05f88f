//! Cumulative figures of a worker (protocol 2): counts and seconds since the worker
//! started, for readers that take differences between any two moments themselves
//! (a Prometheus scrape, every 15 s, sees every stall in between).
//!
//! They only grow while the same process reports them; a worker process that is
//! replaced (a new `pid`) starts again from zero, as a restarted process's counters
//! do.

use serde::{Deserialize, Serialize};

use super::figure;

/// Upper bounds of the buckets of a [`DurationHistogram`], in microseconds
/// (0.1 ms to 10 s); a last bucket holds what is longer. Part of the protocol:
/// lines carry counts, not bounds, so other bounds would need a new version.
pub const HISTOGRAM_BOUNDS_US: [u64; 15] = [
    100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Buckets of a [`DurationHistogram`]: one per bound and the one above them all.
pub const HISTOGRAM_BUCKETS: usize = HISTOGRAM_BOUNDS_US.len() + 1;

/// Durations counted since a worker started, in fixed buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationHistogram {
    /// `buckets[i]`: durations longer than bound `i - 1` and at most bound `i` of
    /// [`HISTOGRAM_BOUNDS_US`]; the last one, durations longer than every bound. Not
    /// cumulative: a reader adds them up.
    pub buckets: Vec<u64>,
    /// The sum of every duration, in seconds.
    pub sum_s: f64,
}

impl DurationHistogram {
    /// Every duration counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Durations at most each bound of [`HISTOGRAM_BOUNDS_US`], in its order
    /// (cumulative counts, as Prometheus' `le` buckets are).
    pub fn at_most(&self) -> [u64; HISTOGRAM_BOUNDS_US.len()] {
        let mut out = [0u64; HISTOGRAM_BOUNDS_US.len()];
        let mut acc = 0u64;
        for (i, o) in out.iter_mut().enumerate() {
            acc = acc.saturating_add(self.buckets.get(i).copied().unwrap_or(0));
            *o = acc;
        }
        out
    }
}

/// CPU time since a worker started, in seconds, by thread class (see
/// [`CpuSnapshot`](super::CpuSnapshot) for the classes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSeconds {
    /// The whole process.
    pub process: f64,
    /// The event-loop thread (or, for a multi-thread runtime's worker, its thread).
    pub loop_thread: f64,
    /// All pool threads together.
    pub pool_threads: f64,
}

/// A worker's cumulative figures since its process started (protocol 2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerTotals {
    /// The durations its `lag_ms` summarises, all of them: the loop's timer lag,
    /// or, for a worker thread of a multi-thread runtime (`runtime` set), its task
    /// polls.
    pub lag: DurationHistogram,
    /// Seconds the loop (or worker) spent stalled, the stall going on now included.
    pub stalled_s: f64,
    /// CPU seconds.
    pub cpu_s: CpuSeconds,
}

impl WorkerTotals {
    /// Brings figures from the network within bounds: at most
    /// [`HISTOGRAM_BUCKETS`] buckets, seconds within
    /// `0..=`[`MAX_FIGURE`](super::MAX_FIGURE). Sets `cut` if buckets were cut,
    /// `odd` if figures were outside.
    pub(super) fn bound(&mut self, cut: &mut bool, odd: &mut bool) {
        self.lag.bound(cut, odd);
        let c = &mut self.cpu_s;
        for x in [
            &mut self.stalled_s,
            &mut c.process,
            &mut c.loop_thread,
            &mut c.pool_threads,
        ] {
            *odd |= figure(x);
        }
    }
}

impl DurationHistogram {
    /// As [`WorkerTotals::bound`], for one histogram.
    pub(super) fn bound(&mut self, cut: &mut bool, odd: &mut bool) {
        *cut |= self.buckets.len() > HISTOGRAM_BUCKETS;
        self.buckets.truncate(HISTOGRAM_BUCKETS);
        *odd |= figure(&mut self.sum_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_is_cumulative_and_short_vectors_read_as_zeros() {
        let h = DurationHistogram {
            buckets: vec![3, 0, 2],
            sum_s: 0.01,
        };
        assert_eq!(h.count(), 5);
        let le = h.at_most();
        assert_eq!(&le[..4], &[3, 3, 5, 5]);
        assert_eq!(le[HISTOGRAM_BOUNDS_US.len() - 1], 5);
        let huge = DurationHistogram {
            buckets: vec![u64::MAX; HISTOGRAM_BUCKETS],
            sum_s: 0.0,
        };
        assert_eq!(huge.count(), u64::MAX);
    }
}
