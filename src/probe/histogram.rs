//! An HDR histogram of durations in microseconds, summarised in milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::LagSummary;

/// Durations up to an hour at 3 significant digits, recorded in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

const MAX_US: u64 = 3_600_000_000;

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            inner: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one duration; longer than an hour counts as an hour.
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().min(MAX_US as u128) as u64);
    }

    /// Records one value in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.inner.saturating_record(us.min(MAX_US));
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0..=1), in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.inner.is_empty() {
            return 0.0;
        }
        self.inner.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest value, in milliseconds; 0 when empty.
    pub fn max_ms(&self) -> f64 {
        if self.inner.is_empty() {
            return 0.0;
        }
        self.inner.max() as f64 / 1000.0
    }

    /// p50, p99, max and count, as the telemetry reports lag.
    pub fn lag_summary(&self) -> LagSummary {
        LagSummary {
            p50: round3(self.quantile_ms(0.5)),
            p99: round3(self.quantile_ms(0.99)),
            max: round3(self.max_ms()),
            samples: self.len(),
        }
    }

    /// Forgets every value. An empty histogram is left alone: clearing its counts
    /// (tens of kB) is most of what a sampler of an idle pool would do.
    pub fn reset(&mut self) {
        if !self.inner.is_empty() {
            self.inner.reset();
        }
    }
}

/// Rounds to microseconds when the value is in milliseconds (keeps lines short).
pub(crate) fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_in_ms() {
        let mut h = LatencyHistogram::new();
        for _ in 0..98 {
            h.record(Duration::from_micros(200));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(412));
        let s = h.lag_summary();
        assert_eq!(s.samples, 100);
        assert!((s.p50 - 0.2).abs() < 0.001, "{s:?}");
        assert!((s.p99 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 412.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn empty_is_zero_and_huge_saturates() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.lag_summary(), LagSummary::default());
        h.record(Duration::from_secs(10_000));
        assert!((h.max_ms() - 3_600_000.0).abs() / 3_600_000.0 < 0.001);
    }
}
