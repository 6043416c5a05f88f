//! Per-endpoint request latency, recorded without locks, and the log-scale atomic
//! buckets ([`Buckets`]) it and the per-worker poll durations count in.
//!
//! One thread adds endpoints to a table (the worker the table belongs to): it finds
//! (or adds) an endpoint by scanning a short append-only table. Latencies are counted
//! into log-scale buckets with an atomic add, from any thread. The sampler reads the
//! buckets (relaxed, so a count may land in the next period), subtracts what it saw
//! last time and summarises the difference. Buckets are 1/16 of a power of two wide:
//! percentiles are within ~6%.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(test)]
use std::time::Duration;

use crate::protocol::{DurationHistogram, EndpointLatency, HISTOGRAM_BOUNDS_US};

/// Endpoints kept apart; later ones share the last slot, named `(other)`.
pub(crate) const MAX_ENDPOINTS: usize = 64;
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Microseconds up to 2^36 (19 hours) fit.
const EXPONENTS: usize = 37;
const BUCKETS: usize = EXPONENTS * SUB;

/// Counts of durations in log-scale buckets (~4.7 KB), and their sum, cumulative
/// since creation.
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// A period's figures from [`Buckets::take`], in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct BucketSummary {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Buckets {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Counts one duration of `us` microseconds; any thread.
    pub(crate) fn record_us(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// [`record_us`](Self::record_us) for buckets only one thread writes: plain
    /// stores, no read-modify-write.
    pub(crate) fn record_us_single_writer(&self, us: u64) {
        let count = &self.counts[bucket_of(us)];
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed);
        self.sum_us.store(sum + us, Ordering::Relaxed);
    }

    /// Everything counted since creation, in the fixed buckets of the telemetry
    /// ([`HISTOGRAM_BOUNDS_US`]). A bound falls inside a log-scale bucket, which
    /// counts as at most the bound whole: a duration up to 1/16 of a power of two
    /// (~6%) longer than a bound may count as at most it.
    pub(crate) fn histogram(&self) -> DurationHistogram {
        let mut buckets = vec![0u64; HISTOGRAM_BOUNDS_US.len() + 1];
        let mut bound = 0;
        for (b, n) in self.counts.iter().enumerate() {
            while bound < HISTOGRAM_BOUNDS_US.len() && b > bucket_of(HISTOGRAM_BOUNDS_US[bound]) {
                bound += 1;
            }
            buckets[bound] += n.load(Ordering::Relaxed);
        }
        DurationHistogram {
            buckets,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// What was counted since the previous call; `seen` keeps the reader's counts.
    pub(crate) fn take(&self, seen: &mut Vec<u64>) -> BucketSummary {
        seen.resize(BUCKETS, 0);
        // Most endpoints see nothing in most periods: find that out with loads alone.
        let moved = self
            .counts
            .iter()
            .zip(seen.iter())
            .any(|(now, before)| now.load(Ordering::Relaxed) > *before);
        if !moved {
            return BucketSummary::default();
        }
        let mut delta = [0u64; BUCKETS];
        let mut count = 0;
        for (b, (now, before)) in self.counts.iter().zip(seen.iter_mut()).enumerate() {
            let n = now.load(Ordering::Relaxed);
            delta[b] = n.saturating_sub(*before);
            *before = n;
            count += delta[b];
        }
        if count == 0 {
            return BucketSummary::default();
        }
        let quantile = |q: f64| {
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut acc = 0;
            for (b, n) in delta.iter().enumerate() {
                acc += n;
                if acc >= rank {
                    return bucket_value_us(b) / 1000.0;
                }
            }
            0.0
        };
        let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
        BucketSummary {
            count,
            p50_ms: round(quantile(0.5)),
            p99_ms: round(quantile(0.99)),
            max_ms: round(quantile(1.0)),
        }
    }
}

#[derive(Default)]
struct Slot {
    name: OnceLock<Box<str>>,
    /// Allocated when the endpoint is first seen.
    buckets: OnceLock<Buckets>,
}

/// The table of endpoints and their latency buckets.
pub(crate) struct EndpointTable {
    slots: Box<[Slot]>,
    len: AtomicUsize,
    /// The endpoint found last: compared first (requests to one endpoint come in
    /// runs), so that most look-ups compare one name, not the table.
    last_hit: AtomicUsize,
}

impl Default for EndpointTable {
    fn default() -> Self {
        Self {
            slots: (0..MAX_ENDPOINTS).map(|_| Slot::default()).collect(),
            len: AtomicUsize::new(0),
            last_hit: AtomicUsize::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) as usize & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize * SUB + sub).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn bucket_value_us(i: usize) -> f64 {
    if i < SUB {
        return i as f64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let low = (1u64 << exp) + (sub << (exp - SUB_BITS));
    let width = 1u64 << (exp - SUB_BITS);
    low as f64 + width as f64 / 2.0
}

impl EndpointTable {
    /// The slot of `endpoint`, added if new. One thread only: the table's worker.
    pub(crate) fn index(&self, endpoint: &str) -> usize {
        let (method, path) = endpoint.split_once(' ').unwrap_or(("", endpoint));
        self.index_of(method, path)
    }

    /// [`index`](Self::index) of `METHOD /path`, without joining the two. On every
    /// request: the endpoint found last is compared first (requests to one endpoint
    /// come in runs), the table searched out of line.
    #[inline(always)]
    pub(crate) fn index_of(&self, method: &str, path: &str) -> usize {
        let hint = self.last_hit.load(Ordering::Relaxed);
        if hint < self.len.load(Ordering::Acquire) && self.names(hint, method, path) {
            return hint;
        }
        self.search(method, path)
    }

    /// Whether endpoint `index` is `METHOD /path`. Its parts are compared with
    /// slice equality: the C library's compare, which the server runs anyway, so
    /// that the probe adds no code of its own to the request's path.
    #[inline]
    fn names(&self, index: usize, method: &str, path: &str) -> bool {
        let (m, p) = (method.as_bytes(), path.as_bytes());
        self.slots[index].name.get().is_some_and(|n| {
            let n = n.as_bytes();
            n.len() == m.len() + 1 + p.len()
                && n[m.len()] == b' '
                && &n[..m.len()] == m
                && &n[m.len() + 1..] == p
        })
    }

    /// [`index_of`](Self::index_of) past the endpoint found last.
    #[cold]
    #[inline(never)]
    fn search(&self, method: &str, path: &str) -> usize {
        let len = self.len.load(Ordering::Acquire);
        let found = (0..len)
            .find(|&i| self.names(i, method, path))
            .unwrap_or_else(|| self.add(len, &format!("{method} {path}")));
        self.last_hit.store(found, Ordering::Relaxed);
        found
    }

    #[cold]
    fn add(&self, len: usize, endpoint: &str) -> usize {
        if len == MAX_ENDPOINTS {
            return MAX_ENDPOINTS - 1;
        }
        let name = if len == MAX_ENDPOINTS - 1 {
            "(other)"
        } else {
            endpoint
        };
        let slot = &self.slots[len];
        let _ = slot.buckets.set(Buckets::new());
        let _ = slot.name.set(name.into());
        self.len.store(len + 1, Ordering::Release);
        len
    }

    /// Whether `index` names one endpoint (not the shared `(other)` slot).
    pub(crate) fn is_named(&self, index: usize) -> bool {
        index < MAX_ENDPOINTS - 1
    }

    /// The name of endpoint `index`, once added; any thread.
    pub(crate) fn name(&self, index: usize) -> Option<&str> {
        self.slots.get(index)?.name.get().map(|n| &**n)
    }

    /// Counts one latency; any thread. Latencies are counted, not summed (nothing
    /// reads their sum): one atomic add.
    #[cfg(test)]
    pub(crate) fn record(&self, index: usize, latency: Duration) {
        self.record_ns(index, latency.as_nanos() as u64);
    }

    /// [`record`](Self::record) of a latency of `ns` nanoseconds, on every request:
    /// no conversion through `Duration`.
    pub(crate) fn record_ns(&self, index: usize, ns: u64) {
        if let Some(buckets) = self.slots[index].buckets.get() {
            buckets.counts[bucket_of(ns / 1000)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What was recorded since the previous call; `seen` keeps the reader's counts.
    pub(crate) fn take(&self, seen: &mut Vec<Vec<u64>>) -> Vec<EndpointLatency> {
        let len = self.len.load(Ordering::Acquire);
        seen.resize_with(len, Vec::new);
        let mut out = Vec::new();
        for (i, slot) in self.slots[..len].iter().enumerate() {
            let Some(buckets) = slot.buckets.get() else {
                continue;
            };
            let period = buckets.take(&mut seen[i]);
            if period.count == 0 {
                continue;
            }
            out.push(EndpointLatency {
                endpoint: slot.name.get().map_or_else(String::new, |n| n.to_string()),
                count: period.count,
                p50_ms: period.p50_ms,
                p99_ms: period.p99_ms,
                max_ms: period.max_ms,
            });
        }
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_seven_percent() {
        for us in [1u64, 15, 16, 17, 100, 999, 12_345, 412_000, 3_600_000_000] {
            let v = bucket_value_us(bucket_of(us));
            assert!(
                (v - us as f64).abs() <= us as f64 * 0.07 + 0.5,
                "{us} -> {v}"
            );
        }
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket_of(us);
            assert!(b >= last, "monotonic at {us}");
            last = b;
        }
    }

    #[test]
    fn cumulative_histogram_in_the_telemetry_buckets() {
        let b = Buckets::new();
        for us in [50, 100, 900, 2_000, 499_000, 600_000, 20_000_000] {
            b.record_us(us);
        }
        let mut seen = Vec::new();
        b.take(&mut seen);
        let h = b.histogram();
        assert_eq!(h.count(), 7, "taking a period leaves the totals");
        let le = h.at_most();
        // 100 µs, 500 µs, 1 ms, 2.5 ms, ..., 0.5 s, 1 s, ..., 10 s.
        assert_eq!((le[0], le[1], le[2], le[3]), (2, 2, 3, 4));
        assert_eq!((le[9], le[10], le[11]), (4, 5, 6));
        assert_eq!(le[14], 6);
        assert!((h.sum_s - 21.102_05).abs() < 1e-9, "{}", h.sum_s);
    }

    #[test]
    fn takes_per_period_differences_with_percentiles() {
        let t = EndpointTable::default();
        let hello = t.index("GET /hello");
        let json = t.index("GET /json");
        assert_eq!(t.index("GET /hello"), hello);
        for _ in 0..99 {
            t.record(hello, Duration::from_micros(100));
        }
        t.record(hello, Duration::from_millis(300));
        t.record(json, Duration::from_millis(412));
        let mut seen = Vec::new();
        let period = t.take(&mut seen);
        assert_eq!(period.len(), 2);
        let h = &period[0];
        assert_eq!((h.endpoint.as_str(), h.count), ("GET /hello", 100));
        assert!((h.p50_ms - 0.1).abs() < 0.007, "{h:?}");
        assert!((h.max_ms - 300.0).abs() < 300.0 * 0.07, "{h:?}");
        assert!((period[1].max_ms - 412.0).abs() < 412.0 * 0.07);
        // Nothing new: nothing reported.
        assert!(t.take(&mut seen).is_empty());
        t.record(json, Duration::from_millis(5));
        let next = t.take(&mut seen);
        assert_eq!((next.len(), next[0].count), (1, 1));
        assert!(next[0].max_ms < 6.0);
    }

    /// The endpoint found last is tried first: the answer is the same whichever
    /// endpoint came before, including a method that differs on the same path and
    /// the shared `(other)` slot once the table is full.
    #[test]
    fn the_last_endpoint_found_is_a_hint_not_an_answer() {
        let t = EndpointTable::default();
        let a = t.index_of("GET", "/a");
        let b = t.index_of("GET", "/b");
        assert_eq!((a, b), (0, 1));
        assert_eq!(t.index_of("GET", "/a"), a);
        assert_eq!(t.index_of("POST", "/a"), 2);
        assert_eq!(t.index_of("GET", "/a"), a);
        assert_eq!(t.index_of("GET", "/b"), b);
        assert_eq!(t.index_of("GET", "/b"), b);
        // The same bytes split elsewhere are another endpoint.
        assert_eq!(t.index_of("GE", "T/b"), 3);
        assert_eq!(t.index_of("GET", "/b"), b);
        for i in 0..MAX_ENDPOINTS {
            t.index_of("GET", &format!("/x{i}"));
        }
        assert_eq!(t.index_of("GET", "/new"), MAX_ENDPOINTS - 1);
        assert_eq!(t.index_of("GET", "/b"), b);
        assert_eq!(t.index_of("GET", "/newer"), MAX_ENDPOINTS - 1);
    }

    #[test]
    fn a_scan_of_random_paths_is_bounded() {
        let t = EndpointTable::default();
        for i in 0..1000 {
            t.index(&format!("GET /x{i}"));
        }
        assert_eq!(t.len.load(Ordering::Relaxed), MAX_ENDPOINTS);
        assert_eq!(t.index("GET /x999"), MAX_ENDPOINTS - 1);
        assert_eq!(
            t.slots[MAX_ENDPOINTS - 1].name.get().map(|n| &**n),
            Some("(other)")
        );
    }
}
