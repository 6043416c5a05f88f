//! The demo server, in three concurrency models (see README.md's table):
//! - `node`: one process, one `current_thread` loop on a thread named `loop`, a
//!   process-wide pool of 4 threads;
//! - `fastapi`: a supervisor binds one socket and starts N worker processes (this
//!   executable again) that inherit it and all accept on it; each has its own loop
//!   and a lazy 40-token pool. The supervisor respawns workers that die;
//! - `tokio`: one process, one `multi_thread` runtime of N worker threads that steal
//!   each other's tasks, and tokio's blocking pool (`spawn_blocking`).

mod app;
mod fastapi;
mod loop_thread;
mod node;
mod params;
mod tokio_model;
mod workloads;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use loopscope::probe::ProbeConfig;
use loopscope::probe::server::Limits;
use loopscope::probe::telemetry::TelemetryHub;
use loopscope::protocol::{AddressLine, Model, PROTOCOL_VERSION, ServerInfo, Versions, WorkerInfo};

/// The concurrency model to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// One event loop and a 4-thread pool (libuv).
    Node,
    /// A supervisor and N worker processes, each with a loop and 40 pool tokens (uvicorn + anyio).
    Fastapi,
    /// One multi-thread tokio runtime: N worker threads and tokio's blocking pool (512 threads).
    Tokio,
}

impl From<ModelArg> for Model {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Node => Model::Node,
            ModelArg::Fastapi => Model::Fastapi,
            ModelArg::Tokio => Model::Tokio,
        }
    }
}

/// `loopscope demo`: the instrumented demo server, in the foreground.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Concurrency model.
    #[arg(long, value_enum, default_value_t = ModelArg::Node)]
    pub model: ModelArg,
    /// Worker processes (fastapi) or worker threads (tokio).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Pool size per worker [node: 4, or UV_THREADPOOL_SIZE; fastapi: 40 tokens; tokio: 512
    /// blocking threads].
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
    /// tokio: a worker that parked on the I/O driver hands it to a sleeping worker
    /// before it polls a task (tokio's unstable `enable_eager_driver_handoff`), so a
    /// task that blocks that worker does not stop I/O for the others.
    #[arg(long)]
    pub eager_driver_handoff: bool,
    /// Start console-subscriber in each worker process (127.0.0.1:6669 + worker id) for tokio-console.
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
    /// Connections served at once on the application port, per process (per worker
    /// with fastapi); beyond, the longest-idle one is closed, or the newcomer gets 503.
    #[arg(long, default_value_t = Limits::APP.max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Connections served at once on the telemetry port.
    #[arg(long, default_value_t = Limits::TELEMETRY.max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub telemetry_max_connections: usize,
    /// Time to send a request head, from when the server waits for one, in milliseconds.
    #[arg(long, default_value_t = Limits::APP.header_read_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,
    /// A connection idle (no request in progress, nothing sent) this long is closed, in milliseconds.
    #[arg(long, default_value_t = Limits::APP.keep_alive.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub keep_alive_ms: u64,
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

    /// The bounds of the application port, within this process's descriptors.
    fn app_limits(&self) -> Limits {
        let mut budget = descriptor_budget();
        // One process serves both ports, except with fastapi.
        if self.model != ModelArg::Fastapi && !self.no_telemetry {
            let telemetry = self.limits(self.telemetry_max_connections);
            budget = budget.saturating_sub(telemetry.within(budget / 2).descriptors());
        }
        fit(
            self.limits(self.max_connections),
            budget,
            "--max-connections",
        )
    }

    /// The bounds of the telemetry port.
    fn telemetry_limits(&self) -> Limits {
        fit(
            self.limits(self.telemetry_max_connections),
            descriptor_budget() / 2,
            "--telemetry-max-connections",
        )
    }

    fn limits(&self, max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            keep_alive: Duration::from_millis(self.keep_alive_ms),
        }
    }

    /// The flags a fastapi worker needs to serve within the same bounds.
    fn limit_flags(&self) -> [String; 6] {
        [
            "--max-connections".into(),
            self.max_connections.to_string(),
            "--header-timeout-ms".into(),
            self.header_timeout_ms.to_string(),
            "--keep-alive-ms".into(),
            self.keep_alive_ms.to_string(),
        ]
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
            // tokio's default `max_blocking_threads`.
            ModelArg::Tokio => 512,
        })
    }
}

/// Runs the demo server until it is killed.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    raise_descriptor_limit();
    if args.eager_driver_handoff && args.model != ModelArg::Tokio {
        bail!("--eager-driver-handoff applies to --model tokio only");
    }
    match (args.model, args.worker_id, args.listen_fd) {
        (ModelArg::Node, None, None) => node::run(&args),
        (ModelArg::Tokio, None, None) => tokio_model::run(&args),
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
    loopscope::probe::telemetry::serve(telemetry, Arc::clone(&hub), args.telemetry_limits())?;
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

/// Descriptors kept for everything but connections: stdio, the runtime's, the
/// scratch file, worker pipes, /proc reads.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open descriptors to the hard one (capped at 2^20), so
/// that the connection caps fit under it.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let want = limit.rlim_max.min(1 << 20);
        if limit.rlim_cur < want {
            limit.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Descriptors this process may spend on connections.
fn descriptor_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX)
}

/// `limits` within `budget` descriptors, with a warning when that lowers the cap.
fn fit(limits: Limits, budget: usize, flag: &str) -> Limits {
    let fitted = limits.within(budget);
    if fitted != limits {
        eprintln!(
            "loopscope: warning: {flag} {} does not fit under the open-file limit: serving {} \
             connections (raise `ulimit -n`)",
            limits.max_connections, fitted.max_connections
        );
    }
    fitted
}
