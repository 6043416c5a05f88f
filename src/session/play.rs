//! Playing a scenario's steps through the session: captions, load, workloads and
//! model switches, each step when it is due (or on demand).

use std::time::Instant;

use super::{LogKind, Session, Update};
use crate::scenario::Action as ScenarioAction;

impl Session {
    /// Runs the scenario steps that are due (or, with `forced`, the next one now).
    pub(super) fn play_scenario(&mut self, forced: bool) {
        // Steps wait while a server starts: their requests need it.
        if self
            .targets
            .iter()
            .any(|t| t.starting.is_some() || t.info.is_none())
        {
            return;
        }
        loop {
            let Some(p) = &mut self.player else { return };
            let now = Instant::now();
            let step = if forced { p.step_now(now) } else { p.due(now) };
            let Some(step) = step else { return };
            let (done, all) = p.progress();
            for action in step.actions {
                match action {
                    ScenarioAction::Caption(text) => {
                        self.pending
                            .push_back(Update::Caption(format!("[{done}/{all}] {text}")));
                        self.note_all(LogKind::Info, format!("▷ {text}"));
                    }
                    ScenarioAction::Load(rate) => {
                        self.load_on = rate > 0.0;
                        if rate > 0.0 {
                            self.rate = rate;
                        }
                        self.update_load();
                    }
                    ScenarioAction::Trigger(request) => {
                        for i in 0..self.targets.len() {
                            self.fire(i, request.clone());
                        }
                    }
                    ScenarioAction::Model { model, workers } => {
                        if !self.can_switch() {
                            let text = format!(
                                "scenario: attached to a server, cannot switch it to {model}"
                            );
                            self.note_all(LogKind::Warn, text);
                        } else if Some(model) != self.targets[0].model() {
                            self.switch_model(0, model, workers);
                        }
                    }
                }
            }
            if forced {
                return;
            }
        }
    }
}
