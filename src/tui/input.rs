//! Keys to actions. Pure: the driver performs the actions. The workload keys come
//! from the workload catalog.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::workload::CATALOG;
pub use crate::workload::{DEFAULT_SIZE, SIZES, Size, Workload};

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave (stopping the demo child).
    Quit,
    /// Send a workload.
    Trigger(Workload),
    /// Bigger workloads.
    SizeUp,
    /// Smaller workloads.
    SizeDown,
    /// Background load on or off.
    ToggleLoad,
    /// More background load.
    RateUp,
    /// Less background load.
    RateDown,
    /// Restart the demo in the other model.
    SwitchModel,
    /// Freeze the display; data keeps coming.
    TogglePause,
    /// Show or hide the key list.
    ToggleHelp,
    /// Replay: back 5 s.
    SeekBack,
    /// Replay: forward 5 s.
    SeekForward,
    /// Replay: play at this speed.
    Speed(u8),
    /// Scenario: run the next step now.
    NextStep,
    /// Scenario: run steps by themselves, or only on `n`.
    ToggleAuto,
}

/// Background load rates the operator steps through, requests per second.
pub const RATES: [f64; 9] = [
    10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Every key, for the help overlay: (keys, what it does); the workload keys first,
/// from the catalog.
pub fn keys() -> Vec<(String, &'static str)> {
    let mut keys: Vec<(String, &'static str)> = CATALOG
        .iter()
        .filter_map(|s| Some((s.key?.to_string(), s.caption)))
        .collect();
    keys.extend(OTHER_KEYS.iter().map(|(k, what)| (k.to_string(), *what)));
    keys
}

/// The keys that are not workloads.
const OTHER_KEYS: &[(&str, &str)] = &[
    ("[ ]", "workload size down / up"),
    ("l", "background load on / off"),
    ("+ -", "background load rate up / down"),
    ("m", "switch model (restarts the demo server)"),
    (
        "space",
        "pause the display (data keeps coming); replay: pause",
    ),
    ("← →", "replay: back / forward 5 s"),
    ("1 2 4", "replay: speed 1×, 2×, 4×"),
    ("n", "scenario: next step now"),
    ("a", "scenario: steps run by themselves / only on n"),
    ("?", "this help"),
    ("q Esc ^C", "quit (stops the demo server)"),
];

/// The action for a key press, if any. `can_switch` is false when attached to a
/// server this process did not start.
pub fn action_for(key: KeyEvent, can_switch: bool) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') | KeyCode::Char('q') => Some(Action::Quit),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char(c) if Workload::for_key(c).is_some() => {
            Action::Trigger(Workload::for_key(c)?)
        }
        KeyCode::Char(']') => Action::SizeUp,
        KeyCode::Char('[') => Action::SizeDown,
        KeyCode::Char('l') => Action::ToggleLoad,
        KeyCode::Char('+') | KeyCode::Char('=') => Action::RateUp,
        KeyCode::Char('-') => Action::RateDown,
        KeyCode::Char('m') if can_switch => Action::SwitchModel,
        KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Left => Action::SeekBack,
        KeyCode::Right => Action::SeekForward,
        KeyCode::Char('1') => Action::Speed(1),
        KeyCode::Char('2') => Action::Speed(2),
        KeyCode::Char('4') => Action::Speed(4),
        KeyCode::Char('n') => Action::NextStep,
        KeyCode::Char('a') => Action::ToggleAuto,
        _ => return None,
    })
}

/// The next rate up or down from `rate`.
pub fn step_rate(rate: f64, up: bool) -> f64 {
    if up {
        RATES
            .iter()
            .copied()
            .find(|r| *r > rate)
            .unwrap_or(RATES[RATES.len() - 1])
    } else {
        RATES
            .iter()
            .rev()
            .copied()
            .find(|r| *r < rate)
            .unwrap_or(RATES[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions() {
        assert_eq!(action_for(key('q'), true), Some(Action::Quit));
        assert_eq!(
            action_for(
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
                true
            ),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(key('j'), true),
            Some(Action::Trigger(Workload::Json))
        );
        assert_eq!(
            action_for(key('s'), true),
            Some(Action::Trigger(Workload::Sync))
        );
        assert_eq!(action_for(key('m'), true), Some(Action::SwitchModel));
        assert_eq!(
            action_for(key('m'), false),
            None,
            "attached: no model to switch"
        );
        assert_eq!(action_for(key('x'), true), None);
        assert_eq!(action_for(key(' '), true), Some(Action::TogglePause));
        let mut release = key('q');
        release.kind = KeyEventKind::Release;
        assert_eq!(action_for(release, true), None);
    }

    #[test]
    fn every_action_key_is_in_the_help() {
        let help: String = keys()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        for c in "jobpshf[]l+-m?q124na".chars() {
            assert!(help.contains(c), "{c} missing from help");
            assert!(action_for(key(c), true).is_some(), "{c} does nothing");
        }
    }

    #[test]
    fn rates_step_within_bounds() {
        assert_eq!(step_rate(50.0, true), 100.0);
        assert_eq!(step_rate(50.0, false), 20.0);
        assert_eq!(step_rate(10.0, false), 10.0);
        assert_eq!(step_rate(5000.0, true), 5000.0);
        assert_eq!(step_rate(70.0, false), 50.0);
    }
}
