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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

mod lane;

use lane::{Lane, Schedule, Step};

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
    // A rate so small that the time overflows means "never" (a day on).
    let after = Duration::try_from_secs_f64(n as f64 / rate)
        .unwrap_or(Duration::from_secs(86_400))
        .min(Duration::from_secs(86_400 * 365));
    start + after
}

/// The worker that request `n` of a schedule goes to.
pub fn worker_for(n: u64, workers: u32) -> u32 {
    (n % u64::from(workers.max(1))) as u32
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
                // Connections the server closed (its keep-alive timeout) are replaced
                // before a request needs one.
                lane.prune(|c| !c.is_closed());
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
                if new == plan {
                    // Nothing changed: the schedule goes on.
                    continue;
                }
                let now = Instant::now();
                // Requests due and still waiting for a connection are not forgotten:
                // they count as timed out, with how long they waited so far.
                if plan.rate > 0.0 {
                    let mut w = shared.window.lock().unwrap_or_else(PoisonError::into_inner);
                    for lane in &mut lanes {
                        for latency in lane.abandon(&sched, now) {
                            w.record(lane.worker, Outcome::Timeout, latency);
                        }
                    }
                }
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
mod tests;
