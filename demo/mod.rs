//! The demo server, in two concurrency models (see DESIGN.md's table):
//! - `node`: one process, one `current_thread` loop on a thread named `loop`, a
//!   process-wide pool of 4 threads;
//! - `fastapi`: a supervisor binds one socket and starts N worker processes (this
//!   executable again) that inherit it and all accept on it; each has its own loop
//!   and a lazy 40-token pool. The supervisor respawns workers that die.

mod app;
mod fastapi;
mod loop_thread;
mod node;
mod params;
mod workloads;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use loopscope::probe::ProbeConfig;
use loopscope::probe::telemetry::TelemetryHub;
use loopscope::protocol::{AddressLine, Model, PROTOCOL_VERSION, ServerInfo, Versions, WorkerInfo};

/// The concurrency model to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// One event loop and a 4-thread pool (libuv).
    Node,
    /// A supervisor and N worker processes, each with a loop and 40 pool tokens (uvicorn + anyio).
    Fastapi,
}

impl From<ModelArg> for Model {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Node => Model::Node,
            ModelArg::Fastapi => Model::Fastapi,
        }
    }
}

/// `loopscope demo`: the instrumented demo server, in the foreground.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Concurrency model.
    #[arg(long, value_enum, default_value_t = ModelArg::Node)]
    pub model: ModelArg,
    /// Worker processes (fastapi).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Pool size per worker [node: 4, or UV_THREADPOOL_SIZE; fastapi: 40 tokens].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pool: Option<u32>,
    /// Application port; 0 picks a free one.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Telemetry port; 0 picks a free one.
    #[arg(long, default_value_t = 9464)]
    pub telemetry_port: u16,
    /// Address both ports bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Start console-subscriber in each worker (127.0.0.1:6669 + worker id) for tokio-console.
    #[arg(long)]
    pub console: bool,
    /// No probe and no telemetry port: the bare server (to measure the probe's cost).
    #[arg(long)]
    pub no_telemetry: bool,
    /// Telemetry sample period, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub period_ms: u64,
    /// Interval of the lag timer, in milliseconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub lag_resolution_ms: u64,
    /// A request poll longer than this is reported as holding the loop, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub slow_poll_ms: u64,
    /// Internal: run as fastapi worker N (started by the supervisor).
    #[arg(long, hide = true)]
    pub worker_id: Option<u32>,
    /// Internal: the inherited listening socket of a fastapi worker.
    #[arg(long, hide = true)]
    pub listen_fd: Option<i32>,
}

impl DemoArgs {
    fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            lag_resolution: Duration::from_millis(self.lag_resolution_ms),
            period: Duration::from_millis(self.period_ms),
            slow_poll: Duration::from_millis(self.slow_poll_ms),
            ..ProbeConfig::default()
        }
    }

    fn pool_size(&self) -> anyhow::Result<u32> {
        if let Some(n) = self.pool {
            return Ok(n);
        }
        Ok(match self.model {
            ModelArg::Node => match std::env::var("UV_THREADPOOL_SIZE") {
                // libuv clamps to 1..=1024 the same way.
                Ok(v) => v
                    .trim()
                    .parse::<u32>()
                    .with_context(|| format!("UV_THREADPOOL_SIZE={v:?} is not a number"))?
                    .clamp(1, 1024),
                Err(_) => 4,
            },
            ModelArg::Fastapi => 40,
        })
    }
}

/// Runs the demo server until it is killed.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    match (args.model, args.worker_id, args.listen_fd) {
        (ModelArg::Node, None, None) => node::run(&args),
        (ModelArg::Fastapi, None, None) => fastapi::supervise(&args),
        (ModelArg::Fastapi, Some(id), Some(fd)) => fastapi::work(&args, id, fd),
        _ => {
            bail!("--worker-id and --listen-fd are internal: use `loopscope demo --model fastapi`")
        }
    }
}

/// The application socket and, unless `--no-telemetry`, the telemetry socket, bound
/// and announced on stdout.
fn listen(args: &DemoArgs) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    warn_if_exposed(args.bind);
    let app = bind(args.bind, args.port, "application", "--port")?;
    let telemetry = if args.no_telemetry {
        None
    } else {
        Some(bind(
            args.bind,
            args.telemetry_port,
            "telemetry",
            "--telemetry-port",
        )?)
    };
    announce(&app, telemetry.as_ref())?;
    Ok((app, telemetry))
}

/// Serves telemetry for `model` on `telemetry` from its own thread; returns the hub
/// that snapshots are published to.
fn serve_telemetry(
    args: &DemoArgs,
    model: Model,
    app: &TcpListener,
    telemetry: TcpListener,
    workers: Vec<WorkerInfo>,
    pool_size: u32,
    epoch: Instant,
) -> anyhow::Result<Arc<TelemetryHub>> {
    let info = ServerInfo {
        v: PROTOCOL_VERSION,
        model,
        app: app.local_addr()?.to_string(),
        telemetry: telemetry.local_addr()?.to_string(),
        pid: std::process::id(),
        workers,
        pool_size,
        period_ms: args.period_ms,
        lag_resolution_ms: args.lag_resolution_ms as f64,
        slow_poll_ms: args.slow_poll_ms as f64,
        versions: Versions {
            loopscope: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
        },
    };
    let hub = Arc::new(TelemetryHub::new(info, epoch));
    loopscope::probe::telemetry::serve(telemetry, Arc::clone(&hub))?;
    Ok(hub)
}

/// Binds a listening socket with a message that says what to do when it fails.
fn bind(ip: IpAddr, port: u16, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, port)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{what} port {port} on {ip} is in use: pass {flag} (0 picks a free one)"
            )
        } else {
            anyhow::anyhow!("cannot bind the {what} port {ip}:{port}: {e}")
        }
    })
}

/// Prints the address line a parent reads to find the ports (the first stdout line).
fn announce(app: &TcpListener, telemetry: Option<&TcpListener>) -> anyhow::Result<()> {
    use std::io::Write;
    let line = AddressLine {
        app: app.local_addr()?.to_string(),
        telemetry: telemetry
            .map(|t| t.local_addr().map(|a| a.to_string()))
            .transpose()?,
        pid: std::process::id(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&line)?)?;
    out.flush()?;
    Ok(())
}

fn warn_if_exposed(ip: IpAddr) {
    if !ip.is_loopback() {
        eprintln!(
            "loopscope: warning: binding {ip}: the demo's endpoints block and burn CPU on request; \
             anyone who can reach this address can stall it"
        );
    }
}
