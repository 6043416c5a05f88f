//! Compare mode: a node and a fastapi demo server side by side, and one key fires the
//! same workload at both, so the difference between the models shows at a glance.
//! Two full columns from 160×45; a compact stack per column down to 100×30.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::Event as TermEvent;
use ratatui::layout::{Constraint, Layout};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::app::{DemoChild, clock, fire, spawn_input_thread};
use super::input::{self, Action, DEFAULT_SIZE, SIZES, Workload};
use super::state::{Dashboard, LogKind, Msg};
use super::view::{self, ViewOptions};
use crate::client::http::{self, HttpClient};
use crate::client::load::{LoadGenerator, LoadPlan};
use crate::client::subscriber::{self, TelemetryMsg};
use crate::protocol::Model;

/// The smallest screen compare mode draws on.
pub const MIN_WIDTH: u16 = 100;
/// The smallest screen compare mode draws on.
pub const MIN_HEIGHT: u16 = 30;

/// One side: a demo server and what is known of it.
struct Pane {
    model: Model,
    _child: DemoChild,
    dash: Dashboard,
    frozen: Option<Dashboard>,
    load: Option<LoadGenerator>,
    _subscriber: tokio::task::JoinHandle<()>,
}

/// Runs compare mode until the operator quits; both servers stop with it.
pub fn run(rate: f64, load_on: bool, workers: u32, log_file: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let node = DemoChild::start(Model::Node, 1, &log_file)?;
    let fastapi = DemoChild::start(Model::Fastapi, workers.max(2), &log_file)?;
    let mut terminal = ratatui::init();
    let result = runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(512);
        let mut panes = Vec::new();
        for (i, child) in [node, fastapi].into_iter().enumerate() {
            let telemetry = child
                .address
                .telemetry
                .clone()
                .context("no telemetry port")?;
            // Each side's subscriber feeds one channel, tagged with its side.
            let (side_tx, mut side_rx) = mpsc::channel(256);
            let sub = subscriber::spawn(telemetry, side_tx, Arc::new(AtomicU64::new(0)));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(m) = side_rx.recv().await {
                    if tx.send((i, m)).await.is_err() {
                        return;
                    }
                }
            });
            let mut dash = Dashboard::default();
            dash.traffic.on = load_on;
            dash.traffic.rate = rate;
            panes.push(Pane {
                model: if i == 0 { Model::Node } else { Model::Fastapi },
                _child: child,
                dash,
                frozen: None,
                load: None,
                _subscriber: sub,
            });
        }
        let mut compare = Compare {
            panes,
            rx,
            opts: ViewOptions {
                paused: false,
                help: false,
                size: DEFAULT_SIZE,
                owns_server: false,
                color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                dropped_msgs: 0,
                replay: None,
                caption: None,
            },
            client: http::client(),
            rate,
            load_on,
        };
        compare.run(&mut terminal).await
    });
    ratatui::restore();
    result
}

struct Compare {
    panes: Vec<Pane>,
    rx: mpsc::Receiver<(usize, TelemetryMsg)>,
    opts: ViewOptions,
    client: HttpClient,
    rate: f64,
    load_on: bool,
}

impl Compare {
    async fn run(&mut self, terminal: &mut DefaultTerminal) -> anyhow::Result<()> {
        let mut keys_rx = spawn_input_thread()?;
        let (results_tx, mut results_rx) = mpsc::channel::<(usize, Msg)>(256);
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut frame = tokio::time::interval(Duration::from_millis(100));
        frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut load_window = tokio::time::interval(Duration::from_secs(1));
        loop {
            let mut redraw = false;
            tokio::select! {
                biased;
                ev = keys_rx.recv() => {
                    let Some(ev) = ev else { bail!("the terminal input closed") };
                    if let TermEvent::Key(key) = ev {
                        let action = input::action_for(key, false);
                        if action == Some(Action::Quit) {
                            return Ok(());
                        }
                        if self.opts.help {
                            self.opts.help = false;
                        } else if let Some(action) = action {
                            self.perform(action, &results_tx);
                        }
                    }
                    redraw = true;
                }
                Some((i, msg)) = self.rx.recv() => {
                    let pane = &mut self.panes[i];
                    if let TelemetryMsg::Connected(info) = &msg {
                        if pane.load.is_none() {
                            let plan = plan(self.load_on, self.rate);
                            pane.load = Some(LoadGenerator::start(self.client.clone(), info.app.clone(), plan));
                        }
                    }
                    pane.dash.apply(Msg::Telemetry(msg), Instant::now(), &clock());
                }
                Some((i, msg)) = results_rx.recv() => {
                    self.panes[i].dash.apply(msg, Instant::now(), &clock());
                }
                _ = load_window.tick() => {
                    for pane in &mut self.panes {
                        if let Some(load) = &pane.load {
                            let stats = load.take();
                            pane.dash.apply(Msg::Load(stats), Instant::now(), &clock());
                        }
                    }
                }
                _ = frame.tick() => redraw = true,
                _ = terminate.recv() => return Ok(()),
                _ = hangup.recv() => return Ok(()),
            }
            if redraw {
                let now = Instant::now();
                let (panes, opts) = (&self.panes, &self.opts);
                terminal
                    .draw(|f| render(f, panes, opts, now))
                    .context("cannot draw")?;
            }
        }
    }

    fn perform(&mut self, action: Action, results: &mpsc::Sender<(usize, Msg)>) {
        match action {
            Action::Trigger(w) => {
                for i in 0..self.panes.len() {
                    self.trigger(i, w, results);
                }
            }
            Action::SizeUp => self.opts.size = (self.opts.size + 1).min(SIZES.len() - 1),
            Action::SizeDown => self.opts.size = self.opts.size.saturating_sub(1),
            Action::ToggleLoad | Action::RateUp | Action::RateDown => {
                if action == Action::ToggleLoad {
                    self.load_on = !self.load_on;
                } else {
                    self.rate = input::step_rate(self.rate, action == Action::RateUp);
                    self.load_on = true;
                }
                for pane in &mut self.panes {
                    if let Some(load) = &pane.load {
                        load.set_plan(plan(self.load_on, self.rate));
                    }
                    let msg = Msg::LoadPlan {
                        on: self.load_on,
                        rate: self.rate,
                    };
                    pane.dash.apply(msg, Instant::now(), &clock());
                }
            }
            Action::TogglePause => {
                self.opts.paused = !self.opts.paused;
                for pane in &mut self.panes {
                    pane.frozen = self.opts.paused.then(|| pane.dash.clone());
                }
            }
            Action::ToggleHelp => self.opts.help = !self.opts.help,
            _ => {}
        }
    }

    fn trigger(&mut self, i: usize, workload: Workload, results: &mpsc::Sender<(usize, Msg)>) {
        let pane = &mut self.panes[i];
        let Some(app) = pane.dash.info.as_ref().map(|info| info.app.clone()) else {
            return;
        };
        let size = SIZES[self.opts.size];
        let label = workload.label(size);
        let paths = workload.paths(size);
        // As in the single view: a sync burst at one fastapi worker fills its tokens.
        let one_worker = workload == Workload::SyncBurst && pane.model == Model::Fastapi;
        pane.dash.apply(
            Msg::Log(LogKind::Trigger, format!("{label} → sent")),
            Instant::now(),
            &clock(),
        );
        let (client, tx) = (self.client.clone(), results.clone());
        tokio::spawn(async move {
            let (kind, line) = fire(client, app, label, paths, one_worker).await;
            let _ = tx.send((i, Msg::Log(kind, line))).await;
        });
    }
}

fn plan(on: bool, rate: f64) -> LoadPlan {
    LoadPlan {
        rate: if on { rate } else { 0.0 },
        ..LoadPlan::default()
    }
}

fn render(frame: &mut ratatui::Frame, panes: &[Pane], opts: &ViewOptions, now: Instant) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small for compare mode: {}×{}\nit needs at least {MIN_WIDTH}×{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        frame.render_widget(ratatui::widgets::Paragraph::new(msg), area);
        return;
    }
    let [body, footer] = Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    for (pane, area) in panes.iter().zip([left, right]) {
        let shown = pane.frozen.as_ref().unwrap_or(&pane.dash);
        view::render_pane(frame, area, shown, opts, now);
    }
    view::render_footer(frame, footer, opts);
    if opts.help {
        view::render_help_overlay(frame, area, opts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::subscriber::TelemetryMsg;
    use crate::tui::state::tests::{info, snapshot, worker};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn dash(model: Model, workers: Vec<crate::protocol::WorkerSnapshot>) -> Dashboard {
        let mut d = Dashboard::default();
        let now = Instant::now();
        d.apply(
            Msg::Telemetry(TelemetryMsg::Connected(Box::new(info(model, 1)))),
            now,
            "x",
        );
        let s = snapshot(1, workers, vec![]);
        d.apply(
            Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(s))),
            now,
            "x",
        );
        d
    }

    fn draw(w: u16, h: u16, left: &Dashboard, right: &Dashboard) -> String {
        let opts = ViewOptions {
            paused: false,
            help: false,
            size: 2,
            owns_server: false,
            color: false,
            dropped_msgs: 0,
            replay: None,
            caption: None,
        };
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        let now = Instant::now();
        term.draw(|f| {
            let area = f.area();
            let [body, footer] =
                Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
            let [l, r] =
                Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                    .areas(body);
            view::render_pane(f, l, left, &opts, now);
            view::render_pane(f, r, right, &opts, now);
            view::render_footer(f, footer, &opts);
        })
        .unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn both_models_side_by_side_at_160x45_and_100x30() {
        let node = dash(Model::Node, vec![worker(0, 412.0, 300.0, 0)]);
        let fastapi = dash(
            Model::Fastapi,
            vec![worker(0, 480.0, 250.0, 0), worker(1, 0.9, 0.0, 0)],
        );
        for (w, h) in [(160, 45), (100, 30)] {
            let s = draw(w, h, &node, &fastapi);
            let lines: Vec<&str> = s.lines().collect();
            assert!(
                lines[0].contains("node · 1 process") && lines[0].contains("fastapi · 2 workers"),
                "{s}"
            );
            // Each side shows its own stall, and the fastapi side its healthy worker.
            let left: String = lines
                .iter()
                .map(|l| l.chars().take(w as usize / 2).collect::<String>() + "\n")
                .collect();
            let right: String = lines
                .iter()
                .map(|l| l.chars().skip(w as usize / 2).collect::<String>() + "\n")
                .collect();
            assert!(left.contains("■ w0 STALLED 30"), "{w}×{h}\n{s}");
            assert!(
                right.contains("■ w0 STALLED 25") && right.contains("w1"),
                "{w}×{h}\n{s}"
            );
            assert!(!right.contains("w1 STALLED"));
            assert!(s.contains("j json"), "{s}");
        }
    }
}
