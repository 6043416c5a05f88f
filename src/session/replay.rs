//! Playing a recording back as if it were a server: a clock in the recording's server
//! time that follows the wall clock at 1×, 2× or 4×, pauses, and seeks. Seeking
//! rebuilds what the views know up to the new position.

use std::path::Path;
use std::time::Instant;

use super::{LogKind, Msg};
use crate::client::subscriber::TelemetryMsg;
use crate::record::Recording;

/// How much history a seek feeds again before the new position, ms.
const HISTORY_MS: f64 = 60_000.0;

/// Where a replay is, for the header.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayStatus {
    /// Position, seconds from the recording's start.
    pub at_s: f64,
    /// Length of the recording, seconds.
    pub total_s: f64,
    /// Playback speed.
    pub speed: u8,
    /// Paused (or at the end).
    pub paused: bool,
}

/// A recording being played back.
pub struct Replay {
    rec: Recording,
    /// Index of the next snapshot to feed.
    next: usize,
    /// The replay's position, in the recording's server milliseconds.
    clock_ms: f64,
    speed: u8,
    paused: bool,
    last_tick: Instant,
    /// What the log says about the recording itself, kept across seeks.
    notes: Vec<(LogKind, String)>,
}

impl Replay {
    /// A replay of `rec` (read from `file`), at its start, playing.
    pub fn new(rec: Recording, file: &Path, now: Instant) -> Self {
        let first = rec.snapshots.first().map_or(0, |s| s.t_ms);
        let mut notes = vec![(
            LogKind::Info,
            format!(
                "replaying {} ({} snapshots, {:.1} s)",
                file.display(),
                rec.snapshots.len(),
                rec.duration_s()
            ),
        )];
        if let Some(d) = &rec.damage {
            notes.push((
                LogKind::Warn,
                format!(
                    "the recording is damaged at line {}: {}; replaying the {} snapshots before it",
                    d.line,
                    d.error,
                    rec.snapshots.len()
                ),
            ));
        }
        Self {
            rec,
            next: 0,
            clock_ms: first as f64,
            speed: 1,
            paused: false,
            last_tick: now,
            notes,
        }
    }

    /// Where it is.
    pub fn status(&self) -> ReplayStatus {
        let first = self.rec.snapshots.first().map_or(0, |s| s.t_ms) as f64;
        let total = self.rec.duration_s();
        ReplayStatus {
            at_s: ((self.clock_ms - first).max(0.0) / 1000.0).min(total),
            total_s: total,
            speed: self.speed,
            paused: self.paused,
        }
    }

    /// Sets the playback speed.
    pub fn set_speed(&mut self, speed: u8) {
        self.speed = speed;
    }

    /// Pauses or plays; at the end, plays again from the start. Returns the messages
    /// that rebuild the view when it starts over.
    pub fn toggle_pause(&mut self, now: Instant) -> Vec<Msg> {
        if self.next == self.rec.snapshots.len() {
            self.paused = false;
            self.clock_ms = f64::MIN;
            return self.seek(0, now);
        }
        self.paused = !self.paused;
        Vec::new()
    }

    /// Moves the clock with the wall clock (not while `hold`, e.g. the help is open)
    /// and returns the messages for what it passed.
    pub fn advance(&mut self, now: Instant, hold: bool) -> Vec<Msg> {
        let dt = now.saturating_duration_since(self.last_tick).as_secs_f64() * 1000.0;
        self.last_tick = now;
        if !hold && !self.paused {
            self.clock_ms += dt * self.speed as f64;
        }
        let mut out = Vec::new();
        while let Some(s) = self.rec.snapshots.get(self.next) {
            if s.t_ms as f64 > self.clock_ms {
                break;
            }
            // A new server description (a recorded reconnection or model switch).
            let index = self.next;
            if let Some((_, info)) = self.rec.infos.iter().skip(1).find(|(at, _)| *at == index) {
                out.push(Msg::Telemetry(TelemetryMsg::Connected(Box::new(
                    info.clone(),
                ))));
            }
            out.push(Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(s.clone()))));
            self.next += 1;
        }
        if self.next == self.rec.snapshots.len() && !self.paused {
            self.paused = true;
            // The clock stops at the last line, so that a seek back counts from there.
            let last = self.rec.snapshots.last().map_or(0, |s| s.t_ms) as f64;
            self.clock_ms = self.clock_ms.min(last);
            out.push(Msg::Log(
                LogKind::Info,
                "end of the recording (← to go back)".into(),
            ));
        }
        out
    }

    /// Jumps by `delta_ms` and returns the messages that rebuild the view up to there:
    /// a reset, the recording's own notes, then every snapshot up to the new clock.
    pub fn seek(&mut self, delta_ms: i64, now: Instant) -> Vec<Msg> {
        let first = self.rec.snapshots.first().map_or(0, |s| s.t_ms) as f64;
        let last = self.rec.snapshots.last().map_or(0, |s| s.t_ms) as f64;
        self.clock_ms = (self.clock_ms + delta_ms as f64).clamp(first, last.max(first));
        // The jump is the only move: no play time accrues during it.
        self.last_tick = now;
        if delta_ms < 0 {
            self.paused = self.paused && self.next < self.rec.snapshots.len();
        }
        // The views keep a minute of history: feed from a minute before the new
        // position, not from the start (a long recording would stall the session).
        let from = self.clock_ms - HISTORY_MS;
        self.next = self
            .rec
            .snapshots
            .partition_point(|s| (s.t_ms as f64) < from);
        let mut out = vec![Msg::Reset {
            keep_log: false,
            info: self.rec.info_at(self.next).cloned().map(Box::new),
        }];
        out.extend(
            self.notes
                .iter()
                .map(|(kind, text)| Msg::Log(*kind, text.clone())),
        );
        out.extend(self.advance(now, true));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{info, snapshot, worker};
    use std::time::Duration;

    fn recording(n: u64) -> Recording {
        Recording {
            infos: vec![(0, info(crate::protocol::Model::Node, 7))],
            snapshots: (1..=n)
                .map(|seq| snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
                .collect(),
            damage: None,
        }
    }

    fn snapshots(msgs: &[Msg]) -> usize {
        msgs.iter()
            .filter(|m| matches!(m, Msg::Telemetry(TelemetryMsg::Snapshot(_))))
            .count()
    }

    #[test]
    fn plays_with_the_clock_at_its_speed_and_stops_at_the_end() {
        let t0 = Instant::now();
        let mut r = Replay::new(recording(50), Path::new("x.ndjson"), t0);
        // The first line is at 100 ms; the clock starts there.
        assert_eq!(snapshots(&r.advance(t0, false)), 1);
        assert_eq!(
            snapshots(&r.advance(t0 + Duration::from_millis(1000), false)),
            10
        );
        r.set_speed(4);
        assert_eq!(
            snapshots(&r.advance(t0 + Duration::from_millis(1500), false)),
            20
        );
        assert_eq!(r.status().at_s, 3.0);
        // Holding (the help is open) does not move the clock.
        assert_eq!(
            snapshots(&r.advance(t0 + Duration::from_millis(9000), true)),
            0
        );
        let end = r.advance(t0 + Duration::from_millis(20_000), false);
        assert_eq!(snapshots(&end), 19);
        assert!(r.status().paused);
        assert!(
            matches!(end.last(), Some(Msg::Log(_, t)) if t.starts_with("end of the recording"))
        );
    }

    #[test]
    fn a_seek_rebuilds_from_the_start_and_accrues_no_play_time() {
        let t0 = Instant::now();
        let mut r = Replay::new(recording(100), Path::new("x.ndjson"), t0);
        r.advance(t0 + Duration::from_secs(6), false);
        let back = r.seek(-5000, t0 + Duration::from_secs(10));
        assert!(matches!(
            back[0],
            Msg::Reset {
                keep_log: false,
                info: Some(_)
            }
        ));
        assert!(
            matches!(&back[1], Msg::Log(LogKind::Info, t) if t.starts_with("replaying x.ndjson (100 snapshots"))
        );
        // 6.1 s - 5 s = 1.1 s: the lines at 0.1 .. 1.1 s.
        assert_eq!(snapshots(&back), 11);
        assert_eq!(r.status().at_s, 1.0);
    }
}
#[cfg(test)]
mod seek_at_end {
    use super::*;
    use crate::test_support::{info, snapshot, worker};
    use std::time::Duration;

    #[test]
    fn back_from_the_end_returns_to_the_start_and_plays() {
        let t0 = Instant::now();
        let rec = Recording {
            infos: vec![(0, info(crate::protocol::Model::Node, 7))],
            snapshots: (1..=25)
                .map(|seq| snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
                .collect(),
            damage: None,
        };
        let mut r = Replay::new(rec, Path::new("x"), t0);
        r.set_speed(4);
        r.advance(t0 + Duration::from_secs(5), false);
        assert!(r.status().paused);
        let msgs = r.seek(-5000, t0 + Duration::from_secs(6));
        assert_eq!(r.status().at_s, 0.0, "{:?}", r.status());
        assert!(!r.status().paused);
        assert!(!msgs.is_empty());
    }
}
