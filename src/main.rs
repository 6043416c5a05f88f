//! The `loopscope` command: the dashboard (by default with its own demo server),
//! `loopscope attach ADDR`, and `loopscope demo` (the server alone).

#[path = "../demo/mod.rs"]
mod demo;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use loopscope::headless::{self, Format, HeadlessConfig};
use loopscope::protocol::Model;
use loopscope::scenario::{self, Scenario};
use loopscope::session::{SessionConfig, TargetSpec};
use loopscope::tui::app;

/// A live profiler for event-loop concurrency: loop lag, thread-pool queues, per-worker CPU.
///
/// With no command it starts the demo server and shows the dashboard.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    dashboard: DashboardArgs,
    /// Concurrency model of the demo server the dashboard starts.
    #[arg(long, value_enum, default_value_t = demo::ModelArg::Node)]
    model: demo::ModelArg,
    /// Worker processes (fastapi model) or worker threads (tokio model).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Run a node and a fastapi demo side by side; each key fires at both.
    #[arg(long)]
    compare: bool,
}

#[derive(Args, Debug, Clone)]
struct DashboardArgs {
    /// Background load, requests per second (open loop).
    #[arg(long, default_value_t = 50.0, global = true)]
    rate: f64,
    /// Start with the background load off.
    #[arg(long, global = true)]
    no_load: bool,
    /// Log file (the demo server's stderr goes there too) [default: TMPDIR/loopscope.log].
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    /// No dashboard: print snapshots or a summary, for scripts and CI.
    #[arg(long, global = true)]
    headless: bool,
    /// How long a headless run lasts, e.g. 30s, 2m [default: 30s, or the scenario's
    /// length and 3 s].
    #[arg(long, global = true, value_parser = scenario::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Play a scenario file (TOML; see assets/scenarios/).
    #[arg(long, global = true)]
    scenario: Option<PathBuf>,
    /// Headless output: every snapshot as NDJSON, or a summary table at the end.
    #[arg(long, global = true, value_enum, default_value_t = FormatArg::Ndjson)]
    format: FormatArg,
    /// Headless: exit with status 2 if any loop's lag reaches this many ms.
    #[arg(long, global = true)]
    fail_on_lag: Option<f64>,
    /// Headless: exit with status 2 if any pool's queue reaches this many jobs.
    #[arg(long, global = true)]
    fail_on_queue: Option<u32>,
    /// Record every snapshot to this file (NDJSON; `loopscope replay FILE` plays it).
    #[arg(long, global = true)]
    record: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    /// One JSON snapshot a line, as they arrive.
    Ndjson,
    /// A per-worker summary table at the end.
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the instrumented demo server in the foreground.
    Demo(demo::DemoArgs),
    /// Show the dashboard of servers started by hand, given their telemetry
    /// addresses: one column per server.
    Attach {
        /// Telemetry addresses, HOST:PORT, one per server.
        #[arg(value_parser = parse_addr, required = true, num_args = 1..)]
        addrs: Vec<String>,
        /// A server's app address, HOST:PORT: background load and workload keys go
        /// there. Given once per server, in the order of the telemetry addresses
        /// (the first --app is the first server's); a server without one is only
        /// watched.
        #[arg(long, value_parser = parse_addr)]
        app: Vec<String>,
    },
    /// Play a recording (made with --record) in the dashboard: space pauses,
    /// ← → seek 5 s, 1 2 4 set the speed.
    Replay {
        /// The recording; several play side by side, a column each, from their
        /// starts on one clock (the files one `--record` of several servers wrote).
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Write one self-contained HTML page of recordings (made with --record): the
    /// charts on one time axis, the stalls and their culprits, the events, the
    /// diagnosis and the summary table; it reads offline and prints.
    Report {
        /// The recordings; each server in them gets a section.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Checks a `HOST:PORT` address, saying what is wrong with it.
fn parse_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.contains("://") {
        return Err(format!(
            "{s:?}: give HOST:PORT without a scheme, e.g. 127.0.0.1:9464"
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?}: give HOST:PORT, e.g. 127.0.0.1:9464"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?}: the host is missing or malformed"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?}: the port must be a number from 1 to 65535")),
    }
}

/// The servers of `loopscope attach`: each telemetry address with the app address
/// given in the same place, if any.
fn attach_targets(addrs: Vec<String>, apps: Vec<String>) -> anyhow::Result<Vec<TargetSpec>> {
    if apps.len() > addrs.len() {
        anyhow::bail!(
            "{} --app addresses for {} servers: give at most one per telemetry address, in the same order",
            apps.len(),
            addrs.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = addrs.iter().find(|a| !seen.insert(a.as_str())) {
        anyhow::bail!("{twice} is given twice: one column per server");
    }
    let mut apps = apps.into_iter();
    Ok(addrs
        .into_iter()
        .map(|telemetry| TargetSpec::Attach {
            telemetry,
            app: apps.next(),
        })
        .collect())
}

/// `loopscope report`: writes the page and says what it wrote, and what was wrong
/// with the recordings.
fn report(files: &[PathBuf], output: &std::path::Path) -> anyhow::Result<()> {
    let report = loopscope::report::run(files, output)?;
    for w in &report.warnings {
        eprintln!("loopscope: {}", headless::printable(w));
    }
    eprintln!(
        "loopscope: wrote {} ({} KB, {} server{})",
        output.display(),
        report.html.len().div_ceil(1024),
        report.sections,
        if report.sections == 1 { "" } else { "s" }
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let d = &cli.dashboard;
    if !(d.rate.is_finite() && (0.1..=100_000.0).contains(&d.rate)) {
        anyhow::bail!("--rate must be between 0.1 and 100000 requests per second");
    }
    let log_file = d
        .log_file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("loopscope.log"));
    let scenario = match &d.scenario {
        Some(path) => Some(Scenario::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if cli.compare && (d.headless || d.scenario.is_some() || d.record.is_some()) {
        anyhow::bail!(
            "--compare shows two servers on screen: it does not combine with --headless, --scenario or --record"
        );
    }
    if cli.compare && cli.command.is_some() {
        anyhow::bail!("--compare starts its own two servers: it takes no command");
    }
    if d.headless && matches!(cli.command, Some(Command::Replay { .. })) {
        anyhow::bail!(
            "replay is interactive; a recording is NDJSON that scripts can read as it is"
        );
    }
    if cli.compare {
        // The two-demo case of several targets: node beside fastapi.
        return app::run(SessionConfig {
            targets: vec![
                TargetSpec::Demo {
                    model: Model::Node,
                    workers: 1,
                },
                TargetSpec::Demo {
                    model: Model::Fastapi,
                    workers: cli.workers.max(2),
                },
            ],
            rate: d.rate,
            load: !d.no_load,
            log_file,
            record: None,
            scenario: None,
        });
    }
    let targets = match cli.command {
        Some(Command::Demo(args)) => return demo::run(args),
        Some(Command::Attach { addrs, app }) => attach_targets(addrs, app)?,
        Some(Command::Replay { files }) => return app::replay(&files, log_file),
        Some(Command::Report { files, output }) => return report(&files, &output),
        // A scenario says which model it starts in.
        None => vec![match &scenario {
            Some(s) => TargetSpec::Demo {
                model: s.model,
                workers: s.workers,
            },
            None => TargetSpec::Demo {
                model: cli.model.into(),
                workers: cli.workers,
            },
        }],
    };
    if targets.len() > 1 && d.scenario.is_some() {
        anyhow::bail!("--scenario takes one server; attach to one address");
    }
    if d.headless {
        let crossed = headless::run(HeadlessConfig {
            targets,
            duration: d.duration,
            scenario,
            format: match d.format {
                FormatArg::Ndjson => Format::Ndjson,
                FormatArg::Table => Format::Table,
            },
            rate: if d.no_load { 0.0 } else { d.rate },
            fail_on_lag_ms: d.fail_on_lag,
            fail_on_queue: d.fail_on_queue,
            log_file,
            record: d.record.clone(),
        })?;
        if !crossed.is_empty() {
            for c in &crossed {
                eprintln!("loopscope: threshold crossed: {c}");
            }
            std::process::exit(2);
        }
        return Ok(());
    }
    app::run(SessionConfig {
        targets,
        rate: d.rate,
        load: !d.no_load,
        log_file,
        record: d.record.clone(),
        scenario,
    })
}

#[cfg(test)]
mod tests {
    use super::{TargetSpec, attach_targets, parse_addr};

    #[test]
    fn addresses_are_checked_with_a_clear_message() {
        assert_eq!(parse_addr("127.0.0.1:9464"), Ok("127.0.0.1:9464".into()));
        assert_eq!(parse_addr("localhost:1"), Ok("localhost:1".into()));
        assert_eq!(parse_addr("[::1]:9464"), Ok("[::1]:9464".into()));
        assert!(
            parse_addr("http://127.0.0.1:1")
                .unwrap_err()
                .contains("without a scheme")
        );
        assert!(
            parse_addr("127.0.0.1:99999")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            parse_addr("127.0.0.1:0")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(parse_addr("127.0.0.1").unwrap_err().contains("HOST:PORT"));
        assert!(parse_addr(":9464").unwrap_err().contains("host"));
    }

    #[test]
    fn each_app_address_goes_to_the_server_in_its_place() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let targets = attach_targets(s(&["a:1", "b:2", "c:3"]), s(&["a:8"])).unwrap();
        let apps: Vec<_> = targets
            .iter()
            .map(|t| match t {
                TargetSpec::Attach { telemetry, app } => (telemetry.as_str(), app.as_deref()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(apps, [("a:1", Some("a:8")), ("b:2", None), ("c:3", None)]);
        let err = attach_targets(s(&["a:1"]), s(&["a:8", "b:8"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("at most one per telemetry address"),
            "{err}"
        );
        let err = attach_targets(s(&["a:1", "a:1"]), vec![]).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }
}
