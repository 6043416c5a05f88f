//! The app loop: owns the terminal, the demo child, the subscriber and the load
//! generator; performs the actions that keys ask for. One `select!` drives input,
//! telemetry, trigger results and the frame clock; nothing in it waits on the network.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event as TermEvent};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::input::{self, Action, DEFAULT_SIZE, SIZES, Workload};
use super::state::{Connection, Dashboard, LogKind, Msg};
use super::view::{self, ReplayStatus, ViewOptions};
use crate::client::http::{self, HttpClient};
use crate::client::load::{LoadGenerator, LoadPlan};
use crate::client::subscriber::{self, TelemetryMsg};
use crate::protocol::{AddressLine, Model, Snapshot};
use crate::record::{Recorder, Recording};
use crate::scenario::{Action as ScenarioAction, Player, Scenario};

/// Redraws per second.
const FPS: u64 = 10;
/// How often the load generator's figures are taken.
const LOAD_WINDOW: Duration = Duration::from_secs(1);

/// What to show.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start `loopscope demo` as a child and attach to it.
    Demo {
        /// Model to start with.
        model: Model,
        /// Workers (fastapi).
        workers: u32,
    },
    /// Attach to a server started by hand, at this telemetry address.
    Attach {
        /// `HOST:PORT` of the telemetry port.
        telemetry: String,
    },
}

/// How the dashboard starts.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// What to show.
    pub target: Target,
    /// Background load, requests per second.
    pub rate: f64,
    /// Start with the background load on.
    pub load: bool,
    /// Where logs (and the demo child's stderr) go.
    pub log_file: PathBuf,
    /// Write every snapshot here as it arrives.
    pub record: Option<PathBuf>,
    /// Steps to play.
    pub scenario: Option<Scenario>,
}

/// A demo server started by the dashboard; killed (with its workers) when dropped.
pub struct DemoChild {
    child: Child,
    /// Its addresses.
    pub address: AddressLine,
}

impl DemoChild {
    /// Starts `loopscope demo` on free ports and waits (≤ 20 s) for its address line.
    pub fn start(model: Model, workers: u32, log_file: &PathBuf) -> anyhow::Result<DemoChild> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut demo = Self::spawn(model, workers, log_file, move |line| {
            let _ = tx.send(line);
        })?;
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .context("the demo server did not start within 20 s")?;
        demo.address = parse_address(&line, log_file)?;
        Ok(demo)
    }

    /// Starts `loopscope demo` on free ports; `on_line` gets its first stdout line
    /// (empty if it exited first) from another thread. The child dies with this
    /// process even if it is killed (`PR_SET_PDEATHSIG`).
    pub fn spawn(
        model: Model,
        workers: u32,
        log_file: &PathBuf,
        on_line: impl FnOnce(String) + Send + 'static,
    ) -> anyhow::Result<DemoChild> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "demo",
            "--model",
            model.as_str(),
            "--port",
            "0",
            "--telemetry-port",
            "0",
        ])
        .args(["--workers", &workers.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("cannot start the demo server")?;
        let stdout = child.stdout.take().context("the demo's stdout")?;
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            on_line(line);
        });
        Ok(DemoChild {
            child,
            address: AddressLine {
                app: String::new(),
                telemetry: None,
                pid: 0,
            },
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn parse_address(line: &str, log_file: &std::path::Path) -> anyhow::Result<AddressLine> {
    if line.trim().is_empty() {
        bail!(
            "the demo server exited at start; see {}",
            log_file.display()
        );
    }
    serde_json::from_str(line.trim())
        .with_context(|| format!("unexpected first line from the demo: {line:?}"))
}

impl Drop for DemoChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replays a recording in the dashboard until the operator quits.
pub fn replay(file: &std::path::Path, log_file: PathBuf) -> anyhow::Result<()> {
    let rec = Recording::load(file).with_context(|| format!("cannot read {}", file.display()))?;
    if rec.snapshots.is_empty() {
        match &rec.damage {
            Some(d) => bail!(
                "{} has no readable snapshot: line {} is damaged ({})",
                file.display(),
                d.line,
                d.error
            ),
            None => bail!("{} holds no snapshot", file.display()),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let config = AppConfig {
        target: Target::Attach {
            telemetry: String::new(),
        },
        rate: 0.0,
        load: false,
        log_file,
        record: None,
        scenario: None,
    };
    let mut terminal = ratatui::init();
    let result = runtime.block_on(async {
        let mut app = App::new(config, None, Model::Custom, 0);
        app.start_replay(rec, file);
        app.run(&mut terminal).await
    });
    ratatui::restore();
    result
}

/// Runs the dashboard until the operator quits. The terminal is restored on return
/// and on panic (ratatui's hook), and a demo child is always stopped.
pub fn run(config: AppConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    // The child starts before the terminal switches, so start-up errors print plainly.
    let (child, model, workers) = match &config.target {
        Target::Demo { model, workers } => (
            Some(DemoChild::start(*model, *workers, &config.log_file)?),
            *model,
            *workers,
        ),
        Target::Attach { .. } => (None, Model::Custom, 0),
    };
    let mut terminal = ratatui::init();
    let result = runtime.block_on(async {
        let mut app = App::new(config, child, model, workers);
        app.run(&mut terminal).await
    });
    ratatui::restore();
    result
}

struct App {
    config: AppConfig,
    child: Option<DemoChild>,
    model: Model,
    workers: u32,
    dash: Dashboard,
    frozen: Option<Dashboard>,
    opts: ViewOptions,
    client: HttpClient,
    telemetry_tx: mpsc::Sender<TelemetryMsg>,
    telemetry_rx: mpsc::Receiver<TelemetryMsg>,
    subscriber: Option<tokio::task::JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    results_tx: mpsc::Sender<Msg>,
    results_rx: mpsc::Receiver<Msg>,
    load: Option<LoadGenerator>,
    load_addr: Option<String>,
    rate: f64,
    load_on: bool,
    /// A demo being started by a model switch, waiting for its address line.
    starting: Option<(Model, u32, DemoChild)>,
    /// Set when replaying a recording instead of watching a server.
    replay: Option<Replay>,
    /// A scenario being played (starts once connected).
    player: Option<Player>,
    recorder: Option<Recorder>,
    started_tx: mpsc::Sender<String>,
    started_rx: mpsc::Receiver<String>,
}

pub(crate) fn clock() -> String {
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

impl App {
    fn new(config: AppConfig, child: Option<DemoChild>, model: Model, workers: u32) -> Self {
        let (telemetry_tx, telemetry_rx) = mpsc::channel(256);
        let (results_tx, results_rx) = mpsc::channel(256);
        let (started_tx, started_rx) = mpsc::channel(4);
        let opts = ViewOptions {
            paused: false,
            help: false,
            size: DEFAULT_SIZE,
            owns_server: child.is_some(),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            dropped_msgs: 0,
            replay: None,
            caption: None,
        };
        let (rate, load_on) = (config.rate, config.load);
        let mut dash = Dashboard::default();
        dash.traffic.on = load_on;
        dash.traffic.rate = rate;
        Self {
            config,
            child,
            model,
            workers,
            dash,
            frozen: None,
            opts,
            client: http::client(),
            telemetry_tx,
            telemetry_rx,
            subscriber: None,
            dropped: Arc::new(AtomicU64::new(0)),
            results_tx,
            results_rx,
            load: None,
            load_addr: None,
            rate,
            load_on,
            starting: None,
            replay: None,
            player: None,
            recorder: None,
            started_tx,
            started_rx,
        }
    }

    fn telemetry_addr(&self) -> Option<String> {
        match (&self.child, &self.config.target) {
            (Some(c), _) => c.address.telemetry.clone(),
            (None, Target::Attach { telemetry }) => Some(telemetry.clone()),
            _ => None,
        }
    }

    fn subscribe(&mut self) {
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
        if let Some(addr) = self.telemetry_addr() {
            self.subscriber = Some(subscriber::spawn(
                addr,
                self.telemetry_tx.clone(),
                Arc::clone(&self.dropped),
            ));
        }
    }

    fn note(&mut self, kind: LogKind, text: impl Into<String>) {
        self.dash
            .apply(Msg::Log(kind, text.into()), Instant::now(), &clock());
    }

    async fn run(&mut self, terminal: &mut DefaultTerminal) -> anyhow::Result<()> {
        let mut keys_rx = spawn_input_thread()?;

        if self.replay.is_none() {
            self.subscribe();
        }
        if let Some(path) = self.config.record.clone() {
            match Recorder::create(&path) {
                Ok(r) => {
                    self.recorder = Some(r);
                    self.note(LogKind::Info, format!("recording to {}", path.display()));
                }
                Err(e) => self.note(
                    LogKind::Warn,
                    format!("cannot record to {}: {e}", path.display()),
                ),
            }
        }
        if let Some(child) = &self.child {
            let text = format!(
                "started the {} demo, pid {}, app {}",
                self.model,
                child.pid(),
                child.address.app
            );
            self.note(LogKind::Info, text);
        }
        // Killed politely (SIGTERM, or the terminal closing): leave as on `q`, so the
        // terminal is restored and the demo stopped.
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut frame = tokio::time::interval(Duration::from_millis(1000 / FPS));
        frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut load_window = tokio::time::interval(LOAD_WINDOW);
        load_window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut redraw = false;
            tokio::select! {
                biased;
                ev = keys_rx.recv() => {
                    let Some(ev) = ev else { bail!("the terminal input closed") };
                    match ev {
                        TermEvent::Key(key) => {
                            let action = input::action_for(key, self.child.is_some());
                            if action == Some(Action::Quit) {
                                return Ok(());
                            }
                            if self.opts.help {
                                // Any other key closes the help.
                                self.opts.help = false;
                            } else if let Some(action) = action {
                                self.perform(action);
                            }
                        }
                        TermEvent::Resize(..) => {}
                        _ => continue,
                    }
                    redraw = true;
                }
                Some(msg) = self.telemetry_rx.recv() => {
                    if let TelemetryMsg::Connected(info) = &msg {
                        self.ensure_load(info.app.clone());
                        if self.player.is_none() {
                            if let Some(s) = &self.config.scenario {
                                self.player = Some(Player::new(s, Instant::now()));
                                let text = format!("scenario: {} ({} steps)", s.name, s.steps.len());
                                self.note(LogKind::Info, text);
                            }
                        }
                    }
                    self.record(&msg);
                    self.dash.apply(Msg::Telemetry(msg), Instant::now(), &clock());
                }
                Some(msg) = self.results_rx.recv() => {
                    self.dash.apply(msg, Instant::now(), &clock());
                }
                Some(line) = self.started_rx.recv() => self.finish_switch(&line),
                _ = terminate.recv() => return Ok(()),
                _ = hangup.recv() => return Ok(()),
                _ = load_window.tick() => {
                    if let Some(load) = &self.load {
                        let stats = load.take();
                        self.dash.apply(Msg::Load(stats), Instant::now(), &clock());
                    }
                }
                _ = frame.tick() => {
                    self.advance_replay();
                    self.play_scenario(None);
                    redraw = true;
                }
            }
            if redraw {
                self.opts.dropped_msgs = self.dropped.load(Ordering::Relaxed);
                let shown = self.frozen.as_ref().unwrap_or(&self.dash);
                let now = Instant::now();
                let opts = &self.opts;
                terminal
                    .draw(|f| view::render(f, shown, opts, now))
                    .context("cannot draw")?;
            }
        }
    }

    fn plan(&self) -> LoadPlan {
        LoadPlan {
            rate: if self.load_on { self.rate } else { 0.0 },
            ..LoadPlan::default()
        }
    }

    fn ensure_load(&mut self, app: String) {
        if self.load_addr.as_deref() == Some(app.as_str()) {
            return;
        }
        self.load = Some(LoadGenerator::start(
            self.client.clone(),
            app.clone(),
            self.plan(),
        ));
        self.load_addr = Some(app);
    }

    fn update_load(&mut self) {
        if let Some(load) = &self.load {
            load.set_plan(self.plan());
        }
        let msg = Msg::LoadPlan {
            on: self.load_on,
            rate: self.rate,
        };
        self.dash.apply(msg, Instant::now(), &clock());
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Quit => {}
            Action::Trigger(w) => self.trigger(w),
            Action::SizeUp => self.opts.size = (self.opts.size + 1).min(SIZES.len() - 1),
            Action::SizeDown => self.opts.size = self.opts.size.saturating_sub(1),
            Action::ToggleLoad => {
                self.load_on = !self.load_on;
                self.update_load();
            }
            Action::RateUp | Action::RateDown => {
                self.rate = input::step_rate(self.rate, action == Action::RateUp);
                self.load_on = true;
                self.update_load();
            }
            Action::TogglePause if self.replay.is_some() => {
                let at_end = self
                    .replay
                    .as_ref()
                    .is_some_and(|r| r.next == r.rec.snapshots.len());
                if at_end {
                    // Play again from the start.
                    if let Some(r) = &mut self.replay {
                        r.paused = false;
                        r.clock_ms = f64::MIN;
                    }
                    self.seek(0);
                } else if let Some(r) = &mut self.replay {
                    r.paused = !r.paused;
                }
            }
            Action::TogglePause => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(self.dash.clone()),
                };
                self.opts.paused = self.frozen.is_some();
            }
            Action::ToggleHelp => self.opts.help = !self.opts.help,
            Action::SwitchModel => self.switch_model(),
            Action::SeekBack | Action::SeekForward => {
                let step = if action == Action::SeekBack {
                    -5000
                } else {
                    5000
                };
                self.seek(step);
            }
            Action::Speed(n) => {
                if let Some(r) = &mut self.replay {
                    r.speed = n;
                }
            }
            Action::NextStep => self.play_scenario(Some(Instant::now())),
            Action::ToggleAuto => {
                if let Some(p) = &mut self.player {
                    p.auto = !p.auto;
                    let text = if p.auto {
                        "scenario: steps run by themselves"
                    } else {
                        "scenario: steps run on n"
                    };
                    self.note(LogKind::Info, text);
                }
            }
        }
    }

    /// Runs the scenario steps that are due (or, with `now_forced`, the next one).
    fn play_scenario(&mut self, now_forced: Option<Instant>) {
        // Steps wait while a new server starts: their requests need it.
        if self.starting.is_some() || self.dash.info.is_none() {
            return;
        }
        loop {
            let Some(p) = &mut self.player else { return };
            let step = match now_forced {
                Some(now) => p.step_now(now),
                None => p.due(Instant::now()),
            };
            let Some(step) = step else { return };
            let (done, all) = p.progress();
            for action in step.actions {
                match action {
                    ScenarioAction::Caption(text) => {
                        self.opts.caption = Some(format!("[{done}/{all}] {text}"));
                        self.note(LogKind::Info, format!("▷ {text}"));
                    }
                    ScenarioAction::Load(rate) => {
                        self.load_on = rate > 0.0;
                        if rate > 0.0 {
                            self.rate = rate;
                        }
                        self.update_load();
                    }
                    ScenarioAction::Trigger { label, paths } => {
                        self.send(label, paths, false);
                    }
                    ScenarioAction::Model { model, workers } => {
                        if self.child.is_none() {
                            let text = format!(
                                "scenario: attached to a server, cannot switch it to {model}"
                            );
                            self.note(LogKind::Warn, text);
                        } else if model != self.model {
                            self.workers = workers;
                            self.switch_model();
                        }
                    }
                }
            }
            if now_forced.is_some() {
                return;
            }
        }
    }

    fn record(&mut self, msg: &TelemetryMsg) {
        let Some(rec) = &mut self.recorder else {
            return;
        };
        let written = match msg {
            TelemetryMsg::Connected(info) => rec.info(info),
            TelemetryMsg::Snapshot(s) => rec.snapshot(s),
            TelemetryMsg::Disconnected { .. } => Ok(()),
        };
        if let Err(e) = written {
            self.recorder = None;
            self.note(LogKind::Warn, format!("recording stopped: {e}"));
        }
    }

    fn start_replay(&mut self, rec: Recording, file: &std::path::Path) {
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
        self.dash.traffic.on = false;
        self.replay = Some(Replay {
            rec,
            next: 0,
            clock_ms: first as f64,
            speed: 1,
            paused: false,
            last_tick: Instant::now(),
            notes,
        });
        self.seek(0);
    }

    /// Moves the replay clock with the wall clock and feeds what it passed.
    fn advance_replay(&mut self) {
        let Some(r) = &mut self.replay else { return };
        let now = Instant::now();
        let dt = now.saturating_duration_since(r.last_tick).as_secs_f64() * 1000.0;
        r.last_tick = now;
        if !self.opts.help && !r.paused {
            r.clock_ms += dt * r.speed as f64;
        }
        let mut fed = Vec::new();
        while let Some(s) = r.rec.snapshots.get(r.next) {
            if s.t_ms as f64 > r.clock_ms {
                break;
            }
            fed.push((r.next, s.clone()));
            r.next += 1;
        }
        let ended = r.next == r.rec.snapshots.len() && !r.paused;
        if ended {
            r.paused = true;
        }
        let (at, total, speed, paused) = r.status();
        for (i, s) in fed {
            self.feed(i, s);
        }
        if ended {
            self.note(LogKind::Info, "end of the recording (← to go back)");
        }
        self.opts.replay = Some(ReplayStatus {
            at_s: at,
            total_s: total,
            speed,
            paused,
        });
    }

    fn feed(&mut self, index: usize, snap: Snapshot) {
        let Some(r) = &self.replay else { return };
        // A new server description (a recorded reconnection or model switch).
        let recorded_reconnect = r.rec.infos.iter().skip(1).find(|(at, _)| *at == index);
        if let Some(info) = recorded_reconnect.map(|(_, i)| i.clone()) {
            let msg = Msg::Telemetry(TelemetryMsg::Connected(Box::new(info)));
            self.dash.apply(msg, Instant::now(), &clock());
        }
        let msg = Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(snap)));
        self.dash.apply(msg, Instant::now(), &clock());
    }

    /// Jumps the replay by `delta_ms` and rebuilds the dashboard up to there.
    fn seek(&mut self, delta_ms: i64) {
        let Some(r) = &mut self.replay else { return };
        let first = r.rec.snapshots.first().map_or(0, |s| s.t_ms) as f64;
        let last = r.rec.snapshots.last().map_or(0, |s| s.t_ms) as f64;
        r.clock_ms = (r.clock_ms + delta_ms as f64).clamp(first, last);
        // The jump is the only move: no play time accrues during it.
        r.last_tick = Instant::now();
        if delta_ms < 0 {
            r.paused = r.paused && r.next < r.rec.snapshots.len();
        }
        r.next = 0;
        // The log is rebuilt too: the events up to the new position are fed again.
        let mut dash = Dashboard::default();
        dash.info = r.rec.info_at(0).cloned();
        dash.connection = Connection::Live;
        for (kind, text) in &r.notes {
            dash.apply(Msg::Log(*kind, text.clone()), Instant::now(), &clock());
        }
        self.dash = dash;
        // Feeding happens on the next frame; history up to the clock comes at once.
        self.advance_replay();
    }

    /// Stops the demo and starts the other model; the switch completes in
    /// [`App::finish_switch`] when the new server prints its address, so the screen
    /// keeps drawing meanwhile.
    fn switch_model(&mut self) {
        if self.starting.is_some() {
            return;
        }
        let next = match self.model {
            Model::Node => Model::Fastapi,
            _ => Model::Node,
        };
        let workers = self.workers.max(2);
        self.note(LogKind::Trigger, format!("switching to the {next} model…"));
        // The old server goes first, so its CPU does not blur the new one's start.
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
        self.child = None;
        self.load = None;
        self.load_addr = None;
        let tx = self.started_tx.clone();
        match DemoChild::spawn(next, workers, &self.config.log_file, move |line| {
            let _ = tx.blocking_send(line);
        }) {
            Ok(child) => self.starting = Some((next, workers, child)),
            Err(e) => self.note(
                LogKind::Warn,
                format!("cannot start the {next} demo: {e:#}"),
            ),
        }
    }

    fn finish_switch(&mut self, line: &str) {
        let Some((model, workers, mut child)) = self.starting.take() else {
            return;
        };
        match parse_address(line, &self.config.log_file) {
            Ok(address) => {
                child.address = address;
                let text = format!(
                    "started the {model} demo, pid {}, app {}",
                    child.pid(),
                    child.address.app
                );
                self.child = Some(child);
                self.model = model;
                self.workers = workers;
                let log = std::mem::take(&mut self.dash.log);
                let mut dash = Dashboard::default();
                dash.log = log;
                dash.traffic = self.dash.traffic.clone();
                self.dash = dash;
                self.frozen = None;
                self.opts.paused = false;
                self.note(LogKind::Info, text);
                self.subscribe();
            }
            Err(e) => self.note(
                LogKind::Warn,
                format!("cannot start the {model} demo: {e:#}"),
            ),
        }
    }

    fn trigger(&mut self, workload: Workload) {
        if self.replay.is_some() {
            self.note(LogKind::Warn, "a replay has no server to send workloads to");
            return;
        }
        let size = SIZES[self.opts.size];
        // "Sixty sync requests at one worker": in the fastapi model the burst goes
        // over connections that worker 0 accepted, so its 40 tokens fill.
        let one_worker = workload == Workload::SyncBurst
            && self
                .dash
                .info
                .as_ref()
                .is_some_and(|i| i.model == Model::Fastapi);
        self.send(workload.label(size), workload.paths(size), one_worker);
    }

    /// Sends `paths` at once to the app; the outcome goes to the event log.
    fn send(&mut self, label: String, paths: Vec<String>, one_worker: bool) {
        let Some(app) = self.dash.info.as_ref().map(|i| i.app.clone()) else {
            self.note(
                LogKind::Warn,
                "not connected yet: nothing to send the workload to",
            );
            return;
        };
        self.note(LogKind::Trigger, format!("{label} → sent"));
        let (client, tx) = (self.client.clone(), self.results_tx.clone());
        tokio::spawn(async move {
            let (kind, line) = fire(client, app, label, paths, one_worker).await;
            let _ = tx.send(Msg::Log(kind, line)).await;
        });
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads block) and hands
/// them over; the thread ends when the receiver is dropped.
pub(crate) fn spawn_input_thread() -> anyhow::Result<mpsc::Receiver<TermEvent>> {
    let (keys_tx, keys_rx) = mpsc::channel::<TermEvent>(64);
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            while !keys_tx.is_closed() {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => match event::read() {
                        Ok(ev) => {
                            if keys_tx.blocking_send(ev).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    },
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        })
        .context("cannot start the input thread")?;
    Ok(keys_rx)
}

/// Sends `paths` to `app` all at once (with `one_worker`, over connections worker 0
/// accepted) and returns the log line that says how it went.
pub(crate) async fn fire(
    client: HttpClient,
    app: String,
    mut label: String,
    paths: Vec<String>,
    one_worker: bool,
) -> (LogKind, String) {
    let timeout = Duration::from_secs(60);
    let started;
    let results: Vec<Outcome> = if one_worker {
        match http::connections_to_worker(&app, 0, paths.len(), paths.len() * 10).await {
            Ok(conns) if conns.len() == paths.len() => {
                label.push_str(" → w0");
                started = Instant::now();
                let requests = conns.into_iter().zip(paths).map(|(mut conn, path)| {
                    let app = app.clone();
                    async move {
                        tokio::time::timeout(timeout, http::get_on(&mut conn, &app, &path)).await
                    }
                });
                futures_util::future::join_all(requests).await
            }
            Ok(conns) => {
                let text = format!(
                    "{label}: only {} connections reached w0; not sent",
                    conns.len()
                );
                return (LogKind::Warn, text);
            }
            Err(e) => return (LogKind::Warn, format!("{label}: cannot connect: {e}")),
        }
    } else {
        started = Instant::now();
        let requests = paths.into_iter().map(|path| {
            let (client, app) = (client.clone(), app.clone());
            async move { tokio::time::timeout(timeout, http::get(&client, &app, &path)).await }
        });
        futures_util::future::join_all(requests).await
    };
    (
        LogKind::Result,
        summarize(&label, &results, started.elapsed()),
    )
}

/// A recording being played back.
struct Replay {
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
    /// (position s, length s, speed, paused)
    fn status(&self) -> (f64, f64, u8, bool) {
        let first = self.rec.snapshots.first().map_or(0, |s| s.t_ms) as f64;
        let total = self.rec.duration_s();
        (
            ((self.clock_ms - first).max(0.0) / 1000.0).min(total),
            total,
            self.speed,
            self.paused,
        )
    }
}

pub(crate) type Outcome =
    Result<Result<http::HttpResponse, http::ClientError>, tokio::time::error::Elapsed>;

/// One log line for a finished trigger: who served it and how long it took.
pub(crate) fn summarize(label: &str, results: &[Outcome], total: Duration) -> String {
    let mut per_worker = std::collections::BTreeMap::<u64, u32>::new();
    let mut failures = Vec::new();
    let mut first: Option<serde_json::Value> = None;
    let mut queued_max = 0.0f64;
    for r in results {
        match r {
            Ok(Ok(resp)) if resp.status == 200 => {
                if let Some(body) = resp.json() {
                    if let Some(w) = body["worker"].as_u64() {
                        *per_worker.entry(w).or_default() += 1;
                    }
                    queued_max = queued_max.max(body["queued_ms"].as_f64().unwrap_or(0.0));
                    first.get_or_insert(body);
                }
            }
            Ok(Ok(resp)) => failures.push(format!("HTTP {}", resp.status)),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("timed out".into()),
        }
    }
    let total_ms = total.as_secs_f64() * 1000.0;
    if results.len() == 1 {
        return match (first, failures.first()) {
            (Some(b), _) => format!(
                "{label} → w{} (pid {}) {}, {} on the {}",
                b["worker"].as_u64().unwrap_or(0),
                b["pid"].as_u64().unwrap_or(0),
                super::state::short_ms(total_ms),
                super::state::short_ms(b["took_ms"].as_f64().unwrap_or(0.0)),
                b["ran_on"].as_str().unwrap_or("?"),
            ),
            (None, Some(f)) => format!("{label} → failed: {f}"),
            (None, None) => format!("{label} → no answer"),
        };
    }
    let spread: Vec<String> = per_worker
        .iter()
        .map(|(w, n)| format!("w{w}×{n}"))
        .collect();
    let mut line = format!(
        "{label} done in {} ({}), longest queue wait {}",
        super::state::short_ms(total_ms),
        spread.join(" "),
        super::state::short_ms(queued_max)
    );
    if !failures.is_empty() {
        line.push_str(&format!(", {} failed ({})", failures.len(), failures[0]));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ok(body: &str) -> Outcome {
        Ok(Ok(http::HttpResponse {
            status: 200,
            body: Bytes::from(body.to_string()),
        }))
    }

    #[test]
    fn a_single_trigger_names_its_worker_and_time() {
        let r = [ok(
            r#"{"worker":1,"pid":4242,"took_ms":411.9,"ran_on":"loop"}"#,
        )];
        assert_eq!(
            summarize("json 20 MB", &r, Duration::from_millis(415)),
            "json 20 MB → w1 (pid 4242) 415 ms, 412 ms on the loop"
        );
    }

    #[test]
    fn a_burst_reports_its_spread_and_failures() {
        let mut r: Vec<Outcome> = (0..3)
            .map(|i| {
                ok(&format!(
                    r#"{{"worker":{},"queued_ms":{}}}"#,
                    i % 2,
                    i * 100
                ))
            })
            .collect();
        r.push(Ok(Ok(http::HttpResponse {
            status: 503,
            body: Bytes::new(),
        })));
        assert_eq!(
            summarize("sync×60 (200 ms)", &r, Duration::from_millis(420)),
            "sync×60 (200 ms) done in 420 ms (w0×2 w1×1), longest queue wait 200 ms, 1 failed (HTTP 503)"
        );
    }
}
