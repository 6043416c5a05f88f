//! The session: the terminal-free core under every front end. It owns N targets (demo
//! servers it started, servers it attached to, or a recording), their telemetry
//! subscribers, the background load, the scenario player, the recorder and workload
//! firing, and hands out [`Update`]s. A front end (dashboard, compare, replay,
//! headless) only turns keys into [`Command`]s and renders or prints the updates; it
//! owns no process and opens no socket.
//!
//! Everything runs on the caller's tokio runtime and nothing here blocks it: a model
//! switch starts the new server and completes when its address line arrives.

pub mod demo_child;
pub mod fire;
mod messages;
mod play;
pub mod replay;
mod supervise;
mod target;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::http::{self, HttpClient};
use crate::client::load::LoadPlan;
use crate::client::subscriber::TelemetryMsg;
use crate::protocol::Model;
use crate::record::Recorder;
use crate::scenario::{Player, Scenario};
use crate::workload::Request;

pub use demo_child::{DemoChild, Launcher};
pub use messages::{Command, LogKind, Msg, SessionConfig, TargetSpec, Update, clock};
pub use replay::ReplayStatus;
pub use supervise::restart_delay;
use target::Target;

/// How often the load generator's figures are taken.
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// How often due scenario steps and replay lines are looked for (only while there
/// is a scenario or a replay: an idle session does not wake up for nothing).
const STEP_TICK: Duration = Duration::from_millis(25);
/// How often demo children are checked for an exit (a `waitpid` that never blocks).
const SUPERVISE_TICK: Duration = Duration::from_millis(200);
/// The terminal-free core; see the module docs.
pub struct Session {
    targets: Vec<Target>,
    launch: Launcher,
    log_file: PathBuf,
    client: HttpClient,
    rate: f64,
    load_on: bool,
    scenario: Option<Scenario>,
    player: Option<Player>,
    /// A step's actions waiting for a server that a model switch is starting.
    held: std::collections::VecDeque<crate::scenario::Action>,
    /// One recorder per target (several servers: a file each).
    recorders: Vec<Option<Recorder>>,
    record_path: Option<PathBuf>,
    /// Recordings played, with their targets: several play side by side on one
    /// clock, each from its own start.
    replays: Vec<(usize, replay::Replay)>,
    /// The replay position last handed out.
    replay_shown: Option<ReplayStatus>,
    /// Replay: the clock holds (the help is open).
    hold: bool,
    pending: VecDeque<Update>,
    started: bool,
    /// Telemetry of every target, tagged (target, generation).
    telemetry_tx: mpsc::Sender<(usize, u64, TelemetryMsg)>,
    telemetry_rx: mpsc::Receiver<(usize, u64, TelemetryMsg)>,
    /// Messages the session could not take from its subscribers.
    dropped: Arc<AtomicU64>,
    results_tx: mpsc::Sender<(usize, LogKind, String)>,
    results_rx: mpsc::Receiver<(usize, LogKind, String)>,
    /// Address lines of demo servers starting after a switch: (target, generation, line).
    started_tx: mpsc::Sender<(usize, u64, String)>,
    started_rx: mpsc::Receiver<(usize, u64, String)>,
    load_window: tokio::time::Interval,
    step_tick: tokio::time::Interval,
    supervise_tick: tokio::time::Interval,
}

impl Session {
    /// Starts the demo children (waiting ≤ 20 s each for their address, before any
    /// terminal switches, so that start-up errors print plainly). Call it inside the
    /// runtime that will drive it (`Runtime::enter`); subscriptions begin with the
    /// first [`Session::next`].
    pub fn new(config: SessionConfig) -> anyhow::Result<Session> {
        Self::with_launcher(config, DemoChild::spawn)
    }

    /// As [`Session::new`], starting demo servers with `launch`.
    pub fn with_launcher(config: SessionConfig, launch: Launcher) -> anyhow::Result<Session> {
        let mut targets = Vec::new();
        let mut replays = Vec::new();
        for spec in config.targets {
            targets.push(match spec {
                TargetSpec::Demo { model, workers } => {
                    Target::demo(DemoChild::start(launch, model, workers, &config.log_file)?)
                }
                TargetSpec::Attach { telemetry, app } => Target::attach(telemetry, app),
                TargetSpec::Replay { file, recording } => {
                    let r = replay::Replay::new(*recording, &file, Instant::now());
                    replays.push((targets.len(), r));
                    Target::replay()
                }
            });
        }
        let (telemetry_tx, telemetry_rx) = mpsc::channel(512);
        let (results_tx, results_rx) = mpsc::channel(256);
        let (started_tx, started_rx) = mpsc::channel(4);
        let mut load_window = tokio_interval(LOAD_WINDOW);
        load_window.reset();
        Ok(Session {
            targets,
            launch,
            log_file: config.log_file,
            client: http::client(),
            rate: config.rate,
            load_on: config.load,
            scenario: config.scenario,
            player: None,
            held: std::collections::VecDeque::new(),
            recorders: Vec::new(),
            record_path: config.record,
            replays,
            replay_shown: None,
            hold: false,
            pending: VecDeque::new(),
            started: false,
            telemetry_tx,
            telemetry_rx,
            dropped: Arc::new(AtomicU64::new(0)),
            results_tx,
            results_rx,
            started_tx,
            started_rx,
            load_window,
            step_tick: tokio_interval(STEP_TICK),
            supervise_tick: tokio_interval(SUPERVISE_TICK),
        })
    }

    /// How many targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when the session watches nothing.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// True when the one target is a demo this session started (its model can switch).
    pub fn can_switch(&self) -> bool {
        self.targets.len() == 1 && self.targets[0].is_demo()
    }

    /// True when playing a recording.
    pub fn is_replay(&self) -> bool {
        !self.replays.is_empty()
    }

    /// The background load: (on, requests per second).
    pub fn load(&self) -> (bool, f64) {
        (self.load_on, self.rate)
    }

    /// Telemetry messages lost because the session fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Replay: hold the clock (while the help is open).
    pub fn hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// The next update. Cancel-safe: it can be raced against keys in a `select!`.
    pub async fn next(&mut self) -> Update {
        if !self.started {
            self.start();
        }
        loop {
            if let Some(u) = self.pending.pop_front() {
                return u;
            }
            let ticking = !self.replays.is_empty() || self.player.is_some();
            let loading = self.targets.iter().any(Target::has_load);
            let supervising = self.targets.iter().any(Target::is_demo);
            tokio::select! {
                biased;
                Some((i, generation, msg)) = self.telemetry_rx.recv() => {
                    if self.targets[i].generation == generation {
                        self.on_telemetry(i, msg);
                    }
                }
                Some((i, kind, text)) = self.results_rx.recv() => {
                    self.push(i, Msg::Log(kind, text));
                }
                Some((i, generation, line)) = self.started_rx.recv() => {
                    self.finish_switch(i, generation, &line);
                }
                _ = self.load_window.tick(), if loading => {
                    for i in 0..self.targets.len() {
                        if let Some(stats) = self.targets[i].take_load() {
                            self.push(i, Msg::Load(stats));
                        }
                    }
                }
                _ = self.step_tick.tick(), if ticking => {
                    self.advance_replay();
                    self.play_scenario(false);
                }
                _ = self.supervise_tick.tick(), if supervising => self.supervise(),
            }
        }
    }

    /// An update that is ready now, without waiting (e.g. what a command produced),
    /// so that a front end can show the effect of a key at once.
    pub fn ready(&mut self) -> Option<Update> {
        self.pending.pop_front()
    }

    /// Does what a front end asks; the outcome comes as updates.
    pub fn perform(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Fire(workload, size) => {
                if !self.replays.is_empty() {
                    self.note_all(LogKind::Warn, "a replay has no server to send workloads to");
                    return;
                }
                for i in 0..self.targets.len() {
                    let model = self.targets[i].info.as_ref().map(|info| info.model);
                    self.fire(i, Request::for_key(workload, size, model));
                }
            }
            Command::SetLoad { on, rate } => {
                self.load_on = on;
                self.rate = rate;
                self.update_load();
            }
            Command::SwitchModel => {
                if self.can_switch() {
                    let next = next_model(self.targets[0].model());
                    let workers = self.targets[0].workers().max(2);
                    self.switch_model(0, next, workers);
                }
            }
            Command::NextStep => self.play_scenario(true),
            Command::ToggleAuto => {
                if let Some(p) = &mut self.player {
                    p.auto = !p.auto;
                    let text = if p.auto {
                        "scenario: steps run by themselves"
                    } else {
                        "scenario: steps run on n"
                    };
                    self.note_all(LogKind::Info, text);
                }
            }
            Command::ReplayPause => {
                // Pause or resume as the longest recording is; one that ended stays.
                let paused = self.longest_replay().is_some_and(|s| s.paused);
                self.each_replay(|r| match r.status().paused == paused {
                    true => r.toggle_pause(now),
                    false => Vec::new(),
                });
            }
            Command::Seek(delta_ms) => self.each_replay(|r| r.seek(delta_ms, now)),
            Command::Speed(speed) => self.each_replay(|r| {
                r.set_speed(speed);
                Vec::new()
            }),
        }
    }

    fn start(&mut self) {
        self.started = true;
        if let Some(path) = self.record_path.clone() {
            let paths = crate::record::paths_for(&path, self.targets.len());
            for (i, path) in paths.iter().enumerate() {
                let recorder = match Recorder::create(path) {
                    Ok(r) => {
                        self.push(
                            i,
                            Msg::Log(LogKind::Info, format!("recording to {}", path.display())),
                        );
                        Some(r)
                    }
                    Err(e) => {
                        let text = format!("cannot record to {}: {e}", path.display());
                        self.push(i, Msg::Log(LogKind::Warn, text));
                        None
                    }
                };
                self.recorders.push(recorder);
            }
        }
        for i in 0..self.targets.len() {
            if let Some(text) = self.targets[i].started_text() {
                self.push(i, Msg::Log(LogKind::Info, text));
            }
            self.subscribe(i);
        }
        let now = Instant::now();
        self.each_replay(|r| r.seek(0, now));
    }

    fn subscribe(&mut self, i: usize) {
        let tx = self.telemetry_tx.clone();
        let dropped = Arc::clone(&self.dropped);
        self.targets[i].subscribe(i, tx, dropped);
    }

    fn push(&mut self, target: usize, msg: Msg) {
        self.pending.push_back(Update::Target { target, msg });
    }

    /// A line for every target's log (what concerns the whole session).
    fn note_all(&mut self, kind: LogKind, text: impl Into<String>) {
        let text = text.into();
        for i in 0..self.targets.len() {
            self.push(i, Msg::Log(kind, text.clone()));
        }
    }

    /// Does `f` to every replay and hands out what each fed its target, then the
    /// position if it moved: the longest recording's (a paused replay sends
    /// nothing).
    fn each_replay(&mut self, mut f: impl FnMut(&mut replay::Replay) -> Vec<Msg>) {
        let mut fed = Vec::new();
        for (target, r) in &mut self.replays {
            fed.push((*target, f(r)));
        }
        for (target, msgs) in fed {
            for msg in msgs {
                self.push(target, msg);
            }
        }
        if let Some(status) = self.longest_replay()
            && self.replay_shown.as_ref() != Some(&status)
        {
            self.replay_shown = Some(status.clone());
            self.pending.push_back(Update::Replay(status));
        }
    }

    /// Where the longest of the recordings played is.
    fn longest_replay(&self) -> Option<ReplayStatus> {
        let statuses = self.replays.iter().map(|(_, r)| r.status());
        statuses.max_by(|a, b| a.total_s.total_cmp(&b.total_s))
    }

    fn advance_replay(&mut self) {
        let (now, hold) = (Instant::now(), self.hold);
        self.each_replay(|r| r.advance(now, hold));
    }

    fn on_telemetry(&mut self, i: usize, msg: TelemetryMsg) {
        if let TelemetryMsg::Connected(info) = &msg {
            let first = self.targets[i].info.is_none();
            self.targets[i].info = Some((**info).clone());
            if first && self.targets[i].app.is_none() && self.replays.is_empty() {
                let text = no_app_hint(&info.app);
                self.push(i, Msg::Log(LogKind::Info, text));
            }
            let plan = self.plan();
            self.targets[i].ensure_load(&self.client, plan);
            if self.player.is_none() {
                if let Some(s) = &self.scenario {
                    self.player = Some(Player::new(s, Instant::now()));
                    let text = format!("scenario: {} ({} steps)", s.name, s.steps.len());
                    self.note_all(LogKind::Info, text);
                }
            }
        }
        if let TelemetryMsg::Snapshot(snap) = &msg {
            self.targets[i].follow_workers(snap.workers.len());
        }
        self.record(i, &msg);
        self.push(i, Msg::Telemetry(msg));
    }

    fn record(&mut self, i: usize, msg: &TelemetryMsg) {
        let Some(Some(rec)) = self.recorders.get_mut(i) else {
            return;
        };
        let written = match msg {
            TelemetryMsg::Connected(info) => rec.info(info),
            TelemetryMsg::Snapshot(s) => rec.snapshot(s),
            TelemetryMsg::Disconnected { .. } | TelemetryMsg::Skipped { .. } => Ok(()),
        };
        if let Err(e) = written {
            self.recorders[i] = None;
            let text = format!("recording stopped: {e}");
            self.push(i, Msg::Log(LogKind::Warn, text));
        }
    }

    fn plan(&self) -> LoadPlan {
        LoadPlan {
            rate: if self.load_on { self.rate } else { 0.0 },
            ..LoadPlan::default()
        }
    }

    fn update_load(&mut self) {
        let plan = self.plan();
        for i in 0..self.targets.len() {
            self.targets[i].set_plan(&plan);
            let msg = Msg::LoadPlan {
                on: self.load_on,
                rate: self.rate,
            };
            self.push(i, msg);
        }
    }

    /// Sends `request` to target `i`; the outcome comes back as a log line.
    fn fire(&mut self, i: usize, mut request: Request) {
        let Some(info) = &self.targets[i].info else {
            self.push(
                i,
                Msg::Log(
                    LogKind::Warn,
                    "not connected yet: nothing to send the workload to".into(),
                ),
            );
            return;
        };
        let Some(app) = self.targets[i].app.clone() else {
            let text = no_app_hint(&info.app);
            self.push(i, Msg::Log(LogKind::Warn, text));
            return;
        };
        request = request.aimed_at(info.model);
        self.push(
            i,
            Msg::Log(LogKind::Trigger, format!("{} → sent", request.label())),
        );
        let (client, tx) = (self.client.clone(), self.results_tx.clone());
        tokio::spawn(async move {
            let (kind, line) = fire::fire(client, app, request).await;
            let _ = tx.send((i, kind, line)).await;
        });
    }
}

/// The model `m` switches to: node → fastapi → tokio → node (anything else: node).
fn next_model(current: Option<Model>) -> Model {
    match current {
        Some(Model::Node) => Model::Fastapi,
        Some(Model::Fastapi) => Model::Tokio,
        _ => Model::Node,
    }
}

/// What to say when a workload or load has no app address to go to.
fn no_app_hint(claimed: &str) -> String {
    format!(
        "telemetry only: pass --app HOST:PORT to send load and workloads (the server says its app is at {claimed})"
    )
}

fn tokio_interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
}

#[cfg(test)]
mod tests;
