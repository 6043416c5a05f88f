//! Demo servers under the session: starting one in place of another (a model
//! switch, a restart) without blocking, and reaping, reporting and restarting a demo
//! child that died — with a growing delay, and not after repeated quick deaths.

use std::time::{Duration, Instant};

use super::demo_child::START_TIMEOUT;
use super::{LogKind, Msg, Session, Update, demo_child};
use crate::protocol::Model;

/// A demo child that dies sooner than this after starting died "quickly".
const QUICK_DEATH: Duration = Duration::from_secs(10);
/// After this many quick deaths in a row, the session stops restarting it.
const MAX_QUICK_DEATHS: usize = 3;

/// The wait before restarting a demo child that died, after `quick` quick deaths in
/// a row: 0.5 s, doubling, at most 4 s.
pub fn restart_delay(quick: usize) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << quick.min(16))
        .min(Duration::from_secs(4))
}

impl Session {
    /// Stops target `i`'s demo and starts `model`; the switch completes in
    /// [`Session::finish_switch`] when the new server prints its address, so the
    /// session keeps running meanwhile.
    pub(super) fn switch_model(&mut self, i: usize, model: Model, workers: u32) {
        self.start_demo(
            i,
            model,
            workers,
            format!("switching to the {model} model…"),
        );
    }

    /// Starts a demo server of `model` in target `i` in place of the old one (if
    /// any), saying `why` in the log.
    pub(super) fn start_demo(&mut self, i: usize, model: Model, workers: u32, why: String) {
        if self.targets[i].starting.is_some() {
            return;
        }
        self.targets[i].restart_at = None;
        self.push(i, Msg::Log(LogKind::Trigger, why));
        // The old server goes first, so its CPU does not blur the new one's start.
        let generation = self.targets[i].stop();
        let tx = self.started_tx.clone();
        let on_line = Box::new(move |line| {
            let _ = tx.blocking_send((i, generation, line));
        });
        let now = Instant::now();
        self.targets[i].last_demo = Some((model, workers));
        match (self.launch)(model, workers, &self.log_file, on_line) {
            Ok(child) => self.targets[i].starting = Some((child, now)),
            Err(e) => {
                let why = format!("cannot start the {model} demo: {e:#}");
                self.failed_start(i, model, workers, now, why);
            }
        }
    }

    /// A start that failed counts as a quick death: it is retried later, and not
    /// after repeated failures.
    fn failed_start(&mut self, i: usize, model: Model, workers: u32, since: Instant, why: String) {
        self.push(i, Msg::ServerDown(why));
        let next = after_death(
            &mut self.targets[i].quick_deaths,
            Some(since),
            Instant::now(),
        );
        self.plan_restart(i, model, workers, next);
    }

    /// Schedules a restart after `next`, or says the session gave up.
    fn plan_restart(&mut self, i: usize, model: Model, workers: u32, next: Option<Duration>) {
        match next {
            Some(delay) => {
                self.targets[i].restart_at = Some((Instant::now() + delay, model, workers));
                let text = format!("restarting it in {:.1} s", delay.as_secs_f64());
                self.push(i, Msg::Log(LogKind::Info, text));
            }
            None => {
                let again = if self.can_switch() {
                    "m starts one"
                } else {
                    "start loopscope again"
                };
                let text = format!(
                    "the {model} demo died {MAX_QUICK_DEATHS} times within {} s of starting: not restarting it (see {}; {again})",
                    QUICK_DEATH.as_secs(),
                    self.log_file.display()
                );
                self.push(i, Msg::Log(LogKind::Warn, text));
            }
        }
    }

    pub(super) fn finish_switch(&mut self, i: usize, generation: u64, line: &str) {
        if self.targets[i].generation != generation {
            return;
        }
        let Some((mut child, since)) = self.targets[i].starting.take() else {
            return;
        };
        match demo_child::parse_address(line, &self.log_file) {
            Ok(address) => {
                child.address = address;
                self.targets[i].set_child(child);
                self.push(
                    i,
                    Msg::Reset {
                        keep_log: true,
                        info: None,
                    },
                );
                if let Some(text) = self.targets[i].started_text() {
                    self.push(i, Msg::Log(LogKind::Info, text));
                }
                self.pending.push_back(Update::Restarted {
                    target: i,
                    took: since.elapsed(),
                });
                self.subscribe(i);
            }
            Err(e) => {
                let (model, workers) = (child.model, child.workers);
                drop(child);
                let why = format!("cannot start the {model} demo: {e:#}");
                self.failed_start(i, model, workers, since, why);
            }
        }
    }

    /// Reaps demo children that died, says how, and restarts them (with a growing
    /// delay; not after repeated quick deaths).
    pub(super) fn supervise(&mut self) {
        let now = Instant::now();
        for i in 0..self.targets.len() {
            // A new server that never says where it listens is given up on.
            let stuck = self.targets[i]
                .starting
                .as_ref()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) > START_TIMEOUT);
            if stuck {
                let (child, since) = self.targets[i].starting.take().expect("checked");
                let (model, workers) = (child.model, child.workers);
                drop(child);
                // Its address line, should it come now, belongs to nobody.
                self.targets[i].generation += 1;
                let why = format!(
                    "the {model} demo did not start within {} s",
                    START_TIMEOUT.as_secs()
                );
                self.failed_start(i, model, workers, since, why);
                continue;
            }
            if let Some((due, model, workers)) = self.targets[i].restart_at {
                if now >= due {
                    let why = format!("restarting the {model} demo…");
                    self.start_demo(i, model, workers, why);
                }
                continue;
            }
            let started = self.targets[i].started_at;
            let Some((model, workers, pid, how)) = self.targets[i].reap() else {
                continue;
            };
            self.targets[i].stop();
            let next = after_death(&mut self.targets[i].quick_deaths, started, now);
            self.push(
                i,
                Msg::ServerDown(format!("the {model} demo (pid {pid}) {how}")),
            );
            self.plan_restart(i, model, workers, next);
        }
    }
}

/// After a demo child that started at `started` died at `now`: the delay before
/// restarting it, or `None` to give up after [`MAX_QUICK_DEATHS`] quick deaths in a
/// row. `quick_deaths` keeps the count between deaths.
pub(super) fn after_death(
    quick_deaths: &mut Vec<Instant>,
    started: Option<Instant>,
    now: Instant,
) -> Option<Duration> {
    match started {
        Some(s) if now.saturating_duration_since(s) < QUICK_DEATH => quick_deaths.push(s),
        _ => quick_deaths.clear(),
    }
    if quick_deaths.len() >= MAX_QUICK_DEATHS {
        quick_deaths.clear();
        return None;
    }
    Some(restart_delay(quick_deaths.len().saturating_sub(1)))
}
