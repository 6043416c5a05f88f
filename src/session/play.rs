//! Playing a scenario's steps through the session: captions, load, workloads and
//! model switches, each step when it is due (or on demand).

use std::time::Instant;

use super::{LogKind, Session, Update};
use crate::scenario::Action as ScenarioAction;

impl Session {
    /// True while a target is starting or not yet connected: steps wait, since their
    /// requests need the server.
    fn waiting_for_a_server(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.starting.is_some() || t.info.is_none())
    }

    /// Runs the scenario steps that are due (or, with `forced`, the next one now).
    /// A step's actions after a model switch wait for the new server; the next
    /// step's delay counts from when they ran.
    pub(super) fn play_scenario(&mut self, forced: bool) {
        if self.waiting_for_a_server() {
            return;
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            if let Some(p) = &mut self.player {
                p.restart_clock(Instant::now());
            }
            if !self.perform_actions(held) || forced {
                return;
            }
        }
        loop {
            let Some(p) = &mut self.player else { return };
            let now = Instant::now();
            let step = if forced { p.step_now(now) } else { p.due(now) };
            let Some(step) = step else { return };
            if !self.perform_actions(step.actions.into()) || forced {
                return;
            }
        }
    }

    /// Performs actions in order; after a model switch the rest are held until the
    /// new server is connected. False when some were held.
    fn perform_actions(&mut self, mut actions: std::collections::VecDeque<ScenarioAction>) -> bool {
        let (done, all) = self.player.as_ref().map_or((0, 0), |p| p.progress());
        while let Some(action) = actions.pop_front() {
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
                        let text =
                            format!("scenario: attached to a server, cannot switch it to {model}");
                        self.note_all(LogKind::Warn, text);
                    } else if Some(model) != self.targets[0].model() {
                        self.switch_model(0, model, workers);
                    }
                }
            }
            if self.waiting_for_a_server() && !actions.is_empty() {
                self.held = actions;
                return false;
            }
        }
        true
    }
}
