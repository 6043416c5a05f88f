//! Headless runs for scripts and CI: the same subscriber and demo child as the
//! dashboard, no terminal. Prints every snapshot (NDJSON) or, at the end, a summary
//! table per worker and the diagnosis; reports which thresholds were crossed so that
//! the command can exit non-zero.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::client::http;
use crate::client::load::{LoadGenerator, LoadPlan};
use crate::client::subscriber::{self, TelemetryMsg};
use crate::diagnosis::{Diagnoser, Diagnosis};
use crate::protocol::{Model, Snapshot};
use crate::record::Recorder;
use crate::scenario::{Action, Player, Scenario};
use crate::tui::app::{DemoChild, Target};

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Every snapshot as it arrives, one JSON line each.
    Ndjson,
    /// A summary table at the end.
    Table,
}

/// A headless run.
#[derive(Clone, Debug)]
pub struct HeadlessConfig {
    /// What to watch.
    pub target: Target,
    /// How long; by default 30 s, or a scenario's length and 3 s.
    pub duration: Option<Duration>,
    /// Steps to play.
    pub scenario: Option<Scenario>,
    /// What to print.
    pub format: Format,
    /// Background load, requests per second (0: none).
    pub rate: f64,
    /// Fail when any loop's lag reaches this many ms.
    pub fail_on_lag_ms: Option<f64>,
    /// Fail when any pool's queue reaches this many jobs.
    pub fail_on_queue: Option<u32>,
    /// Where the demo child's stderr goes.
    pub log_file: PathBuf,
    /// Write every snapshot here as it arrives.
    pub record: Option<PathBuf>,
}

/// Figures of one worker over a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSummary {
    /// Median of the per-line lag medians, ms.
    pub lag_p50_ms: f64,
    /// Largest per-line lag p99, ms.
    pub lag_p99_ms: f64,
    /// Largest lag (or live stall), ms.
    pub lag_max_ms: f64,
    /// Longest stall seen live or as a slow poll, ms.
    pub longest_stall_ms: f64,
    /// Most jobs queued at once.
    pub max_queued: u32,
    /// Mean process CPU, % of one core.
    pub cpu_mean: f64,
    /// Peak process CPU, % of one core.
    pub cpu_max: f64,
    p50s: Vec<f64>,
    cpu_sum: f64,
    lines: u64,
}

/// Accumulates a run's snapshots into per-worker figures.
#[derive(Debug, Default)]
pub struct Summary {
    /// Workers by model (a scenario can switch) and id.
    pub workers: BTreeMap<(Model, u32), WorkerSummary>,
    /// Lines seen.
    pub lines: u64,
}

impl Summary {
    /// Takes one snapshot.
    pub fn observe(&mut self, snap: &Snapshot) {
        self.lines += 1;
        for w in &snap.workers {
            let s = self.workers.entry((snap.model, w.id)).or_default();
            if w.lag_ms.samples > 0 {
                s.p50s.push(w.lag_ms.p50);
            }
            s.lag_p99_ms = s.lag_p99_ms.max(w.lag_ms.p99);
            s.lag_max_ms = s.lag_max_ms.max(w.lag_ms.max).max(w.stalled_for_ms);
            s.longest_stall_ms = s.longest_stall_ms.max(w.stalled_for_ms);
            s.max_queued = s.max_queued.max(w.pool.queued);
            s.cpu_sum += w.cpu.process;
            s.cpu_max = s.cpu_max.max(w.cpu.process);
            s.lines += 1;
        }
        for e in &snap.events {
            if let crate::protocol::Event::SlowPoll { worker, ms, .. } = e {
                let s = self.workers.entry((snap.model, *worker)).or_default();
                s.longest_stall_ms = s.longest_stall_ms.max(*ms);
            }
        }
    }

    /// Finishes the figures that need every line.
    pub fn finish(&mut self) {
        for s in self.workers.values_mut() {
            s.p50s.sort_by(f64::total_cmp);
            s.lag_p50_ms = s.p50s.get(s.p50s.len() / 2).copied().unwrap_or(0.0);
            s.cpu_mean = if s.lines == 0 {
                0.0
            } else {
                s.cpu_sum / s.lines as f64
            };
        }
    }

    /// The table, one row per worker.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<6}{:>9}{:>9}{:>9}{:>15}{:>12}{:>10}{:>9}\n",
            "worker",
            "lag p50",
            "lag p99",
            "lag max",
            "longest stall",
            "max queued",
            "CPU mean",
            "CPU max"
        );
        let models = self.models();
        for ((model, id), s) in &self.workers {
            out.push_str(&format!(
                "{:<6}{:>9.2}{:>9.2}{:>9.1}{:>15.1}{:>12}{:>9.1}%{:>8.1}%\n",
                label(*model, *id, models),
                s.lag_p50_ms,
                s.lag_p99_ms,
                s.lag_max_ms,
                s.longest_stall_ms,
                s.max_queued,
                s.cpu_mean,
                s.cpu_max
            ));
        }
        out.push_str("(lag and stalls in ms; CPU in % of one core)\n");
        out
    }

    /// The thresholds crossed, as sentences.
    pub fn crossed(&self, fail_on_lag_ms: Option<f64>, fail_on_queue: Option<u32>) -> Vec<String> {
        let mut out = Vec::new();
        let models = self.models();
        for ((model, id), s) in &self.workers {
            let w = label(*model, *id, models);
            if let Some(limit) = fail_on_lag_ms {
                if s.lag_max_ms >= limit {
                    out.push(format!(
                        "{w}: loop lag reached {:.0} ms (limit {limit} ms)",
                        s.lag_max_ms
                    ));
                }
            }
            if let Some(limit) = fail_on_queue {
                if s.max_queued >= limit {
                    out.push(format!(
                        "{w}: pool queue reached {} (limit {limit})",
                        s.max_queued
                    ));
                }
            }
        }
        out
    }
}

impl Summary {
    /// How many models the run saw (a scenario can switch).
    fn models(&self) -> usize {
        let mut models: Vec<Model> = self.workers.keys().map(|(m, _)| *m).collect();
        models.dedup();
        models.len()
    }
}

/// `w0`, or `node w0` when the run saw more than one model.
fn label(model: Model, id: u32, models: usize) -> String {
    if models > 1 {
        format!("{model} w{id}")
    } else {
        format!("w{id}")
    }
}

/// Runs headless and returns the thresholds crossed (empty: all good).
pub fn run(config: HeadlessConfig) -> anyhow::Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut child = match &config.target {
        Target::Demo { model, workers } => {
            Some(DemoChild::start(*model, *workers, &config.log_file)?)
        }
        Target::Attach { .. } => None,
    };
    let mut telemetry = match (&child, &config.target) {
        (Some(c), _) => c
            .address
            .telemetry
            .clone()
            .context("the demo has no telemetry port")?,
        (None, Target::Attach { telemetry }) => telemetry.clone(),
        (None, Target::Demo { .. }) => unreachable!("a demo target starts a child"),
    };
    let duration = config.duration.unwrap_or(match &config.scenario {
        Some(s) => s.length() + Duration::from_secs(3),
        None => Duration::from_secs(30),
    });
    runtime.block_on(async move {
        let (tx, mut rx) = mpsc::channel(256);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subscription = subscriber::spawn(telemetry.clone(), tx.clone(), Arc::clone(&dropped));
        let mut summary = Summary::default();
        let mut diagnoser = Diagnoser::new();
        let mut worst: BTreeMap<(Model, u32, u8), Diagnosis> = BTreeMap::new();
        let mut load: Option<LoadGenerator> = None;
        let mut rate = config.rate;
        let mut app: Option<String> = None;
        let mut player: Option<Player> = None;
        let client = http::client();
        let mut stdout = std::io::stdout().lock();
        let mut deadline = tokio::time::Instant::now() + duration;
        let mut connected = false;
        let mut recorder = match &config.record {
            Some(path) => Some(
                Recorder::create(path)
                    .with_context(|| format!("cannot record to {}", path.display()))?,
            ),
            None => None,
        };
        let mut steps = tokio::time::interval(Duration::from_millis(20));
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = steps.tick() => {
                    // Steps wait while a new server starts: their requests need it.
                    if app.is_none() {
                        continue;
                    }
                    let Some(p) = &mut player else { continue };
                    let Some(step) = p.due(std::time::Instant::now()) else { continue };
                    for action in step.actions {
                        match action {
                            Action::Caption(text) => eprintln!("caption: {text}"),
                            Action::Load(r) => {
                                rate = r;
                                let plan = LoadPlan { rate: r, ..LoadPlan::default() };
                                match (&load, &app) {
                                    (Some(l), _) => l.set_plan(plan),
                                    (None, Some(a)) if r > 0.0 => {
                                        load = Some(LoadGenerator::start(client.clone(), a.clone(), plan));
                                    }
                                    _ => {}
                                }
                            }
                            Action::Trigger { label, paths } => {
                                eprintln!("trigger: {label}");
                                let Some(a) = app.clone() else { continue };
                                for path in paths {
                                    let (c, a) = (client.clone(), a.clone());
                                    tokio::spawn(async move { http::get(&c, &a, &path).await });
                                }
                            }
                            Action::Model { model, workers } => {
                                if child.is_none() {
                                    eprintln!("loopscope: attached to a server: cannot switch it to {model}");
                                    continue;
                                }
                                eprintln!("switching to the {model} model");
                                drop(child.take());
                                load = None;
                                app = None;
                                subscription.abort();
                                let switch_started = tokio::time::Instant::now();
                                let c = DemoChild::start(model, workers, &config.log_file)?;
                                // The run's length does not include the switch.
                                deadline += switch_started.elapsed();
                                telemetry = c.address.telemetry.clone().context("the demo has no telemetry port")?;
                                child = Some(c);
                                subscription = subscriber::spawn(telemetry.clone(), tx.clone(), Arc::clone(&dropped));
                            }
                        }
                    }
                    continue;
                }
            };
            match msg {
                Some(TelemetryMsg::Connected(info)) => {
                    connected = true;
                    if let Some(r) = &mut recorder {
                        r.info(&info).context("recording")?;
                    }
                    app = Some(info.app.clone());
                    if rate > 0.0 && load.is_none() {
                        let plan = LoadPlan {
                            rate,
                            ..LoadPlan::default()
                        };
                        load = Some(LoadGenerator::start(client.clone(), info.app.clone(), plan));
                    }
                    if player.is_none() {
                        if let Some(s) = &config.scenario {
                            eprintln!("scenario: {}", s.name);
                            player = Some(Player::new(s, std::time::Instant::now()));
                        }
                    }
                }
                Some(TelemetryMsg::Snapshot(snap)) => {
                    if let Some(r) = &mut recorder {
                        r.snapshot(&snap).context("recording")?;
                    }
                    summary.observe(&snap);
                    diagnoser.observe(&snap);
                    // Keep the worst of each kind over the whole run, not only the
                    // diagnoser's last seconds.
                    for d in diagnoser.diagnose() {
                        let key = (snap.model, d.worker, d.finding as u8);
                        let keep = worst.get(&key).is_none_or(|w: &Diagnosis| d.outranks(w));
                        if keep {
                            worst.insert(key, d);
                        }
                    }
                    if config.format == Format::Ndjson {
                        serde_json::to_writer(&mut stdout, &*snap)?;
                        stdout.write_all(b"\n")?;
                        stdout.flush()?;
                    }
                }
                Some(TelemetryMsg::Disconnected { reason, .. }) => {
                    eprintln!("loopscope: telemetry from {telemetry}: {reason}");
                }
                None => break,
            }
        }
        drop(load);
        if !connected {
            anyhow::bail!("no telemetry from {telemetry} within {duration:?}");
        }
        summary.finish();
        let diagnosis: Vec<Diagnosis> = worst.into_values().collect();
        if config.format == Format::Table {
            write!(stdout, "{}", summary.table())?;
            for d in &diagnosis {
                writeln!(stdout, "diagnosis: {}", d.text)?;
            }
        } else {
            for d in &diagnosis {
                eprintln!("diagnosis: {}", d.text);
            }
        }
        Ok(summary.crossed(config.fail_on_lag_ms, config.fail_on_queue))
    })
}

/// Parses `30s`, `2m`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 2m, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 7.0 * 86_400.0) {
        return Err(format!("{s:?} is out of range (0 < duration <= 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LagSummary, Model, PoolSnapshot, WorkerSnapshot};

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn summary_and_thresholds() {
        let mut s = Summary::default();
        for (t, max, stall, queued, cpu) in [
            (1, 1.0f64, 0.0, 0, 10.0),
            (2, 0.0, 250.0, 8, 90.0),
            (3, 412.0, 0.0, 2, 20.0),
        ] {
            s.observe(&Snapshot {
                v: 1,
                seq: t,
                t_ms: t * 100,
                model: Model::Node,
                period_ms: 100,
                workers: vec![WorkerSnapshot {
                    id: 0,
                    alive: true,
                    lag_ms: LagSummary {
                        p50: 0.3,
                        p99: max.min(5.0),
                        max,
                        samples: if max > 0.0 { 50 } else { 0 },
                    },
                    stalled_for_ms: stall,
                    pool: PoolSnapshot {
                        queued,
                        ..Default::default()
                    },
                    cpu: crate::protocol::CpuSnapshot {
                        process: cpu,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                host: Default::default(),
                events: vec![],
            });
        }
        s.finish();
        let w = &s.workers[&(Model::Node, 0)];
        assert_eq!(
            (w.lag_max_ms, w.longest_stall_ms, w.max_queued),
            (412.0, 250.0, 8)
        );
        assert_eq!((w.cpu_mean, w.cpu_max, w.lag_p50_ms), (40.0, 90.0, 0.3));
        let table = s.table();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            vec![
                "w0", "0.30", "5.00", "412.0", "250.0", "8", "40.0%", "90.0%"
            ],
            "{table}"
        );
        assert!(table.starts_with("worker  lag p50  lag p99  lag max  longest stall"));
        assert_eq!(s.crossed(Some(500.0), Some(9)), Vec::<String>::new());
        assert_eq!(
            s.crossed(Some(100.0), Some(8)),
            vec![
                "w0: loop lag reached 412 ms (limit 100 ms)".to_string(),
                "w0: pool queue reached 8 (limit 8)".to_string()
            ]
        );
    }
}
