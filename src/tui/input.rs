//! Keys to actions, and the workloads the keys trigger. Pure: the app loop performs
//! the actions.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// A workload the operator can trigger; each is one or more real HTTP requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A JSON parse on the loop.
    Json,
    /// The same parse on the pool.
    Offload,
    /// A blocking sleep on the loop.
    Block,
    /// Busy CPU on the loop.
    Spin,
    /// A burst of sync endpoints (pool).
    SyncBurst,
    /// A burst of pbkdf2 hashes (pool).
    HashBurst,
    /// A burst of file reads (pool).
    FsBurst,
}

/// How big the triggered work is: the operator steps through these.
pub const SIZES: [Size; 4] = [
    Size {
        json_mb: 5,
        hold_ms: 100,
        iterations: 50_000,
    },
    Size {
        json_mb: 10,
        hold_ms: 250,
        iterations: 100_000,
    },
    Size {
        json_mb: 20,
        hold_ms: 500,
        iterations: 200_000,
    },
    Size {
        json_mb: 40,
        hold_ms: 1000,
        iterations: 400_000,
    },
];

/// The size the dashboard starts with (20 MB, 500 ms: the story's figures).
pub const DEFAULT_SIZE: usize = 2;

/// Workload sizes at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Megabytes of JSON to parse.
    pub json_mb: u32,
    /// Milliseconds to block or spin.
    pub hold_ms: u32,
    /// pbkdf2 iterations per hash.
    pub iterations: u32,
}

/// Requests in a sync burst: more than FastAPI's 40 tokens.
pub const SYNC_BURST: usize = 60;
/// Requests in a hash burst: three turns of Node's 4 threads.
pub const HASH_BURST: usize = 12;
/// Requests in an fs burst.
pub const FS_BURST: usize = 16;

impl Workload {
    /// A short label for the log: `json 20 MB`, `sync×60`.
    pub fn label(self, size: Size) -> String {
        match self {
            Workload::Json => format!("json {} MB", size.json_mb),
            Workload::Offload => format!("offload {} MB", size.json_mb),
            Workload::Block => format!("block {} ms", size.hold_ms),
            Workload::Spin => format!("spin {} ms", size.hold_ms),
            Workload::SyncBurst => format!("sync×{SYNC_BURST} ({} ms)", 200),
            Workload::HashBurst => format!("hash×{HASH_BURST}"),
            Workload::FsBurst => format!("fs×{FS_BURST}"),
        }
    }

    /// The request targets it sends, all at once.
    pub fn paths(self, size: Size) -> Vec<String> {
        match self {
            Workload::Json => vec![format!("/json?mb={}", size.json_mb)],
            Workload::Offload => vec![format!("/offload?mb={}", size.json_mb)],
            Workload::Block => vec![format!("/block?ms={}", size.hold_ms)],
            Workload::Spin => vec![format!("/spin?ms={}", size.hold_ms)],
            Workload::SyncBurst => vec!["/sync?ms=200".to_string(); SYNC_BURST],
            Workload::HashBurst => {
                vec![format!("/hash?iterations={}", size.iterations); HASH_BURST]
            }
            Workload::FsBurst => vec!["/fs?kb=4096".to_string(); FS_BURST],
        }
    }
}

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

/// Every key, for the help overlay: (keys, what it does).
pub const KEYS: &[(&str, &str)] = &[
    ("j", "JSON parse on the loop (the Node pitfall)"),
    ("o", "the same parse offloaded to the pool (the fix)"),
    ("b", "block the loop (time.sleep in async def)"),
    ("p", "spin the loop (busy CPU)"),
    ("s", "60 sync endpoints at once (FastAPI pool: 40 tokens)"),
    ("h", "12 pbkdf2 hashes at once (Node pool: 4 threads)"),
    ("f", "16 file reads through the pool"),
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
        KeyCode::Char('j') => Action::Trigger(Workload::Json),
        KeyCode::Char('o') => Action::Trigger(Workload::Offload),
        KeyCode::Char('b') => Action::Trigger(Workload::Block),
        KeyCode::Char('p') => Action::Trigger(Workload::Spin),
        KeyCode::Char('s') => Action::Trigger(Workload::SyncBurst),
        KeyCode::Char('h') => Action::Trigger(Workload::HashBurst),
        KeyCode::Char('f') => Action::Trigger(Workload::FsBurst),
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
            Some(Action::Trigger(Workload::SyncBurst))
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
        let help: String = KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(" ");
        for c in "jobpshf[]l+-m?q124na".chars() {
            assert!(help.contains(c), "{c} missing from help");
            assert!(action_for(key(c), true).is_some(), "{c} does nothing");
        }
    }

    #[test]
    fn workloads_send_what_the_story_needs() {
        let size = SIZES[DEFAULT_SIZE];
        assert_eq!(Workload::Json.paths(size), vec!["/json?mb=20"]);
        assert_eq!(Workload::Block.paths(size), vec!["/block?ms=500"]);
        assert_eq!(Workload::SyncBurst.paths(size).len(), 60);
        assert_eq!(Workload::HashBurst.paths(size).len(), 12);
        assert_eq!(Workload::Json.label(size), "json 20 MB");
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
