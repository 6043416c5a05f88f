//! An open-loop load generator: requests go out at a constant rate whatever the
//! server does, and latency counts from each request's *intended* send time (wrk2's
//! coordinated-omission correction), so a stall shows in the numbers instead of
//! silently slowing the sender down.
//!
//! Concurrency is bounded: when every slot is busy, due requests wait for one, and
//! their wait counts as latency. A request that takes longer than the timeout counts
//! as a timeout.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::http::{self, HttpClient};
use crate::probe::LatencyHistogram;

/// What to send.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    /// Requests per second; 0 pauses the load.
    pub rate: f64,
    /// The request target, e.g. `/hello`.
    pub path: String,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// A request slower than this is abandoned and counted as a timeout.
    pub timeout: Duration,
    /// How many workers the server has: the load is spread over all of them.
    pub workers: u32,
}

impl Default for LoadPlan {
    fn default() -> Self {
        Self {
            rate: 50.0,
            path: "/hello".into(),
            max_in_flight: 256,
            timeout: Duration::from_secs(2),
            workers: 1,
        }
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
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests sent later than intended because every slot was busy.
    pub delayed_sends: u64,
    /// The same figures per worker the load is aimed at.
    pub workers: Vec<WorkerLoadStats>,
}

/// Client-side figures of the requests sent to one worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerLoadStats {
    /// The worker.
    pub worker: u32,
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests abandoned after the timeout.
    pub timeouts: u64,
    /// Median latency from the intended send time, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
}

#[derive(Default)]
struct Window {
    latency: LatencyHistogram,
    ok: u64,
    errors: u64,
    timeouts: u64,
    delayed_sends: u64,
}

/// A running load generator; stops when dropped.
pub struct LoadGenerator {
    plan: watch::Sender<LoadPlan>,
    window: Arc<Mutex<Window>>,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadGenerator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LoadGenerator {
    /// Starts sending to `addr` (host:port) on the current runtime.
    pub fn start(client: HttpClient, addr: String, plan: LoadPlan) -> Self {
        let max_in_flight = plan.max_in_flight.max(1);
        let (tx, rx) = watch::channel(plan);
        let window = Arc::new(Mutex::new(Window::default()));
        let slots = Arc::new(Semaphore::new(max_in_flight));
        let task = tokio::spawn(run(
            client,
            addr,
            rx,
            Arc::clone(&window),
            Arc::clone(&slots),
        ));
        Self {
            plan: tx,
            window,
            slots,
            max_in_flight,
            task,
        }
    }

    /// Changes the plan; the schedule restarts from now at the new rate.
    pub fn set_plan(&self, plan: LoadPlan) {
        let _ = self.plan.send(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> LoadPlan {
        self.plan.borrow().clone()
    }

    /// The figures since the previous call.
    pub fn take(&self) -> LoadStats {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = LoadStats {
            ok: w.ok,
            errors: w.errors,
            timeouts: w.timeouts,
            p50_ms: w.latency.quantile_ms(0.5),
            p99_ms: w.latency.quantile_ms(0.99),
            max_ms: w.latency.max_ms(),
            in_flight: (self.max_in_flight - self.slots.available_permits()) as u64,
            delayed_sends: w.delayed_sends,
            workers: Vec::new(),
        };
        *w = Window::default();
        stats
    }
}

/// The `n`-th send time of a schedule that started at `start`.
pub fn intended_send(start: Instant, rate: f64, n: u64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

async fn run(
    client: HttpClient,
    addr: String,
    mut plan_rx: watch::Receiver<LoadPlan>,
    window: Arc<Mutex<Window>>,
    slots: Arc<Semaphore>,
) {
    loop {
        let plan = plan_rx.borrow_and_update().clone();
        if plan.rate <= 0.0 {
            if plan_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            let due = intended_send(start, plan.rate, n);
            tokio::select! {
                changed = plan_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(due) => {}
            }
            // Send everything due by now (the timer wakes at most every millisecond).
            let now = Instant::now();
            let mut replan = false;
            while intended_send(start, plan.rate, n) <= now {
                let intended = intended_send(start, plan.rate, n);
                n += 1;
                let permit = match Arc::clone(&slots).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        window
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .delayed_sends += 1;
                        // Every slot is busy: wait for one, but obey a new plan at once.
                        tokio::select! {
                            p = Arc::clone(&slots).acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => return,
                            },
                            changed = plan_rx.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                replan = true;
                                break;
                            }
                        }
                    }
                };
                let (client, addr, path, window) = (
                    client.clone(),
                    addr.clone(),
                    plan.path.clone(),
                    Arc::clone(&window),
                );
                let timeout = plan.timeout;
                tokio::spawn(async move {
                    let result = tokio::time::timeout_at(
                        intended + timeout,
                        http::get(&client, &addr, &path),
                    )
                    .await;
                    let latency = intended.elapsed();
                    let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(Ok(r)) if (200..300).contains(&r.status) => {
                            w.ok += 1;
                            w.latency.record(latency);
                        }
                        Ok(_) => {
                            w.errors += 1;
                        }
                        Err(_) => {
                            w.timeouts += 1;
                            w.latency.record(latency);
                        }
                    }
                    drop(permit);
                });
            }
            if replan {
                break;
            }
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
}
