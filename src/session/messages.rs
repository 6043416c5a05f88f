//! What goes in and out of a session: its configuration, the targets it watches, the
//! commands a front end gives and the updates it hands back.

use std::path::PathBuf;
use std::time::Duration;

use super::ReplayStatus;
use crate::client::load::LoadStats;
use crate::client::subscriber::TelemetryMsg;
use crate::protocol::{Model, ServerInfo};
use crate::record::Recording;
use crate::scenario::Scenario;
use crate::workload::{Size, Workload};

/// What a session watches.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// Start `loopscope demo` as a child and attach to it.
    Demo {
        /// Model to start with.
        model: Model,
        /// Workers (fastapi processes, tokio threads).
        workers: u32,
    },
    /// Attach to a server started by hand, at this telemetry address.
    Attach {
        /// `HOST:PORT` of the telemetry port.
        telemetry: String,
        /// Where background load and workloads go, when the user named it; without
        /// it only telemetry is read (a server's own claim is shown, never used).
        app: Option<String>,
    },
    /// Play a recording.
    Replay {
        /// The file it came from (for the log).
        file: PathBuf,
        /// What it holds.
        recording: Box<Recording>,
    },
}

/// How a session starts.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// What to watch: several targets are the normal case (compare is two demos).
    pub targets: Vec<TargetSpec>,
    /// Background load, requests per second (per target).
    pub rate: f64,
    /// Start with the background load on.
    pub load: bool,
    /// Where the demo children's stderr goes.
    pub log_file: PathBuf,
    /// Record every snapshot here (one target only).
    pub record: Option<PathBuf>,
    /// Steps to play once the first target is connected.
    pub scenario: Option<Scenario>,
}

/// How a log line should look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    /// Something the operator did.
    Trigger,
    /// The outcome of a trigger.
    Result,
    /// The loop was held, a worker died, data was lost.
    Warn,
    /// Anything else.
    Info,
}

/// What changes what a front end knows of one target.
#[derive(Clone, Debug)]
pub enum Msg {
    /// From the telemetry subscriber (or a replay).
    Telemetry(TelemetryMsg),
    /// A window of load-generator figures.
    Load(LoadStats),
    /// The load plan changed.
    LoadPlan {
        /// On or off.
        on: bool,
        /// Requests per second.
        rate: f64,
    },
    /// A line for the event log.
    Log(LogKind, String),
    /// The server stopped (a demo child died): its figures are no longer current.
    ServerDown(String),
    /// Start the history over: a new server after a model switch (the log and the
    /// traffic stay), or a replay's seek (everything goes; `info` is the server).
    Reset {
        /// Keep the event log and the traffic figures.
        keep_log: bool,
        /// The server described, when known.
        info: Option<Box<ServerInfo>>,
    },
}

/// What the session hands a front end.
#[derive(Clone, Debug)]
pub enum Update {
    /// Something about target `target`.
    Target {
        /// Index into the configured targets.
        target: usize,
        /// What happened.
        msg: Msg,
    },
    /// A scenario caption, with its progress: `[2/4] …`.
    Caption(String),
    /// Where a replay is now.
    Replay(ReplayStatus),
    /// A new server finished starting after a model switch; `took` is how long the
    /// switch kept the target dark (headless runs do not count it).
    Restarted {
        /// Which target.
        target: usize,
        /// From the switch to the new server's address line.
        took: Duration,
    },
}

/// What a front end asks the session to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Fire a workload at every target that serves requests.
    Fire(Workload, Size),
    /// Background load on or off, at this rate.
    SetLoad {
        /// On or off.
        on: bool,
        /// Requests per second.
        rate: f64,
    },
    /// Restart the (single) demo target in the next model.
    SwitchModel,
    /// Scenario: run the next step now.
    NextStep,
    /// Scenario: steps run by themselves, or only on [`Command::NextStep`].
    ToggleAuto,
    /// Replay: pause or play.
    ReplayPause,
    /// Replay: jump by this many milliseconds.
    Seek(i64),
    /// Replay: play at this speed.
    Speed(u8),
}

/// The wall clock as `HH:MM:SS`, for log lines.
pub fn clock() -> String {
    // SAFETY: localtime_r writes into the tm we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "--:--:--".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}
