//! Headless runs for scripts and CI: a driver of the session core with no terminal.
//! Prints every snapshot (NDJSON) or, at the end, a summary table per worker and the
//! diagnosis; reports which thresholds were crossed so that the command can exit
//! non-zero. Captions, triggers and what happened to them go to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::client::subscriber::TelemetryMsg;
use crate::diagnosis::{Diagnosis, RunDiagnosis};
use crate::scenario::Scenario;
use crate::session::{LogKind, Msg, Session, SessionConfig, TargetSpec, Update};
use crate::summary::Summary;

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
    /// What to watch: one server, or several (their lines and summaries are then
    /// labelled with each server's name).
    pub targets: Vec<TargetSpec>,
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

/// `text` with control characters escaped: what a server sent cannot drive the
/// terminal it is printed on.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Runs headless and returns the thresholds crossed (empty: all good).
pub fn run(config: HeadlessConfig) -> anyhow::Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let duration = config.duration.unwrap_or(match &config.scenario {
        Some(s) => s.length() + Duration::from_secs(3),
        None => Duration::from_secs(30),
    });
    let _runtime = runtime.enter();
    let mut session = Session::new(SessionConfig {
        targets: config.targets.clone(),
        rate: config.rate,
        load: config.rate > 0.0,
        log_file: config.log_file.clone(),
        record: config.record.clone(),
        scenario: config.scenario.clone(),
    })?;
    let many = config.targets.len() > 1;
    let mut servers: Vec<Watched> = config
        .targets
        .iter()
        .map(|t| Watched::new(label(t), many))
        .collect();
    runtime.block_on(async move {
        let mut stdout = std::io::stdout().lock();
        let mut deadline = tokio::time::Instant::now() + duration;
        loop {
            let update = tokio::select! {
                u = session.next() => u,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let (server, msg) = match update {
                Update::Target { target, msg } if target < servers.len() => {
                    (&mut servers[target], msg)
                }
                Update::Target { .. } => continue,
                Update::Caption(text) => {
                    eprintln!("caption: {text}");
                    continue;
                }
                // The run's length does not include a model switch.
                Update::Restarted { took, .. } => {
                    deadline += took;
                    continue;
                }
                Update::Replay(_) => continue,
            };
            let from = &server.from;
            match msg {
                Msg::Telemetry(TelemetryMsg::Connected(_)) => server.connected = true,
                Msg::Telemetry(TelemetryMsg::Snapshot(snap)) => {
                    server.summary.observe(&snap);
                    server.diagnosis.observe(&snap);
                    if config.format == Format::Ndjson {
                        if many {
                            // The snapshot's fields, after the server it came from.
                            let mut line = serde_json::Map::new();
                            line.insert("server".into(), server.label.clone().into());
                            if let serde_json::Value::Object(fields) = serde_json::to_value(&*snap)?
                            {
                                line.extend(fields);
                            }
                            serde_json::to_writer(&mut stdout, &line)?;
                        } else {
                            serde_json::to_writer(&mut stdout, &*snap)?;
                        }
                        stdout.write_all(b"\n")?;
                        stdout.flush()?;
                    }
                }
                Msg::Telemetry(TelemetryMsg::Skipped { lines, reason }) => {
                    let reason = printable(&reason);
                    match lines {
                        0 => eprintln!("loopscope: {from}telemetry: {reason}"),
                        n => eprintln!("loopscope: {from}telemetry: {reason} ({n} lines skipped)"),
                    }
                }
                Msg::Telemetry(TelemetryMsg::Disconnected { reason, .. }) => {
                    eprintln!("loopscope: {from}telemetry lost: {}", printable(&reason));
                }
                Msg::Log(LogKind::Trigger | LogKind::Result, text) => {
                    eprintln!("trigger: {from}{}", printable(&text));
                }
                Msg::Log(LogKind::Warn, text) => {
                    eprintln!("loopscope: {from}{}", printable(&text));
                }
                Msg::Log(LogKind::Info, text) => {
                    // Said by the scenario's steps, or about the server.
                    if text.starts_with("scenario") || text.starts_with("switching") {
                        eprintln!("{}", printable(&text));
                    }
                }
                Msg::ServerDown(reason) => {
                    eprintln!("loopscope: {from}{}", printable(&reason));
                }
                Msg::Load(_) | Msg::LoadPlan { .. } | Msg::Reset { .. } => {}
            }
        }
        if let Some(silent) = servers.iter().find(|s| !s.connected) {
            anyhow::bail!("no telemetry within {duration:?} from {}", silent.label);
        }
        let mut crossed = Vec::new();
        for Watched {
            label,
            from,
            mut summary,
            diagnosis,
            ..
        } in servers
        {
            summary.finish();
            let diagnosis: Vec<Diagnosis> = diagnosis.lines();
            if config.format == Format::Table {
                if many {
                    writeln!(stdout, "== {label}")?;
                }
                write!(stdout, "{}", summary.table())?;
                for d in &diagnosis {
                    writeln!(stdout, "diagnosis: {}", printable(&d.text))?;
                }
            } else {
                for d in &diagnosis {
                    eprintln!("diagnosis: {from}{}", printable(&d.text));
                }
            }
            let found = summary.crossed(config.fail_on_lag_ms, config.fail_on_queue);
            crossed.extend(found.into_iter().map(|c| format!("{from}{c}")));
        }
        Ok(crossed)
    })
}

/// One server of a headless run, and what the run has seen of it.
struct Watched {
    /// Its name among several ([`label`]).
    label: String,
    /// What a line about it starts with: `LABEL: ` among several, else nothing.
    from: String,
    summary: Summary,
    diagnosis: RunDiagnosis,
    connected: bool,
}

impl Watched {
    fn new(label: String, many: bool) -> Self {
        Self {
            from: if many {
                format!("{label}: ")
            } else {
                String::new()
            },
            label,
            summary: Summary::default(),
            diagnosis: RunDiagnosis::default(),
            connected: false,
        }
    }
}

/// How a headless run names a server among several: its telemetry address, or the
/// demo it started.
fn label(spec: &TargetSpec) -> String {
    match spec {
        TargetSpec::Attach { telemetry, .. } => telemetry.clone(),
        TargetSpec::Demo { model, .. } => format!("demo {model}"),
        TargetSpec::Replay { file, .. } => file.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("GET /x\u{1b}[2J\r\n"), "GET /x\\u{1b}[2J\\r\\n");
        assert_eq!(printable("w0 · 412 ms"), "w0 · 412 ms");
    }
}
