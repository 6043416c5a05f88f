//! The `loopscope` command: the dashboard (by default with its own demo server),
//! `loopscope attach ADDR`, and `loopscope demo` (the server alone).

#[path = "../demo/mod.rs"]
mod demo;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use loopscope::tui::app::{self, AppConfig, Target};

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
    /// Worker processes (fastapi model).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the instrumented demo server in the foreground.
    Demo(demo::DemoArgs),
    /// Show the dashboard of a server started by hand, given its telemetry address.
    Attach {
        /// Telemetry address, HOST:PORT.
        addr: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let d = &cli.dashboard;
    if !(d.rate.is_finite() && d.rate > 0.0 && d.rate <= 100_000.0) {
        anyhow::bail!("--rate must be between 0 and 100000 requests per second");
    }
    let log_file = d
        .log_file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("loopscope.log"));
    let config = |target| AppConfig {
        target,
        rate: d.rate,
        load: !d.no_load,
        log_file: log_file.clone(),
    };
    match cli.command {
        Some(Command::Demo(args)) => demo::run(args),
        Some(Command::Attach { addr }) => app::run(config(Target::Attach { telemetry: addr })),
        None => app::run(config(Target::Demo {
            model: cli.model.into(),
            workers: cli.workers,
        })),
    }
}
