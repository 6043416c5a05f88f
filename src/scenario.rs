//! Scenarios: timed steps for workshops and scripts (set the load, trigger a workload,
//! switch model, show a caption), read from TOML.
//!
//! ```toml
//! name = "Node: one JSON parse stalls every request"
//! model = "node"            # or "fastapi", "tokio"; workers = 2
//!
//! [[step]]
//! caption = "A quiet Node server: one loop, lag near zero."
//! load = 100
//!
//! [[step]]
//! after = "3s"              # after the previous step
//! trigger = "json"          # json offload block spin sync hash fs sleep
//! mb = 20                   # mb, ms, iterations, kb, count: the workload's sizes;
//!                           # on = "loop" runs a hash on the loop (pbkdf2Sync)
//! caption = "JSON.parse of 20 MB on the loop: every request waits."
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::Model;
use crate::workload::{self, Request, Workload};

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Show a caption.
    Caption(String),
    /// Set the background load, requests per second (0: off).
    Load(f64),
    /// Send a workload's requests, all at once.
    Trigger(Request),
    /// Restart the demo in this model.
    Model {
        /// The model.
        model: Model,
        /// Its workers.
        workers: u32,
    },
}

/// One timed step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Delay after the previous step (or the start).
    pub after: Duration,
    /// What it does, in order: model, load, trigger, caption.
    pub actions: Vec<Action>,
}

/// A scenario file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Its title.
    pub name: String,
    /// The model the demo starts in.
    pub model: Model,
    /// Workers of the fastapi model (processes) or the tokio model (threads).
    pub workers: u32,
    /// The steps.
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    workers: Option<u32>,
    #[serde(rename = "step")]
    steps: Vec<RawStep>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStep {
    after: Option<String>,
    caption: Option<String>,
    load: Option<f64>,
    trigger: Option<String>,
    mb: Option<u32>,
    ms: Option<u32>,
    iterations: Option<u32>,
    kb: Option<u32>,
    count: Option<u32>,
    on: Option<String>,
    model: Option<String>,
    workers: Option<u32>,
}

fn model_named(name: &str) -> Result<Model, String> {
    match name {
        "node" => Ok(Model::Node),
        "fastapi" => Ok(Model::Fastapi),
        "tokio" => Ok(Model::Tokio),
        other => Err(format!(
            "model {other:?} is not one of: node, fastapi, tokio"
        )),
    }
}

/// The step's workload, checked against the catalog: the size goes under the
/// workload's own parameter name, within its range.
fn trigger(raw: &RawStep, name: &str) -> Result<Action, String> {
    let workload = Workload::named(name).filter(|w| *w != Workload::Hello);
    let Some(workload) = workload else {
        return Err(format!(
            "trigger {name:?} is not one of: {}",
            workload::names()
        ));
    };
    let spec = workload.spec();
    let mut value = None;
    for (param, given) in [
        ("mb", raw.mb),
        ("ms", raw.ms),
        ("iterations", raw.iterations),
        ("kb", raw.kb),
    ] {
        let Some(v) = given else { continue };
        match spec.param {
            Some(p) if p.name == param => value = Some(u64::from(v)),
            Some(p) => {
                return Err(format!("{name} takes {} (not {param})", p.name));
            }
            None => return Err(format!("{name} takes no size")),
        }
    }
    let count = raw.count.map_or(spec.burst, |c| c as usize);
    let mut request = Request::new(workload, value, count)?;
    match raw.on.as_deref() {
        None | Some("pool") => {}
        Some("loop") if workload == Workload::Hash => request.on_loop = true,
        Some("loop") => return Err(format!("on = \"loop\" applies to hash only, not {name}")),
        Some(other) => return Err(format!("on = {other:?} is not one of: pool, loop")),
    }
    Ok(Action::Trigger(request))
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| e.to_string())?;
        let model = model_named(raw.model.as_deref().unwrap_or("node"))?;
        let workers = raw.workers.unwrap_or(2).clamp(1, 64);
        if raw.steps.is_empty() {
            return Err("a scenario needs at least one [[step]]".into());
        }
        let mut steps = Vec::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let at = |e: String| format!("step {}: {e}", i + 1);
            let after = match &s.after {
                Some(d) => parse_duration(d).map_err(at)?,
                None => Duration::ZERO,
            };
            let mut actions = Vec::new();
            if let Some(m) = &s.model {
                actions.push(Action::Model {
                    model: model_named(m).map_err(at)?,
                    workers: s.workers.unwrap_or(workers).clamp(1, 64),
                });
            }
            if let Some(rate) = s.load {
                if !(rate == 0.0 || rate.is_finite() && (0.1..=100_000.0).contains(&rate)) {
                    return Err(at(format!(
                        "load = {rate} is not 0 (off) or between 0.1 and 100000"
                    )));
                }
                actions.push(Action::Load(rate));
            }
            if let Some(t) = &s.trigger {
                actions.push(trigger(s, t).map_err(at)?);
            }
            if let Some(c) = &s.caption {
                actions.push(Action::Caption(c.clone()));
            }
            if actions.is_empty() {
                return Err(at(
                    "does nothing: give caption, load, trigger or model".into()
                ));
            }
            steps.push(Step { after, actions });
        }
        Ok(Scenario {
            name: raw.name,
            model,
            workers,
            steps,
        })
    }

    /// From the start to the last step.
    pub fn length(&self) -> Duration {
        self.steps.iter().map(|s| s.after).sum()
    }
}

/// Parses `30s`, `2m`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 2m, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 7.0 * 86_400.0) {
        return Err(format!("{s:?} is out of range (0 < duration <= 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Plays a scenario's steps against a clock; the caller performs them.
#[derive(Clone, Debug)]
pub struct Player {
    steps: Vec<Step>,
    next: usize,
    /// When the previous step ran (or the start).
    last: std::time::Instant,
    /// Steps run by themselves when due; otherwise only on [`Player::step_now`].
    pub auto: bool,
}

impl Player {
    /// A player starting now.
    pub fn new(scenario: &Scenario, now: std::time::Instant) -> Self {
        Self {
            steps: scenario.steps.clone(),
            next: 0,
            last: now,
            auto: true,
        }
    }

    /// The step due at `now`, if any (in auto mode).
    pub fn due(&mut self, now: std::time::Instant) -> Option<Step> {
        let step = self.steps.get(self.next)?;
        if self.auto && now.saturating_duration_since(self.last) >= step.after {
            return self.step_now(now);
        }
        None
    }

    /// The next step, now, whatever its delay.
    pub fn step_now(&mut self, now: std::time::Instant) -> Option<Step> {
        let step = self.steps.get(self.next)?.clone();
        self.next += 1;
        self.last = now;
        Some(step)
    }

    /// Counts the next step's delay from `now` (after a wait for a new server).
    pub fn restart_clock(&mut self, now: std::time::Instant) {
        self.last = now;
    }

    /// (steps done, steps in all)
    pub fn progress(&self) -> (usize, usize) {
        (self.next, self.steps.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SAMPLE: &str = r#"
        name = "test"
        model = "fastapi"
        workers = 3

        [[step]]
        caption = "hello"
        load = 100

        [[step]]
        after = "2s"
        trigger = "sync"
        ms = 300

        [[step]]
        after = "500ms"
        trigger = "json"
        mb = 5
        model = "node"
    "#;

    #[test]
    fn parses_steps_with_defaults() {
        let s = Scenario::parse(SAMPLE).unwrap();
        assert_eq!((s.model, s.workers, s.steps.len()), (Model::Fastapi, 3, 3));
        assert_eq!(
            s.steps[0].actions,
            vec![Action::Load(100.0), Action::Caption("hello".into())]
        );
        match &s.steps[1].actions[0] {
            Action::Trigger(request) => {
                assert_eq!(request.label(), "sync×60 (300 ms)");
                let paths = request.paths();
                assert_eq!(paths.len(), 60);
                assert_eq!(paths[0], "/sync?ms=300");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.steps[2].actions[0],
            Action::Model {
                model: Model::Node,
                workers: 3
            }
        );
        assert_eq!(s.length(), Duration::from_millis(2500));
    }

    #[test]
    fn mistakes_are_named_with_their_step() {
        let bad = |t: &str| Scenario::parse(t).unwrap_err();
        assert!(
            bad("name = \"x\"\n[[step]]\ntrigger = \"jsn\"").contains("step 1: trigger \"jsn\"")
        );
        assert!(
            bad("name = \"x\"\n[[step]]\nafter = \"soon\"\ncaption = \"c\"").contains("step 1:")
        );
        assert!(bad("name = \"x\"\n[[step]]\ncaptoin = \"c\"").contains("captoin"));
        assert!(bad("name = \"x\"\n[[step]]\n").contains("does nothing"));
        // Sizes are the catalog's: the right name, within range.
        assert!(
            bad("name = \"x\"\n[[step]]\ntrigger = \"json\"\nms = 5")
                .contains("step 1: json takes mb (not ms)")
        );
        assert!(
            bad("name = \"x\"\n[[step]]\ntrigger = \"json\"\nmb = 65")
                .contains("mb = 65 is out of range for json: 1..=64")
        );
        assert!(
            bad("name = \"x\"\n[[step]]\ntrigger = \"block\"\non = \"loop\"").contains("hash only")
        );
        assert!(bad("name = \"x\"\nmodel = \"deno\"\n[[step]]\ncaption = \"c\"").contains("deno"));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn the_player_runs_steps_when_due_or_on_demand() {
        let s = Scenario::parse(SAMPLE).unwrap();
        let t0 = Instant::now();
        let mut p = Player::new(&s, t0);
        assert!(p.due(t0).is_some(), "the first step has no delay");
        assert!(p.due(t0 + Duration::from_millis(1999)).is_none());
        assert!(p.due(t0 + Duration::from_millis(2000)).is_some());
        p.auto = false;
        assert!(p.due(t0 + Duration::from_secs(9)).is_none());
        assert!(p.step_now(t0 + Duration::from_secs(9)).is_some());
        assert_eq!(p.progress(), (3, 3));
        assert!(p.step_now(t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Scenario::load(&path).unwrap();
            n += 1;
        }
        assert!(n >= 4, "{n} scenarios");
    }
}
