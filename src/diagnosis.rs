//! A one-line diagnosis of why a server stalls: the cause, the request that held the
//! loop, and the remedy. Pure: fed snapshots, it reasons over the last seconds of
//! server time.
//!
//! Thresholds are clinic.js Doctor's for the loop (max lag ≥ 100 ms, or median lag
//! ≥ 10 ms) and one second of continuous queueing for a pool.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{Event, Model, Snapshot};
use crate::units::short_ms;

/// Seconds of history a diagnosis looks at.
pub const WINDOW_MS: u64 = 10_000;
/// A loop whose lag reaches this was blocked.
pub const MAX_LAG_MS: f64 = 100.0;
/// A loop whose median lag reaches this is saturated.
pub const MEDIAN_LAG_MS: f64 = 10.0;
/// Most lines (and slow polls) a worker's window keeps.
const MAX_LINES: usize = 1024;
/// A pool queued without a break for this long is too small (or misused).
pub const QUEUED_FOR_MS: u64 = 1_000;

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// One request held the loop.
    LoopBlocked,
    /// The loop is slow all the time.
    LoopSaturated,
    /// The pool stayed full with jobs waiting.
    PoolSaturated,
}

/// One diagnosis line.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    /// The worker it concerns.
    pub worker: u32,
    /// What is wrong.
    pub finding: Finding,
    /// Cause and remedy, in one line.
    pub text: String,
    /// How bad, to keep the worst of several: ms held, median ms, or ms queued.
    pub severity: f64,
    /// The request that held the loop, when one is known.
    pub culprit: Option<String>,
}

impl Diagnosis {
    /// True when `self` says more than `other` about the same problem: it names the
    /// request (a live stall is only named once its poll ends), or it is worse.
    pub fn outranks(&self, other: &Diagnosis) -> bool {
        (self.culprit.is_some(), self.severity) >= (other.culprit.is_some(), other.severity)
    }
}

#[derive(Clone, Debug, Default)]
struct WorkerHistory {
    /// (t_ms, lag max, lag p50) per line.
    lag: VecDeque<(u64, f64, f64)>,
    /// (t_ms, target, ms) of slow polls.
    slow_polls: VecDeque<(u64, String, f64)>,
    /// The request holding the loop right now and for how long, while a stall lasts.
    live: Option<(String, f64)>,
    /// Since when the pool has had jobs waiting, if it has now.
    queued_since: Option<u64>,
    /// The newest pool figures: (busy, size, queued, max queued while it lasts).
    pool: (u32, u32, u32, u32),
    /// Spells of queueing that ended in the window: (start, end, busy, size, peak).
    spells: VecDeque<(u64, u64, u32, u32, u32)>,
}

/// Keeps the recent history of every worker and diagnoses it.
#[derive(Clone, Debug, Default)]
pub struct Diagnoser {
    workers: BTreeMap<u32, WorkerHistory>,
    now_ms: u64,
    /// The newest snapshot is a multi-thread runtime's: words and remedies differ.
    tokio: bool,
}

/// The remedy for a request that held the loop, from what its endpoint does.
fn remedy(target: &str, tokio: bool) -> &'static str {
    let path = target.split_whitespace().nth(1).unwrap_or(target);
    if tokio {
        return if path.starts_with("/block") {
            "a blocking call inside an async task: await a non-blocking call, or run it with tokio::task::spawn_blocking"
        } else {
            "move what this task does between awaits off the worker — tokio::task::spawn_blocking, or a CPU pool (rayon)"
        };
    }
    if path.starts_with("/block") {
        "a blocking call inside an async handler: await a non-blocking call, or make it a sync (def) endpoint that runs on the pool"
    } else if path.starts_with("/json")
        || path.starts_with("/spin")
        || (path.starts_with("/hash") && path.contains("on=loop"))
    {
        "move CPU-heavy work off the loop — a worker thread or a process pool"
    } else {
        "find what this request does on the loop and move it off — a worker thread, a process pool or async I/O"
    }
}

impl Diagnoser {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one snapshot line.
    pub fn observe(&mut self, snap: &Snapshot) {
        self.tokio = snap.model == Model::Tokio;
        let now = snap.t_ms;
        if now < self.now_ms {
            // A new server: its clock starts again.
            self.workers.clear();
        }
        self.now_ms = now;
        let oldest = now.saturating_sub(WINDOW_MS);
        self.workers
            .retain(|id, _| snap.workers.iter().any(|w| w.id == *id));
        for w in &snap.workers {
            let h = self.workers.entry(w.id).or_default();
            let live = match &w.stalled_in {
                Some(target) if w.stalled_for_ms > 0.0 => Some((target.clone(), w.stalled_for_ms)),
                _ => None,
            };
            // A stall that ended stays known by its culprit, slow-poll event or not.
            if let (Some((target, ms)), None) = (h.live.take(), &live) {
                h.slow_polls.push_back((now, target, ms));
            }
            h.live = live;
            if w.lag_ms.samples > 0 || w.stalled_for_ms > 0.0 {
                let line = (now, w.lag_ms.max.max(w.stalled_for_ms), w.lag_ms.p50);
                match h.lag.back_mut() {
                    // A clock that stands still adds no new line.
                    Some(last) if last.0 == now => {
                        last.1 = last.1.max(line.1);
                        last.2 = last.2.max(line.2);
                    }
                    _ => h.lag.push_back(line),
                }
                // However the clock runs, the window holds a bounded number of lines.
                while h.lag.len() > MAX_LINES {
                    h.lag.pop_front();
                }
            }
            while h.lag.front().is_some_and(|(t, _, _)| *t < oldest) {
                h.lag.pop_front();
            }
            while h.slow_polls.front().is_some_and(|(t, _, _)| *t < oldest)
                || h.slow_polls.len() > MAX_LINES
            {
                h.slow_polls.pop_front();
            }
            let p = &w.pool;
            if p.queued > 0 {
                let since = *h.queued_since.get_or_insert(now);
                let peak = if since == now {
                    p.queued
                } else {
                    h.pool.3.max(p.queued)
                };
                let busy = h.pool.0.max(p.busy);
                h.pool = (busy, p.size, p.queued, peak);
            } else {
                if let Some(since) = h.queued_since.take() {
                    let (busy, size, _, peak) = h.pool;
                    h.spells.push_back((since, now, busy, size, peak));
                }
                h.pool = (p.busy, p.size, 0, 0);
            }
            while h.spells.front().is_some_and(|s| s.1 < oldest) || h.spells.len() > MAX_LINES {
                h.spells.pop_front();
            }
        }
        for e in &snap.events {
            if let Event::SlowPoll {
                worker, uri, ms, ..
            } = e
            {
                if let Some(h) = self.workers.get_mut(worker) {
                    h.slow_polls.push_back((now, uri.clone(), *ms));
                }
            }
        }
    }

    /// What is wrong now, worst first per worker (at most one line per worker).
    pub fn diagnose(&self) -> Vec<Diagnosis> {
        let mut out = Vec::new();
        // A multi-thread runtime's workers are held by task polls, one worker each.
        let place = if self.tokio { "its worker" } else { "the loop" };
        for (id, h) in &self.workers {
            let max = h.lag.iter().map(|l| l.1).fold(0.0, f64::max);
            let mut p50s: Vec<f64> = h.lag.iter().map(|l| l.2).collect();
            p50s.sort_by(f64::total_cmp);
            let median = p50s.get(p50s.len() / 2).copied().unwrap_or(0.0);
            if max >= MAX_LAG_MS {
                let worst = h.slow_polls.iter().max_by(|a, b| a.2.total_cmp(&b.2));
                // A stall going on now is named by the request it is in, before its
                // poll ends and becomes a slow-poll event.
                let live = h.live.as_ref().filter(|(_, ms)| *ms >= MAX_LAG_MS);
                let culprit = live
                    .map(|(target, _)| target.clone())
                    .or_else(|| worst.map(|(_, target, _)| target.clone()));
                let text = match (live, worst) {
                    (Some((target, ms)), _) => format!(
                        "w{id}: {target} is holding {place} ({} so far): {}",
                        short_ms(*ms),
                        remedy(target, self.tokio)
                    ),
                    (None, Some((_, target, ms))) => format!(
                        "w{id}: {target} held {place} {}: {}",
                        short_ms(*ms),
                        remedy(target, self.tokio)
                    ),
                    (None, None) => format!(
                        "w{id}: {place} was blocked {}: find the blocking call (no request poll was slow: look at timers and background tasks)",
                        short_ms(max)
                    ),
                };
                out.push(Diagnosis {
                    worker: *id,
                    finding: Finding::LoopBlocked,
                    text,
                    severity: max,
                    culprit,
                });
            } else if median >= MEDIAN_LAG_MS {
                out.push(Diagnosis {
                    worker: *id,
                    finding: Finding::LoopSaturated,
                    severity: median,
                    culprit: None,
                    text: if self.tokio {
                        format!(
                            "w{id}: median task poll {}: tasks hold the worker long between awaits — move CPU work to spawn_blocking or a CPU pool",
                            short_ms(median)
                        )
                    } else {
                        format!(
                            "w{id}: median loop lag {}: the loop is saturated — spread the load over more workers or move CPU work off the loop",
                            short_ms(median)
                        )
                    },
                });
            } else {
                // The longest spell of queueing in the window, ended or still going.
                let open = h
                    .queued_since
                    .map(|since| (since, self.now_ms, h.pool.0, h.pool.1, h.pool.3));
                let longest = h
                    .spells
                    .iter()
                    .copied()
                    .chain(open)
                    .max_by_key(|s| s.1 - s.0);
                if let Some((start, end, busy, size, peak)) = longest {
                    let queued_ms = end - start;
                    if queued_ms >= QUEUED_FOR_MS {
                        out.push(Diagnosis {
                            worker: *id,
                            finding: Finding::PoolSaturated,
                            severity: queued_ms as f64,
                            culprit: None,
                            text: format!(
                                "w{id}: {busy} of {size} pool threads busy, {peak} queued for {:.1} s: raise the pool size or make the endpoint async",
                                queued_ms as f64 / 1000.0
                            ),
                        });
                    }
                }
            }
        }
        out
    }
}

/// The worst diagnosis of each kind per worker over a whole run, not only over the
/// last seconds a [`Diagnoser`] keeps: what a headless run prints at its end and what
/// a report of a recording says.
#[derive(Clone, Debug, Default)]
pub struct RunDiagnosis {
    diagnoser: Diagnoser,
    worst: BTreeMap<(Model, u32, u8), Diagnosis>,
}

impl RunDiagnosis {
    /// Takes one snapshot line.
    pub fn observe(&mut self, snap: &Snapshot) {
        self.diagnoser.observe(snap);
        for d in self.diagnoser.diagnose() {
            let key = (snap.model, d.worker, d.finding as u8);
            let keep = self.worst.get(&key).is_none_or(|w| d.outranks(w));
            if keep {
                self.worst.insert(key, d);
            }
        }
    }

    /// The lines, by model, worker and finding.
    pub fn lines(self) -> Vec<Diagnosis> {
        self.worst.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LagSummary, Model, PoolSnapshot, Snapshot, WorkerSnapshot};

    fn snap(t_ms: u64, lag: &[(f64, f64)], queued: &[u32], events: Vec<Event>) -> Snapshot {
        Snapshot {
            v: 1,
            seq: t_ms / 100,
            t_ms,
            model: Model::Fastapi,
            period_ms: 100,
            workers: lag
                .iter()
                .zip(queued)
                .enumerate()
                .map(|(id, ((max, p50), q))| WorkerSnapshot {
                    id: id as u32,
                    alive: true,
                    lag_ms: LagSummary {
                        p50: *p50,
                        p99: *max,
                        max: *max,
                        samples: 50,
                    },
                    pool: PoolSnapshot {
                        size: 40,
                        busy: if *q > 0 { 40 } else { 0 },
                        queued: *q,
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect(),
            host: Default::default(),
            events,
            runtime: None,
        }
    }

    #[test]
    fn a_slow_poll_names_the_culprit_and_the_remedy() {
        let mut d = Diagnoser::new();
        for t in 1..=10 {
            d.observe(&snap(t * 100, &[(0.5, 0.1), (0.4, 0.1)], &[0, 0], vec![]));
        }
        assert!(d.diagnose().is_empty());
        let slow = Event::SlowPoll {
            worker: 0,
            endpoint: "GET /json".into(),
            uri: "GET /json?mb=20".into(),
            ms: 412.3,
            t_ms: 0,
        };
        d.observe(&snap(
            1100,
            &[(412.0, 0.1), (0.4, 0.1)],
            &[0, 0],
            vec![slow],
        ));
        let found = d.diagnose();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].finding, Finding::LoopBlocked);
        assert_eq!(
            found[0].text,
            "w0: GET /json?mb=20 held the loop 412 ms: move CPU-heavy work off the loop — a worker thread or a process pool"
        );
        // Ten seconds later it has left the window.
        for t in 12..=122 {
            d.observe(&snap(t * 100, &[(0.5, 0.1), (0.4, 0.1)], &[0, 0], vec![]));
        }
        assert!(d.diagnose().is_empty());
    }

    #[test]
    fn a_live_stall_is_named_by_the_request_holding_the_loop() {
        let mut d = Diagnoser::new();
        d.observe(&snap(100, &[(0.5, 0.1)], &[0], vec![]));
        let mut s = snap(200, &[(0.0, 0.0)], &[0], vec![]);
        s.workers[0].lag_ms.samples = 0;
        s.workers[0].stalled_for_ms = 247.0;
        s.workers[0].stalled_in = Some("GET /block?ms=500".into());
        d.observe(&s);
        let found = d.diagnose();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].culprit.as_deref(), Some("GET /block?ms=500"));
        assert_eq!(
            found[0].text,
            "w0: GET /block?ms=500 is holding the loop (247 ms so far): a blocking call inside an async handler: await a non-blocking call, or make it a sync (def) endpoint that runs on the pool"
        );
        assert!(!found[0].text.contains("no request poll was slow"));
        // Once it ended, it is still known by its request.
        d.observe(&snap(800, &[(0.5, 0.1)], &[0], vec![]));
        assert!(
            d.diagnose()[0]
                .text
                .starts_with("w0: GET /block?ms=500 held the loop 247 ms")
        );
        // A stall with no request known (a timer held the loop): then, and only
        // then, the diagnosis says no request poll was slow.
        let mut d = Diagnoser::new();
        let mut s = snap(200, &[(0.0, 0.0)], &[0], vec![]);
        s.workers[0].stalled_for_ms = 247.0;
        d.observe(&s);
        d.observe(&snap(800, &[(300.0, 0.1)], &[0], vec![]));
        let after = d.diagnose();
        assert!(
            after[0].text.contains("no request poll was slow"),
            "{after:?}"
        );
    }

    #[test]
    fn a_named_culprit_outranks_a_live_stall() {
        let live = Diagnosis {
            worker: 0,
            finding: Finding::LoopBlocked,
            text: "blocked 393 ms".into(),
            severity: 393.0,
            culprit: None,
        };
        let named = Diagnosis {
            culprit: Some("GET /json?mb=20".into()),
            severity: 390.0,
            ..live.clone()
        };
        assert!(named.outranks(&live));
        assert!(!live.outranks(&named));
        let worse = Diagnosis {
            severity: 800.0,
            ..named.clone()
        };
        assert!(worse.outranks(&named) && !named.outranks(&worse));
    }

    /// On a multi-thread runtime the stall is one worker's, and the remedy is
    /// tokio's.
    #[test]
    fn a_held_worker_of_a_multi_thread_runtime_gets_the_tokio_remedy() {
        let mut d = Diagnoser::new();
        let mut s = snap(200, &[(0.0, 0.0), (0.3, 0.01)], &[0, 0], vec![]);
        s.model = Model::Tokio;
        s.workers[0].lag_ms.samples = 0;
        s.workers[0].stalled_for_ms = 247.0;
        s.workers[0].stalled_in = Some("GET /block?ms=500".into());
        d.observe(&s);
        let found = d.diagnose();
        assert_eq!(found.len(), 1, "only the held worker: {found:?}");
        assert_eq!(
            found[0].text,
            "w0: GET /block?ms=500 is holding its worker (247 ms so far): a blocking call inside an async task: await a non-blocking call, or run it with tokio::task::spawn_blocking"
        );
    }

    #[test]
    fn a_blocking_call_gets_the_async_remedy() {
        assert!(
            remedy("GET /block?ms=500", false)
                .starts_with("a blocking call inside an async handler")
        );
        assert!(remedy("GET /hash?iterations=5&on=loop", false).starts_with("move CPU-heavy"));
        assert!(remedy("GET /other", false).starts_with("find what"));
    }

    #[test]
    fn a_high_median_is_saturation() {
        let mut d = Diagnoser::new();
        for t in 1..=20 {
            d.observe(&snap(t * 100, &[(30.0, 12.0)], &[0], vec![]));
        }
        let found = d.diagnose();
        assert_eq!(found[0].finding, Finding::LoopSaturated);
        assert!(found[0].text.starts_with("w0: median loop lag 12 ms"));
    }

    #[test]
    fn a_pool_queued_for_over_a_second_is_too_small() {
        let mut d = Diagnoser::new();
        d.observe(&snap(100, &[(0.5, 0.1)], &[20], vec![]));
        d.observe(&snap(600, &[(0.5, 0.1)], &[15], vec![]));
        assert!(d.diagnose().is_empty(), "only 0.5 s so far");
        d.observe(&snap(1200, &[(0.5, 0.1)], &[5], vec![]));
        let found = d.diagnose();
        assert_eq!(
            found[0].text,
            "w0: 40 of 40 pool threads busy, 20 queued for 1.1 s: raise the pool size or make the endpoint async"
        );
        // The queue drains: the spell is still reported while in the window…
        d.observe(&snap(1300, &[(0.5, 0.1)], &[0], vec![]));
        assert_eq!(
            d.diagnose()[0].text,
            found[0].text.replace("1.1 s", "1.2 s")
        );
        // …and forgotten ten seconds later; a short spell says nothing.
        d.observe(&snap(11_400, &[(0.5, 0.1)], &[3], vec![]));
        d.observe(&snap(11_900, &[(0.5, 0.1)], &[0], vec![]));
        assert!(d.diagnose().is_empty(), "{:?}", d.diagnose());
    }
}
