//! The lanes of the load generator: one per worker, each with its idle keep-alive
//! connections, its next unsent request and its reconnect state; and the schedule
//! that says which request is due when and to which worker.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::intended_send;

/// The send schedule of one plan: request `n` is due at `start + n / rate` and goes
/// to worker `n % workers`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    pub(super) start: Instant,
    pub(super) rate: f64,
    pub(super) workers: u32,
    pub(super) timeout: Duration,
}

impl Schedule {
    pub(super) fn at(&self, n: u64) -> Instant {
        intended_send(self.start, self.rate, n)
    }
}

/// A request to put on a connection.
pub(super) struct Send<C> {
    pub(super) worker: u32,
    pub(super) intended: Instant,
    pub(super) conn: C,
}

/// What one pass over the lanes decided.
pub(super) struct Step<C> {
    pub(super) sends: Vec<Send<C>>,
    /// Requests that waited past the timeout: worker and latency.
    pub(super) expired: Vec<(u32, Duration)>,
    pub(super) delayed: u64,
}

impl<C> Default for Step<C> {
    fn default() -> Self {
        Self {
            sends: Vec::new(),
            expired: Vec::new(),
            delayed: 0,
        }
    }
}

/// One worker's share of the schedule (requests `worker`, `worker + workers`, …) and
/// its connections.
pub(super) struct Lane<C> {
    pub(super) worker: u32,
    /// The oldest request of this lane not sent yet.
    pub(super) next: u64,
    /// Requests of this lane below this one were counted as delayed.
    pub(super) counted: u64,
    pub(super) idle: VecDeque<C>,
    /// Connections carrying a request.
    pub(super) busy: usize,
    /// Connections being opened for this lane.
    pub(super) dialing: usize,
    /// Consecutive attempts that gave this lane no connection.
    pub(super) misses: u32,
    /// No new attempt before this.
    pub(super) retry_at: Instant,
}

impl<C> Lane<C> {
    pub(super) fn new(worker: u32, now: Instant) -> Self {
        Self {
            worker,
            next: u64::from(worker),
            counted: u64::from(worker),
            idle: VecDeque::new(),
            busy: 0,
            dialing: 0,
            misses: 0,
            retry_at: now,
        }
    }

    /// Back to the lane's first request (a new schedule).
    pub(super) fn restart(&mut self) {
        self.next = u64::from(self.worker);
        self.counted = self.next;
    }

    /// The requests due by `now` and not sent yet, each with how long it has waited;
    /// the lane moves past them (a plan change abandons them).
    pub(super) fn abandon(&mut self, s: &Schedule, now: Instant) -> Vec<Duration> {
        let stride = u64::from(s.workers);
        let mut waited = Vec::new();
        // At most a timeout's worth can be due and unsent; cap it regardless.
        while s.at(self.next) <= now && waited.len() < 1_000_000 {
            waited.push(now - s.at(self.next));
            self.next += stride;
        }
        self.counted = self.counted.max(self.next);
        waited
    }

    /// Drops idle connections `usable` rejects.
    pub(super) fn prune(&mut self, usable: impl Fn(&C) -> bool) {
        self.idle.retain(|c| usable(c));
    }

    /// Open connections (idle or busy).
    pub(super) fn connections(&self) -> usize {
        self.idle.len() + self.busy
    }

    /// Requests due and waiting for a connection.
    pub(super) fn waiting(&self, s: &Schedule) -> u64 {
        self.counted.saturating_sub(self.next) / u64::from(s.workers)
    }

    /// Expires requests that waited past the timeout and puts due requests on idle
    /// connections (dropping those `usable` rejects); due requests that find none
    /// are counted as delayed once.
    pub(super) fn step(
        &mut self,
        s: &Schedule,
        now: Instant,
        usable: impl Fn(&C) -> bool,
        out: &mut Step<C>,
    ) {
        let stride = u64::from(s.workers);
        while s.at(self.next) + s.timeout <= now {
            out.expired.push((self.worker, now - s.at(self.next)));
            self.next += stride;
        }
        while s.at(self.next) <= now {
            let conn = loop {
                // The newest idle connection first: the oldest are the likeliest to
                // have been closed by the server's keep-alive timeout.
                match self.idle.pop_back() {
                    Some(c) if usable(&c) => break Some(c),
                    Some(_) => continue,
                    None => break None,
                }
            };
            let Some(conn) = conn else {
                let mut k = self.next.max(self.counted);
                while s.at(k) <= now {
                    out.delayed += 1;
                    k += stride;
                }
                self.counted = k;
                return;
            };
            out.sends.push(Send {
                worker: self.worker,
                intended: s.at(self.next),
                conn,
            });
            self.busy += 1;
            self.next += stride;
        }
    }

    /// When this lane next needs the scheduler: its next request's send time, or
    /// (when it waits for a connection) its oldest request's timeout.
    pub(super) fn wake(&self, s: &Schedule, now: Instant) -> Instant {
        let t = s.at(self.next);
        if t > now { t } else { t + s.timeout }
    }

    /// When to open how many connections to have `per_worker`: all missing ones at
    /// once, but after an attempt that gave nothing, one at a time with backoff.
    pub(super) fn dials(&self, per_worker: usize) -> Option<(Instant, usize)> {
        let missing = per_worker.checked_sub(self.connections() + self.dialing)?;
        match (missing, self.misses) {
            (0, _) => None,
            (n, 0) => Some((self.retry_at, n)),
            _ if self.dialing > 0 => None,
            _ => Some((self.retry_at, 1)),
        }
    }

    /// An attempt to open a connection gave this lane none.
    pub(super) fn missed(&mut self, now: Instant) {
        self.misses = self.misses.saturating_add(1);
        self.retry_at = now + backoff(self.misses);
    }
}

/// The pause before the next attempt after `misses` fruitless ones: 10 ms doubling
/// to 1 s.
pub(super) fn backoff(misses: u32) -> Duration {
    if misses == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(5u64 << misses.min(8)).min(Duration::from_secs(1))
}
