//! An open-loop load generator: requests go out at a constant rate whatever the
//! server does, and latency counts from each request's *intended* send time (wrk2's
//! coordinated-omission correction), so a stall shows in the numbers instead of
//! silently slowing the sender down.
//!
//! The load is aimed at the server's workers one by one, as a crowd of keep-alive
//! clients is: the generator keeps a small fixed set of connections per worker
//! (which worker accepts a connection is the kernel's choice, so each new connection
//! asks `GET /hello` which worker it reached, and one that reached another worker
//! joins that worker's set), and request `n` goes to worker `n % workers` over an
//! idle connection of that worker. When a worker stalls, its connections stay busy
//! and its requests wait for them — their latency, from the intended send time,
//! grows — while the other workers' requests go on as before.
//!
//! Waiting requests are not objects: each worker's requests form an arithmetic
//! sequence, so "waiting" is a cursor behind the clock. A request that waited past
//! the timeout counts as a timeout without being sent; one that waits for a
//! connection at all counts as a delayed send. Connections that fail or time out are
//! dropped and replaced, with backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http::{self, Connection, HttpClient};
use crate::probe::LatencyHistogram;

/// What to send.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    /// Requests per second; 0 pauses the load.
    pub rate: f64,
    /// The request target, e.g. `/hello`.
    pub path: String,
    /// Most requests on the wire at once: caps the connections, at most
    /// `max(1, max_in_flight / workers)` per worker.
    pub max_in_flight: usize,
    /// A request slower than this (waiting for a connection included) is abandoned
    /// and counted as a timeout.
    pub timeout: Duration,
    /// How many workers the server has; request `n` goes to worker `n % workers`.
    /// With 1, a connection serves whichever worker accepted it (no `/hello` check).
    pub workers: u32,
    /// Keep-alive connections kept open to each worker.
    pub connections_per_worker: usize,
}

impl Default for LoadPlan {
    fn default() -> Self {
        Self {
            rate: 50.0,
            path: "/hello".into(),
            max_in_flight: 256,
            timeout: Duration::from_secs(2),
            workers: 1,
            connections_per_worker: 4,
        }
    }
}

impl LoadPlan {
    fn lanes(&self) -> u32 {
        self.workers.max(1)
    }

    /// Connections kept per worker.
    fn per_worker(&self) -> usize {
        let cap = (self.max_in_flight / self.lanes() as usize).max(1);
        self.connections_per_worker.clamp(1, cap)
    }
}

/// Figures over a window of requests (since the previous [`LoadGenerator::take`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadStats {
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Requests that failed (connection error or non-2xx).
    pub errors: u64,
    /// Requests abandoned after the timeout.
    pub timeouts: u64,
    /// Latency from the intended send time, in ms.
    pub p50_ms: f64,
    /// 99th percentile latency, in ms.
    pub p99_ms: f64,
    /// Largest latency, in ms.
    pub max_ms: f64,
    /// Requests in flight now, and those due that wait for a connection.
    pub in_flight: u64,
    /// Requests that were due while no connection to their worker was idle.
    pub delayed_sends: u64,
    /// The same figures for the requests sent to each worker, one entry per worker
    /// the plan aims at, in order.
    pub workers: Vec<WorkerLoadStats>,
}

/// [`LoadStats`] of the requests sent to one worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerLoadStats {
    /// The worker's number (as its `/hello` answer names it).
    pub worker: u32,
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Requests that failed (connection error or non-2xx).
    pub errors: u64,
    /// Requests abandoned after the timeout.
    pub timeouts: u64,
    /// Latency from the intended send time, in ms.
    pub p50_ms: f64,
    /// 99th percentile latency, in ms.
    pub p99_ms: f64,
    /// Largest latency, in ms.
    pub max_ms: f64,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Timeout,
}

/// Counts and latencies of one set of requests.
#[derive(Default)]
struct Tally {
    latency: LatencyHistogram,
    ok: u64,
    errors: u64,
    timeouts: u64,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.latency.record(latency);
            }
            Outcome::Error => self.errors += 1,
            Outcome::Timeout => {
                self.timeouts += 1;
                self.latency.record(latency);
            }
        }
    }

    fn reset(&mut self) {
        self.latency.reset();
        self.ok = 0;
        self.errors = 0;
        self.timeouts = 0;
    }
}

/// The requests since the last [`Window::take`]: all of them and per worker.
#[derive(Default)]
struct Window {
    all: Tally,
    workers: Vec<Tally>,
    delayed_sends: u64,
}

impl Window {
    fn record(&mut self, worker: u32, outcome: Outcome, latency: Duration) {
        self.all.record(outcome, latency);
        let i = worker as usize;
        if self.workers.len() <= i {
            self.workers.resize_with(i + 1, Tally::default);
        }
        self.workers[i].record(outcome, latency);
    }

    /// The figures, with one entry for each of workers `0..workers`; empties the
    /// window.
    fn take(&mut self, workers: u32, in_flight: u64) -> LoadStats {
        let empty = Tally::default();
        let per_worker = (0..workers)
            .map(|w| {
                let t = self.workers.get(w as usize).unwrap_or(&empty);
                WorkerLoadStats {
                    worker: w,
                    ok: t.ok,
                    errors: t.errors,
                    timeouts: t.timeouts,
                    p50_ms: t.latency.quantile_ms(0.5),
                    p99_ms: t.latency.quantile_ms(0.99),
                    max_ms: t.latency.max_ms(),
                }
            })
            .collect();
        let stats = LoadStats {
            ok: self.all.ok,
            errors: self.all.errors,
            timeouts: self.all.timeouts,
            p50_ms: self.all.latency.quantile_ms(0.5),
            p99_ms: self.all.latency.quantile_ms(0.99),
            max_ms: self.all.latency.max_ms(),
            in_flight,
            delayed_sends: self.delayed_sends,
            workers: per_worker,
        };
        self.all.reset();
        self.workers.iter_mut().for_each(Tally::reset);
        self.delayed_sends = 0;
        stats
    }
}

struct Shared {
    window: Mutex<Window>,
    in_flight: AtomicU64,
}

/// A running load generator; stops when dropped (with its requests and connections).
pub struct LoadGenerator {
    plan: watch::Sender<LoadPlan>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadGenerator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LoadGenerator {
    /// Starts sending to `addr` (host:port) on the current runtime. The generator
    /// opens its own connections (it must know which worker each one reached), so
    /// `client` is not used.
    pub fn start(client: HttpClient, addr: String, plan: LoadPlan) -> Self {
        drop(client);
        let (tx, rx) = watch::channel(plan);
        let shared = Arc::new(Shared {
            window: Mutex::new(Window::default()),
            in_flight: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(addr.into(), rx, Arc::clone(&shared)));
        Self {
            plan: tx,
            shared,
            task,
        }
    }

    /// Changes the plan; the schedule restarts from now at the new rate. A new
    /// number of workers (or of connections per worker) reopens the connections.
    pub fn set_plan(&self, plan: LoadPlan) {
        let _ = self.plan.send(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> LoadPlan {
        self.plan.borrow().clone()
    }

    /// The figures since the previous call.
    pub fn take(&self) -> LoadStats {
        let workers = self.plan.borrow().lanes();
        let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        self.shared
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(workers, in_flight)
    }
}

/// The `n`-th send time of a schedule that started at `start`.
pub fn intended_send(start: Instant, rate: f64, n: u64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// The worker that request `n` of a schedule goes to.
pub fn worker_for(n: u64, workers: u32) -> u32 {
    (n % u64::from(workers.max(1))) as u32
}

/// The send schedule of one plan: request `n` is due at `start + n / rate` and goes
/// to worker `n % workers`.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    start: Instant,
    rate: f64,
    workers: u32,
    timeout: Duration,
}

impl Schedule {
    fn at(&self, n: u64) -> Instant {
        intended_send(self.start, self.rate, n)
    }
}

/// A request to put on a connection.
struct Send<C> {
    worker: u32,
    intended: Instant,
    conn: C,
}

/// What one pass over the lanes decided.
struct Step<C> {
    sends: Vec<Send<C>>,
    /// Requests that waited past the timeout: worker and latency.
    expired: Vec<(u32, Duration)>,
    delayed: u64,
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
struct Lane<C> {
    worker: u32,
    /// The oldest request of this lane not sent yet.
    next: u64,
    /// Requests of this lane below this one were counted as delayed.
    counted: u64,
    idle: VecDeque<C>,
    /// Connections carrying a request.
    busy: usize,
    /// Connections being opened for this lane.
    dialing: usize,
    /// Consecutive attempts that gave this lane no connection.
    misses: u32,
    /// No new attempt before this.
    retry_at: Instant,
}

impl<C> Lane<C> {
    fn new(worker: u32, now: Instant) -> Self {
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
    fn restart(&mut self) {
        self.next = u64::from(self.worker);
        self.counted = self.next;
    }

    /// Open connections (idle or busy).
    fn connections(&self) -> usize {
        self.idle.len() + self.busy
    }

    /// Requests due and waiting for a connection.
    fn waiting(&self, s: &Schedule) -> u64 {
        self.counted.saturating_sub(self.next) / u64::from(s.workers)
    }

    /// Expires requests that waited past the timeout and puts due requests on idle
    /// connections (dropping those `usable` rejects); due requests that find none
    /// are counted as delayed once.
    fn step(&mut self, s: &Schedule, now: Instant, usable: impl Fn(&C) -> bool, out: &mut Step<C>) {
        let stride = u64::from(s.workers);
        while s.at(self.next) + s.timeout <= now {
            out.expired.push((self.worker, now - s.at(self.next)));
            self.next += stride;
        }
        while s.at(self.next) <= now {
            let conn = loop {
                match self.idle.pop_front() {
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
    fn wake(&self, s: &Schedule, now: Instant) -> Instant {
        let t = s.at(self.next);
        if t > now { t } else { t + s.timeout }
    }

    /// When to open how many connections to have `per_worker`: all missing ones at
    /// once, but after an attempt that gave nothing, one at a time with backoff.
    fn dials(&self, per_worker: usize) -> Option<(Instant, usize)> {
        let missing = per_worker.checked_sub(self.connections() + self.dialing)?;
        match (missing, self.misses) {
            (0, _) => None,
            (n, 0) => Some((self.retry_at, n)),
            _ if self.dialing > 0 => None,
            _ => Some((self.retry_at, 1)),
        }
    }

    /// An attempt to open a connection gave this lane none.
    fn missed(&mut self, now: Instant) {
        self.misses = self.misses.saturating_add(1);
        self.retry_at = now + backoff(self.misses);
    }
}

/// The pause before the next attempt after `misses` fruitless ones: 10 ms doubling
/// to 1 s.
fn backoff(misses: u32) -> Duration {
    if misses == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(5u64 << misses.min(8)).min(Duration::from_secs(1))
}

/// What a task of the generator reports back.
enum Event {
    /// A request ended; the connection comes back unless it failed.
    Done {
        epoch: u64,
        worker: u32,
        outcome: Outcome,
        latency: Duration,
        conn: Option<Connection>,
    },
    /// An attempt to open a connection for `lane` ended: the connection and the
    /// worker its `/hello` named.
    Dialed {
        epoch: u64,
        lane: u32,
        conn: Option<(Connection, Option<u64>)>,
    },
}

async fn request(
    mut conn: Connection,
    addr: Arc<str>,
    path: Arc<str>,
    worker: u32,
    epoch: u64,
    intended: Instant,
    timeout: Duration,
) -> Event {
    let result =
        tokio::time::timeout_at(intended + timeout, http::get_on(&mut conn, &addr, &path)).await;
    let latency = intended.elapsed();
    let (outcome, keep) = match result {
        Ok(Ok(r)) if (200..300).contains(&r.status) => (Outcome::Ok, true),
        Ok(Ok(_)) => (Outcome::Error, true),
        Ok(Err(_)) => (Outcome::Error, false),
        Err(_) => (Outcome::Timeout, false),
    };
    Event::Done {
        epoch,
        worker,
        outcome,
        latency,
        conn: keep.then_some(conn),
    }
}

async fn dial(addr: Arc<str>, lane: u32, epoch: u64, probe: bool, timeout: Duration) -> Event {
    let conn = tokio::time::timeout(timeout, async {
        let mut conn = http::connect(&addr).await.ok()?;
        let served = if probe {
            http::served_by(&mut conn, &addr).await.ok()?
        } else {
            None
        };
        Some((conn, served))
    })
    .await
    .ok()
    .flatten();
    Event::Dialed { epoch, lane, conn }
}

/// The scheduler: one task that owns the connections, sends what is due, expires
/// what waited too long and replaces lost connections.
async fn run(addr: Arc<str>, mut plan_rx: watch::Receiver<LoadPlan>, shared: Arc<Shared>) {
    let mut plan = plan_rx.borrow_and_update().clone();
    let mut path: Arc<str> = plan.path.as_str().into();
    let now = Instant::now();
    let mut lanes: Vec<Lane<Connection>> = (0..plan.lanes()).map(|w| Lane::new(w, now)).collect();
    // Connections and requests of an older set of lanes are not taken back.
    let mut epoch = 0u64;
    let mut sched = Schedule {
        start: now,
        rate: plan.rate,
        workers: plan.lanes(),
        timeout: plan.timeout,
    };
    let mut tasks: JoinSet<Event> = JoinSet::new();
    let mut step = Step::default();
    let mut events = Vec::new();
    let sleep = tokio::time::sleep_until(now);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let per_worker = plan.per_worker();
        let running = plan.rate > 0.0;
        let mut wake = now + Duration::from_secs(3600);
        if running {
            for lane in &mut lanes {
                if let Some((_, n)) = lane.dials(per_worker).filter(|&(at, _)| at <= now) {
                    for _ in 0..n {
                        tasks.spawn(dial(
                            Arc::clone(&addr),
                            lane.worker,
                            epoch,
                            sched.workers > 1,
                            plan.timeout,
                        ));
                    }
                    lane.dialing += n;
                }
            }
            for lane in &mut lanes {
                lane.step(&sched, now, |c| !c.is_closed(), &mut step);
                wake = wake.min(lane.wake(&sched, now));
                if let Some((at, _)) = lane.dials(per_worker) {
                    wake = wake.min(at.max(now));
                }
            }
            for s in step.sends.drain(..) {
                tasks.spawn(request(
                    s.conn,
                    Arc::clone(&addr),
                    Arc::clone(&path),
                    s.worker,
                    epoch,
                    s.intended,
                    plan.timeout,
                ));
            }
            if step.delayed > 0 || !step.expired.is_empty() {
                let mut w = shared.window.lock().unwrap_or_else(PoisonError::into_inner);
                w.delayed_sends += step.delayed;
                for (worker, latency) in step.expired.drain(..) {
                    w.record(worker, Outcome::Timeout, latency);
                }
                step.delayed = 0;
            }
        }
        let in_flight: u64 = lanes
            .iter()
            .map(|l| l.busy as u64 + if running { l.waiting(&sched) } else { 0 })
            .sum();
        shared.in_flight.store(in_flight, Ordering::Relaxed);
        sleep.as_mut().reset(wake);

        tokio::select! {
            biased;
            changed = plan_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let new = plan_rx.borrow_and_update().clone();
                let now = Instant::now();
                if (new.lanes(), new.per_worker()) != (plan.lanes(), plan.per_worker()) {
                    epoch += 1;
                    lanes = (0..new.lanes()).map(|w| Lane::new(w, now)).collect();
                }
                lanes.iter_mut().for_each(Lane::restart);
                plan = new;
                path = plan.path.as_str().into();
                sched = Schedule {
                    start: now,
                    rate: plan.rate,
                    workers: plan.lanes(),
                    timeout: plan.timeout,
                };
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                events.extend(joined.ok());
                while let Some(joined) = tasks.try_join_next() {
                    events.extend(joined.ok());
                }
                let now = Instant::now();
                let mut w = shared.window.lock().unwrap_or_else(PoisonError::into_inner);
                for event in events.drain(..) {
                    match event {
                        Event::Done { epoch: e, worker, outcome, latency, conn } => {
                            w.record(worker, outcome, latency);
                            if e != epoch {
                                continue;
                            }
                            let lane = &mut lanes[worker as usize];
                            lane.busy -= 1;
                            if let Some(conn) = conn {
                                lane.idle.push_back(conn);
                            }
                        }
                        Event::Dialed { epoch: e, lane, conn } => {
                            if e != epoch {
                                continue;
                            }
                            lanes[lane as usize].dialing -= 1;
                            let target = conn.and_then(|(conn, served)| {
                                let to = if sched.workers == 1 { Some(0) } else { served };
                                let to = to.filter(|&t| t < u64::from(sched.workers))? as usize;
                                (lanes[to].connections() < per_worker).then_some((to, conn))
                            });
                            match target {
                                Some((to, conn)) => {
                                    lanes[to].idle.push_back(conn);
                                    lanes[to].misses = 0;
                                    lanes[to].retry_at = now;
                                    if to != lane as usize {
                                        lanes[lane as usize].missed(now);
                                    }
                                }
                                None => lanes[lane as usize].missed(now),
                            }
                        }
                    }
                }
            }
            () = &mut sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_from_the_start() {
        let t0 = Instant::now();
        assert_eq!(intended_send(t0, 100.0, 0), t0);
        assert_eq!(
            intended_send(t0, 100.0, 150) - t0,
            Duration::from_millis(1500)
        );
        assert_eq!(intended_send(t0, 4.0, 3) - t0, Duration::from_millis(750));
    }

    /// 100 req/s over `workers`, 100 ms timeout.
    fn sched(t0: Instant, workers: u32) -> Schedule {
        Schedule {
            start: t0,
            rate: 100.0,
            workers,
            timeout: Duration::from_millis(100),
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn requests_go_round_robin_and_each_lane_sends_only_its_own() {
        assert_eq!(
            (0..7).map(|n| worker_for(n, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(worker_for(5, 1), 0);
        assert_eq!(worker_for(5, 0), 0);

        // 3 workers at 100 req/s, plenty of connections: after 195 ms, requests
        // 0..=19 went out, each to its worker, at its own intended time.
        let t0 = Instant::now();
        let s = Schedule {
            timeout: Duration::from_secs(1),
            ..sched(t0, 3)
        };
        let mut lanes: Vec<Lane<u32>> = (0..3).map(|w| Lane::new(w, t0)).collect();
        for lane in &mut lanes {
            lane.idle.extend(0..10);
        }
        let mut sent = Vec::new();
        for now in [ms(t0, 0), ms(t0, 42), ms(t0, 195)] {
            let mut step = Step::default();
            for lane in &mut lanes {
                lane.step(&s, now, |_| true, &mut step);
            }
            assert_eq!(step.delayed, 0);
            sent.extend(step.sends.into_iter().map(|x| (x.worker, x.intended)));
        }
        sent.sort_by_key(|&(_, t)| t);
        let expect: Vec<_> = (0..20u64)
            .map(|n| (worker_for(n, 3), ms(t0, n * 10)))
            .collect();
        assert_eq!(sent, expect);
    }

    #[test]
    fn a_lane_without_an_idle_connection_waits_then_expires() {
        // Worker 0 of 2: its requests are 0, 2, 4, … due every 20 ms.
        let t0 = Instant::now();
        let s = sched(t0, 2);
        let mut lane: Lane<u32> = Lane::new(0, t0);
        lane.idle.push_back(7);
        let mut step = Step::default();
        lane.step(&s, ms(t0, 25), |_| true, &mut step);
        // Request 0 took the only connection; request 2 (due at 20 ms) waits.
        assert_eq!(step.sends.len(), 1);
        assert_eq!((step.delayed, lane.waiting(&s), lane.busy), (1, 1, 1));
        // Counted once, however often the lane is looked at.
        let mut again = Step::default();
        lane.step(&s, ms(t0, 30), |_| true, &mut again);
        assert_eq!((again.delayed, again.sends.len()), (0, 0));
        assert_eq!(lane.wake(&s, ms(t0, 30)), ms(t0, 120));
        // The connection comes back at 50 ms: request 2 goes out with its intended
        // time; request 4 (due at 40 ms) was counted and still waits.
        lane.busy -= 1;
        lane.idle.push_back(7);
        let mut back = Step::default();
        lane.step(&s, ms(t0, 50), |_| true, &mut back);
        assert_eq!(back.sends.len(), 1);
        assert_eq!(back.sends[0].intended, ms(t0, 20));
        assert_eq!(back.delayed, 1);
        // Nothing comes back: at 165 ms, requests 4 (40 ms) and 6 (60 ms) are past
        // the 100 ms timeout.
        let mut late = Step::default();
        lane.step(&s, ms(t0, 165), |_| true, &mut late);
        assert_eq!(
            late.expired,
            [
                (0, Duration::from_millis(125)),
                (0, Duration::from_millis(105))
            ]
        );
        assert_eq!(lane.next, 8);
        // 8, 10, 12, 14, 16 (80…160 ms) now wait, newly counted.
        assert_eq!((late.delayed, lane.waiting(&s)), (5, 5));
    }

    #[test]
    fn closed_connections_are_skipped() {
        let t0 = Instant::now();
        let s = sched(t0, 1);
        let mut lane: Lane<u32> = Lane::new(0, t0);
        lane.idle.extend([1, 2, 3]);
        let mut step = Step::default();
        lane.step(&s, ms(t0, 0), |&c| c == 3, &mut step);
        assert_eq!(step.sends.len(), 1);
        assert_eq!(step.sends[0].conn, 3);
        assert_eq!(lane.connections(), 1);
    }

    #[test]
    fn stats_are_kept_per_worker_and_emptied_by_take() {
        let mut w = Window::default();
        for i in 1..=10 {
            w.record(0, Outcome::Ok, Duration::from_millis(i));
        }
        w.record(1, Outcome::Ok, Duration::from_millis(500));
        w.record(1, Outcome::Timeout, Duration::from_millis(2000));
        w.record(1, Outcome::Error, Duration::from_millis(1));
        w.delayed_sends = 4;
        let s = w.take(3, 6);
        assert_eq!((s.ok, s.errors, s.timeouts), (11, 1, 1));
        assert_eq!((s.in_flight, s.delayed_sends), (6, 4));
        assert!((s.max_ms - 2000.0).abs() < 2.0, "{s:?}");
        assert_eq!(s.workers.len(), 3);
        let (w0, w1, w2) = (&s.workers[0], &s.workers[1], &s.workers[2]);
        assert_eq!((w0.worker, w0.ok, w0.errors, w0.timeouts), (0, 10, 0, 0));
        assert!((w0.max_ms - 10.0).abs() < 0.1 && (w0.p50_ms - 5.0).abs() < 0.1);
        assert_eq!((w1.worker, w1.ok, w1.errors, w1.timeouts), (1, 1, 1, 1));
        assert!((w1.p50_ms - 500.0).abs() < 1.0 && (w1.max_ms - 2000.0).abs() < 2.0);
        assert_eq!(
            *w2,
            WorkerLoadStats {
                worker: 2,
                ..Default::default()
            }
        );

        // Emptied; fewer workers asked for, fewer entries.
        let s = w.take(1, 0);
        assert_eq!(
            s,
            LoadStats {
                workers: vec![WorkerLoadStats::default()],
                ..Default::default()
            }
        );
    }

    #[test]
    fn connections_are_capped_and_retries_back_off() {
        let plan = |workers, max_in_flight, connections_per_worker| LoadPlan {
            workers,
            max_in_flight,
            connections_per_worker,
            ..LoadPlan::default()
        };
        assert_eq!(plan(2, 256, 4).per_worker(), 4);
        assert_eq!(plan(4, 8, 4).per_worker(), 2);
        assert_eq!(plan(4, 1, 4).per_worker(), 1);
        assert_eq!(plan(0, 256, 0).per_worker(), 1);
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(3), Duration::from_millis(40));
        assert_eq!(backoff(100), Duration::from_secs(1));
    }
}
