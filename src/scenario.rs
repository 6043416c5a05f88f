//! Scenarios: timed steps for workshops and scripts (set the load, trigger a workload,
//! switch model, show a caption), read from TOML.
//!
//! ```toml
//! name = "Node: one JSON parse stalls every request"
//! model = "node"            # or "fastapi"; workers = 2
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

use crate::headless::parse_duration;
use crate::protocol::Model;

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Show a caption.
    Caption(String),
    /// Set the background load, requests per second (0: off).
    Load(f64),
    /// Send requests, all at once.
    Trigger {
        /// A short label for logs.
        label: String,
        /// Request targets.
        paths: Vec<String>,
    },
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
    /// Workers of the fastapi model.
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
        other => Err(format!("model {other:?} is not one of: node, fastapi")),
    }
}

fn trigger(raw: &RawStep, name: &str) -> Result<Action, String> {
    let n = |v: Option<u32>, default: u32| v.unwrap_or(default);
    let count = n(raw.count, 1).clamp(1, 500) as usize;
    let (label, path, default_count) = match name {
        "json" => (
            format!("json {} MB", n(raw.mb, 20)),
            format!("/json?mb={}", n(raw.mb, 20)),
            1,
        ),
        "offload" => (
            format!("offload {} MB", n(raw.mb, 20)),
            format!("/offload?mb={}", n(raw.mb, 20)),
            1,
        ),
        "block" => (
            format!("block {} ms", n(raw.ms, 500)),
            format!("/block?ms={}", n(raw.ms, 500)),
            1,
        ),
        "spin" => (
            format!("spin {} ms", n(raw.ms, 500)),
            format!("/spin?ms={}", n(raw.ms, 500)),
            1,
        ),
        "sync" => ("sync".into(), format!("/sync?ms={}", n(raw.ms, 200)), 60),
        "hash" => {
            let on = match raw.on.as_deref() {
                None | Some("pool") => "",
                Some("loop") => "&on=loop",
                Some(other) => return Err(format!("on = {other:?} is not one of: pool, loop")),
            };
            (
                "hash".into(),
                format!("/hash?iterations={}{on}", n(raw.iterations, 100_000)),
                12,
            )
        }
        "fs" => ("fs".into(), format!("/fs?kb={}", n(raw.kb, 4096)), 16),
        "sleep" => (
            format!("sleep {} ms", n(raw.ms, 500)),
            format!("/sleep?ms={}", n(raw.ms, 500)),
            1,
        ),
        other => {
            return Err(format!(
                "trigger {other:?} is not one of: json, offload, block, spin, sync, hash, fs, sleep"
            ));
        }
    };
    let count = if raw.count.is_some() {
        count
    } else {
        default_count
    };
    let label = if count > 1 {
        format!("{label}×{count}")
    } else {
        label
    };
    Ok(Action::Trigger {
        label,
        paths: vec![path; count],
    })
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
                if !(rate.is_finite() && (0.0..=100_000.0).contains(&rate)) {
                    return Err(at(format!("load = {rate} is not between 0 and 100000")));
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
            Action::Trigger { label, paths } => {
                assert_eq!(label, "sync×60");
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
        assert!(bad("name = \"x\"\nmodel = \"deno\"\n[[step]]\ncaption = \"c\"").contains("deno"));
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
