//! What the charts of one server draw, taken from its snapshots: per-worker series on
//! one time axis (seconds since the server's first line), live-stall spans with their
//! culprit, and the events with their times. A long run is thinned for drawing by
//! keeping each bucket's largest value, so that a spike never disappears.

use std::collections::BTreeMap;

use crate::protocol::{Event, Snapshot};

/// Most points a series keeps for drawing; a longer series keeps each bucket's max.
pub const MAX_POINTS: usize = 1200;
/// Most stall spans a section keeps (the longest ones).
pub const MAX_STALLS: usize = 400;
/// Most events a section keeps (the first ones); the rest are counted.
pub const MAX_EVENTS: usize = 2000;

/// One line of a chart: `(seconds since the section's start, value)` in time order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// What it shows, e.g. `w0` or `w0 queued`.
    pub name: String,
    /// The points, thinned to at most [`MAX_POINTS`].
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The largest value, 0 for an empty series.
    pub fn peak(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }
}

/// A live stall of one worker's loop: from when it began to when it ended (or the
/// recording did).
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    /// The worker held.
    pub worker: u32,
    /// When it began, seconds since the section's start.
    pub start_s: f64,
    /// When it ended, seconds since the section's start.
    pub end_s: f64,
    /// The request whose poll held the loop, when one did.
    pub culprit: Option<String>,
    /// How long it held the loop, ms.
    pub ms: f64,
}

/// An event at its time.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    /// Seconds since the section's start (of the line that reported it).
    pub t_s: f64,
    /// What happened, in words.
    pub text: String,
}

/// Everything the charts of one server draw.
#[derive(Clone, Debug, Default)]
pub struct SectionData {
    /// Length of the time axis, seconds.
    pub duration_s: f64,
    /// Worker ids seen, in order.
    pub workers: Vec<u32>,
    /// Loop lag per worker: the period's max, or the live stall while one lasts.
    pub lag: Vec<Series>,
    /// Pool jobs queued per worker.
    pub queued: Vec<Series>,
    /// Pool jobs running per worker.
    pub busy: Vec<Series>,
    /// The largest pool size seen.
    pub pool_size: u32,
    /// CPU of each worker's loop thread and pool threads, then the host's.
    pub cpu: Vec<Series>,
    /// Server-side request latency over all endpoints: p50, p99, max (empty when the
    /// recording holds no request).
    pub latency: Vec<Series>,
    /// Live stalls, in time order.
    pub stalls: Vec<Stall>,
    /// Events, in time order.
    pub events: Vec<Mark>,
    /// Events beyond [`MAX_EVENTS`], not kept.
    pub events_left_off: usize,
}

/// What an event says, as the dashboard's event log says it.
pub fn event_text(e: &Event) -> Option<String> {
    Some(match e {
        Event::SlowPoll {
            worker, uri, ms, ..
        } => format!("w{worker} loop held {ms:.0} ms by {uri}"),
        Event::WorkerExited {
            worker,
            pid,
            status,
        } => format!("w{worker} (pid {pid}) {status}"),
        Event::WorkerRestarted {
            worker,
            old_pid,
            new_pid,
        } => format!("w{worker} respawned: pid {old_pid} → {new_pid}"),
        Event::EventsDropped { worker, count } => {
            format!("w{worker} probe dropped {count} events")
        }
        Event::Unknown => return None,
    })
}

/// Thins a series as it is fed, in time order: the time axis from `t0` to `t1` is
/// cut into buckets and each keeps its largest point (the first of equals), so that
/// a spike is never lost and a long recording costs no more than its buckets.
#[derive(Clone, Debug)]
pub struct Thinner {
    name: String,
    t0: f64,
    span: f64,
    buckets: usize,
    current: usize,
    points: Vec<(f64, f64)>,
}

impl Thinner {
    /// A series named `name` over `t0..=t1` in at most `buckets` points.
    pub fn new(name: String, t0: f64, t1: f64, buckets: usize) -> Self {
        Self {
            name,
            t0,
            span: (t1 - t0).max(f64::MIN_POSITIVE),
            buckets: buckets.max(1),
            current: usize::MAX,
            points: Vec::new(),
        }
    }

    /// Takes the next point.
    pub fn push(&mut self, t: f64, v: f64) {
        let last = (self.buckets - 1) as f64;
        let bucket = (((t - self.t0) / self.span) * self.buckets as f64).clamp(0.0, last) as usize;
        match self.points.last_mut() {
            Some(p) if bucket == self.current => {
                if v > p.1 {
                    *p = (t, v);
                }
            }
            _ => {
                self.points.push((t, v));
                self.current = bucket;
            }
        }
    }

    /// The thinned series.
    pub fn finish(self) -> Series {
        Series {
            name: self.name,
            points: self.points,
        }
    }
}

/// Keeps at most `max` of `points` (in time order) as a [`Thinner`] does; fewer are
/// kept as they are.
pub fn downsample(points: &[(f64, f64)], t0: f64, t1: f64, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let mut thin = Thinner::new(String::new(), t0, t1, max);
    for &(t, v) in points {
        thin.push(t, v);
    }
    thin.finish().points
}

/// A stall being followed.
struct Open {
    start_s: f64,
    last_s: f64,
    culprit: Option<String>,
    ms: f64,
}

impl SectionData {
    /// Takes the snapshots of one server (time in `t_ms`, rising).
    pub fn new(snaps: &[Snapshot]) -> Self {
        let Some(first) = snaps.first() else {
            return Self::default();
        };
        let t0 = first.t_ms;
        let secs = |t_ms: u64| t_ms.saturating_sub(t0) as f64 / 1000.0;
        let mut d = SectionData {
            duration_s: secs(snaps.last().map_or(t0, |s| s.t_ms)),
            ..Default::default()
        };
        let duration_s = d.duration_s;
        let series = move |name: String| Thinner::new(name, 0.0, duration_s, MAX_POINTS);
        // Per worker: lag, queued, busy, loop CPU, pool CPU.
        let mut per: BTreeMap<u32, [Thinner; 5]> = BTreeMap::new();
        let mut host = series("host".into());
        let mut latency = ["p50", "p99", "max"].map(|n| series(n.into()));
        let mut any_latency = false;
        let mut open: BTreeMap<u32, Open> = BTreeMap::new();
        for snap in snaps {
            let t = secs(snap.t_ms);
            for w in &snap.workers {
                let s = per.entry(w.id).or_insert_with(|| {
                    ["", " queued", " busy", " loop", " pool"]
                        .map(|what| series(format!("w{}{what}", w.id)))
                });
                d.pool_size = d.pool_size.max(w.pool.size);
                if !w.alive {
                    continue;
                }
                let values = [
                    w.lag_ms.max.max(w.stalled_for_ms),
                    w.pool.queued as f64,
                    w.pool.busy as f64,
                    w.cpu.loop_thread,
                    w.cpu.pool_threads,
                ];
                for (series, v) in s.iter_mut().zip(values) {
                    series.push(t, v);
                }
                d.follow_stall(&mut open, w.id, t, w.stalled_for_ms, &w.stalled_in, snap);
            }
            // A worker gone from the line ends its stall.
            let gone: Vec<u32> = open
                .keys()
                .copied()
                .filter(|id| !snap.workers.iter().any(|w| w.id == *id && w.alive))
                .collect();
            for id in gone {
                if let Some(o) = open.remove(&id) {
                    d.close(id, o, t);
                }
            }
            host.push(t, snap.host.cpu);
            let endpoints = snap
                .workers
                .iter()
                .flat_map(|w| &w.requests.endpoints)
                .filter(|e| e.count > 0);
            let busiest = endpoints.clone().max_by_key(|e| e.count);
            if let Some(b) = busiest {
                let p99 = endpoints.clone().map(|e| e.p99_ms).fold(0.0, f64::max);
                let max = endpoints.map(|e| e.max_ms).fold(0.0, f64::max);
                for (series, v) in latency.iter_mut().zip([b.p50_ms, p99, max]) {
                    series.push(t, v);
                }
                any_latency = true;
            }
            for e in &snap.events {
                let Some(text) = event_text(e) else { continue };
                if d.events.len() < MAX_EVENTS {
                    d.events.push(Mark { t_s: t, text });
                } else {
                    d.events_left_off += 1;
                }
            }
        }
        for (id, o) in std::mem::take(&mut open) {
            let end = o.last_s;
            d.close(id, o, end);
        }
        d.stalls.sort_by(|a, b| {
            a.start_s
                .total_cmp(&b.start_s)
                .then(a.worker.cmp(&b.worker))
        });
        if d.stalls.len() > MAX_STALLS {
            // Keep the longest, in time order.
            let mut by_ms = d.stalls.clone();
            by_ms.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            let floor = by_ms[MAX_STALLS - 1].ms;
            let mut kept = 0;
            d.stalls.retain(|s| {
                let keep = s.ms >= floor && kept < MAX_STALLS;
                kept += keep as usize;
                keep
            });
        }
        for (id, [lag, queued, busy, cpu_loop, cpu_pool]) in per {
            d.workers.push(id);
            d.lag.push(lag.finish());
            d.queued.push(queued.finish());
            d.busy.push(busy.finish());
            d.cpu.push(cpu_loop.finish());
            d.cpu.push(cpu_pool.finish());
        }
        d.cpu.push(host.finish());
        if any_latency {
            d.latency = latency.into_iter().map(Thinner::finish).collect();
        }
        d
    }

    fn follow_stall(
        &mut self,
        open: &mut BTreeMap<u32, Open>,
        id: u32,
        t: f64,
        stalled_for_ms: f64,
        stalled_in: &Option<String>,
        snap: &Snapshot,
    ) {
        if stalled_for_ms > 0.0 {
            let start = (t - stalled_for_ms / 1000.0).max(0.0);
            let o = open.entry(id).or_insert(Open {
                start_s: start,
                last_s: t,
                culprit: None,
                ms: 0.0,
            });
            o.last_s = t;
            o.ms = o.ms.max(stalled_for_ms);
            if stalled_in.is_some() {
                o.culprit = stalled_in.clone();
            }
            return;
        }
        let Some(mut o) = open.remove(&id) else {
            return;
        };
        // The poll that ended the stall says how long it really held the loop.
        for e in &snap.events {
            if let Event::SlowPoll {
                worker, uri, ms, ..
            } = e
            {
                if *worker == id && *ms >= o.ms {
                    o.ms = *ms;
                    o.culprit.get_or_insert_with(|| uri.clone());
                }
            }
        }
        self.close(id, o, t);
    }

    fn close(&mut self, worker: u32, o: Open, until_s: f64) {
        let end_s = (o.start_s + o.ms / 1000.0).clamp(o.last_s, until_s.max(o.last_s));
        self.stalls.push(Stall {
            worker,
            start_s: o.start_s,
            end_s,
            culprit: o.culprit,
            ms: o.ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{snapshot, worker};

    #[test]
    fn downsampling_keeps_each_buckets_max() {
        let mut points: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        points[5_001].1 = 480.0;
        let thin = downsample(&points, 0.0, 9_999.0, 100);
        assert_eq!(thin.len(), 100);
        assert_eq!(thin.iter().map(|p| p.1).fold(0.0, f64::max), 480.0);
        assert!(thin.contains(&(5_001.0, 480.0)));
        assert!(thin.windows(2).all(|w| w[0].0 < w[1].0));
        // Short series are kept as they are.
        assert_eq!(downsample(&points[..50], 0.0, 49.0, 100).len(), 50);
    }

    #[test]
    fn a_live_stall_is_one_span_named_by_its_culprit() {
        let mut snaps = Vec::new();
        for seq in 1..=20u64 {
            let stalled = match seq {
                6 => 50.0,
                7 => 150.0,
                8 => 250.0,
                _ => 0.0,
            };
            let events = if seq == 9 {
                vec![Event::SlowPoll {
                    worker: 0,
                    endpoint: "GET /block".into(),
                    uri: "GET /block?ms=500".into(),
                    ms: 300.0,
                    t_ms: 0,
                }]
            } else {
                vec![]
            };
            snaps.push(snapshot(
                seq,
                vec![worker(0, 1.0, stalled, (seq == 12) as u32 * 9)],
                events,
            ));
        }
        let d = SectionData::new(&snaps);
        assert!((d.duration_s - 1.9).abs() < 1e-9);
        assert_eq!(d.stalls.len(), 1, "{:?}", d.stalls);
        let s = &d.stalls[0];
        assert_eq!(s.culprit.as_deref(), Some("GET /block?ms=500"));
        assert_eq!(s.ms, 300.0);
        assert!((s.start_s - 0.45).abs() < 1e-9, "{s:?}");
        assert!((s.end_s - 0.75).abs() < 1e-9, "{s:?}");
        assert_eq!(d.lag[0].peak(), 250.0);
        assert_eq!(d.queued[0].peak(), 9.0);
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].text, "w0 loop held 300 ms by GET /block?ms=500");
        assert!((d.events[0].t_s - 0.8).abs() < 1e-9);
        assert_eq!(d.cpu.len(), 3, "loop, pool, host");
        assert!(d.latency.is_empty(), "no request in the recording");
    }
}
