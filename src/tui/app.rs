//! The dashboard driver: owns the terminal and turns keys into session commands;
//! the session core does everything else. One `select!` drives input, session
//! updates and the frame clock; nothing in it waits on the network. The same driver
//! shows one server, several side by side (compare), or a recording.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event as TermEvent};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::input::{self, Action, DEFAULT_SIZE, SIZES};
use super::state::{Connection, Dashboard};
use super::view::{self, ViewOptions};
use crate::record::Recording;
use crate::session::{Command, Session, SessionConfig, TargetSpec, Update, clock};

/// Most redraws per second; a frame is drawn only when something changed.
const FPS: u64 = 10;

/// Runs the dashboard until the operator quits. The terminal is restored on return
/// and on panic (ratatui's hook), and demo children are always stopped.
pub fn run(config: SessionConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let _runtime = runtime.enter();
    // Children start before the terminal switches, so start-up errors print plainly.
    let session = Session::new(config)?;
    let mut terminal = ratatui::init();
    let result = runtime.block_on(Driver::new(session).run(&mut terminal));
    ratatui::restore();
    result
}

/// Replays recordings in the dashboard until the operator quits: several side by
/// side, a column each, on one clock from each one's start.
pub fn replay(files: &[PathBuf], log_file: PathBuf) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for file in files {
        let rec =
            Recording::load(file).with_context(|| format!("cannot read {}", file.display()))?;
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
        targets.push(TargetSpec::Replay {
            file: file.clone(),
            recording: Box::new(rec),
        });
    }
    run(SessionConfig {
        targets,
        rate: 0.0,
        load: false,
        log_file,
        record: None,
        scenario: None,
    })
}

/// What the dashboard shows of each target, and how.
struct Driver {
    session: Session,
    dashboards: Vec<Dashboard>,
    /// A frozen copy per target while paused (data keeps coming in).
    frozen: Option<Vec<Dashboard>>,
    opts: ViewOptions,
}

impl Driver {
    fn new(session: Session) -> Self {
        let (on, rate) = session.load();
        let dashboards = (0..session.len())
            .map(|_| {
                let mut d = Dashboard::default();
                d.traffic.on = on;
                d.traffic.rate = rate;
                d
            })
            .collect();
        let opts = ViewOptions {
            paused: false,
            help: false,
            size: DEFAULT_SIZE,
            owns_server: session.can_switch(),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            dropped_msgs: 0,
            replay: None,
            caption: None,
        };
        Self {
            session,
            dashboards,
            frozen: None,
            opts,
        }
    }

    async fn run(mut self, terminal: &mut DefaultTerminal) -> anyhow::Result<()> {
        let mut keys_rx = spawn_input_thread()?;
        // Killed politely (SIGTERM, SIGHUP: the terminal closing, SIGINT, SIGQUIT):
        // leave as on `q`, so the terminal is restored and the demo stopped.
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        // An external SIGINT or SIGQUIT (in raw mode ^C is a key, not a signal).
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut quit = signal(SignalKind::quit()).context("cannot watch SIGQUIT")?;
        let mut frame = tokio::time::interval(Duration::from_millis(1000 / FPS));
        frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Something changed since the last frame; a live stall counts up between lines,
        // so a stalled server redraws every frame.
        let mut dirty = true;
        // Counters of a server that stopped ("NOT REPORTING for 12 s") move once a
        // second even when nothing else arrives.
        let mut drawn_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                ev = keys_rx.recv() => {
                    let Some(ev) = ev else { bail!("the terminal input closed") };
                    match ev {
                        TermEvent::Key(key) => {
                            let action = input::action_for(key, self.session.can_switch());
                            if action == Some(Action::Quit) {
                                return Ok(());
                            }
                            if self.opts.help {
                                // Any other key closes the help.
                                self.opts.help = false;
                            } else if let Some(action) = action {
                                self.perform(action);
                            }
                            self.session.hold(self.opts.help);
                        }
                        TermEvent::Resize(..) => {}
                        _ => continue,
                    }
                    // A key shows its effect at once, not at the next frame.
                    while let Some(update) = self.session.ready() {
                        self.apply(update);
                    }
                    self.draw(terminal)?;
                    dirty = false;
                }
                update = self.session.next() => {
                    self.apply(update);
                    dirty = true;
                }
                _ = terminate.recv() => return Ok(()),
                _ = hangup.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
                _ = quit.recv() => return Ok(()),
                _ = frame.tick() => {
                    let stalled = self.dashboards.iter().any(|d| {
                        d.workers.values().any(|w| w.latest.stalled_for_ms > 0.0)
                    });
                    let lost = self
                        .dashboards
                        .iter()
                        .any(|d| matches!(d.connection, Connection::Lost { .. }));
                    let second = drawn_at.elapsed() >= Duration::from_secs(1);
                    if dirty || stalled || (lost && second) {
                        self.draw(terminal)?;
                        drawn_at = Instant::now();
                        dirty = false;
                    }
                }
            }
        }
    }

    fn draw(&mut self, terminal: &mut DefaultTerminal) -> anyhow::Result<()> {
        self.opts.dropped_msgs = self.session.dropped();
        let shown = self.frozen.as_ref().unwrap_or(&self.dashboards);
        let now = Instant::now();
        let opts = &self.opts;
        terminal
            .draw(|f| match shown.as_slice() {
                [one] => view::render(f, one, opts, now),
                many => super::compare::render(f, many, opts, now),
            })
            .context("cannot draw")?;
        Ok(())
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Target { target, msg } => {
                if let Some(d) = self.dashboards.get_mut(target) {
                    d.apply(msg, Instant::now(), &clock());
                }
            }
            Update::Caption(text) => self.opts.caption = Some(text),
            Update::Replay(status) => self.opts.replay = Some(status),
            Update::Restarted { .. } => {
                // A new server: what was frozen belongs to the old one.
                self.frozen = None;
                self.opts.paused = false;
            }
        }
    }

    fn perform(&mut self, action: Action) {
        let (on, rate) = self.session.load();
        let command = match action {
            Action::Quit => return,
            Action::Trigger(w) => Command::Fire(w, SIZES[self.opts.size]),
            Action::SizeUp => {
                self.opts.size = (self.opts.size + 1).min(SIZES.len() - 1);
                return;
            }
            Action::SizeDown => {
                self.opts.size = self.opts.size.saturating_sub(1);
                return;
            }
            Action::ToggleLoad => Command::SetLoad { on: !on, rate },
            Action::RateUp | Action::RateDown => Command::SetLoad {
                on: true,
                rate: input::step_rate(rate, action == Action::RateUp),
            },
            Action::TogglePause if self.session.is_replay() => Command::ReplayPause,
            Action::TogglePause => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(self.dashboards.clone()),
                };
                self.opts.paused = self.frozen.is_some();
                return;
            }
            Action::ToggleHelp => {
                self.opts.help = !self.opts.help;
                return;
            }
            Action::SwitchModel => Command::SwitchModel,
            Action::SeekBack => Command::Seek(-5000),
            Action::SeekForward => Command::Seek(5000),
            Action::Speed(n) => Command::Speed(n),
            Action::NextStep => Command::NextStep,
            Action::ToggleAuto => Command::ToggleAuto,
        };
        self.session.perform(command);
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads block) and hands
/// them over; the thread ends when the receiver is dropped.
fn spawn_input_thread() -> anyhow::Result<mpsc::Receiver<TermEvent>> {
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
