//! The service that `cargo bench --bench probe_cost` measures: axum on a
//! multi-thread runtime with two workers, in one of these setups.
//!
//! ```text
//! cargo run --release --example bench_service -- --probe     # loopscope's probe (make_service)
//! cargo run --release --example bench_service -- --probe-routes  # the same, a layer on each route
//! cargo run --release --example bench_service -- --console   # console-subscriber
//! cargo run --release --example bench_service -- --bare      # neither
//! cargo run --release --example bench_service -- --probe --lag-ms 10  # a slower lag timer
//! cargo run --release --example bench_service -- --hooks     # the probe's hooks alone
//! cargo run --release --example bench_service -- --layer     # its request layer alone
//! ```
//!
//! Routes:
//! - `/hello`: a constant answer;
//! - `/spawn`: spawns one task and awaits it (task churn);
//! - `/block?ms=N`: holds its worker thread for N ms (at most 10 s) and answers with
//!   the moment the handler started, in ns of `CLOCK_MONOTONIC` (the clock is the
//!   machine's, so a reader on the same machine can compare it with its own).
//!
//! The first stdout line says where it listens, as JSON: `app`, `telemetry` (the
//! probe's telemetry or console-subscriber's gRPC address; absent when bare) and
//! `pid`. Both listen on 127.0.0.1 with ports picked by the system.

use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;

#[derive(serde::Deserialize)]
struct Ms {
    ms: u64,
}

/// Most a request may block: the service stays harmless.
const MAX_MS: u64 = 10_000;

/// What watches the service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setup {
    /// loopscope's probe: `Probe::builder().install(..)` and `probe.make_service(..)`.
    Probe,
    /// The same probe as a layer on each route: `app.layer(probe.layer())`.
    ProbeRoutes,
    /// console-subscriber's layer, as tokio-console asks (`ConsoleLayer::builder().init()`).
    Console,
    /// Nothing.
    Bare,
    /// The probe's runtime hooks alone (`LoopProbe::install_hooks`): no request
    /// layer, no sampler, no telemetry, no lag timer.
    Hooks,
    /// The probe's request layer alone (`ProbeLayer` over a `LoopProbe`): no hooks,
    /// no sampler, no telemetry, no lag timer.
    Layer,
}

impl Setup {
    /// The setup named by a command-line flag (`--probe`, `--console`, `--bare`).
    pub fn from_flag(flag: &str) -> Option<Setup> {
        match flag {
            "--probe" => Some(Setup::Probe),
            "--probe-routes" => Some(Setup::ProbeRoutes),
            "--console" => Some(Setup::Console),
            "--bare" => Some(Setup::Bare),
            "--hooks" => Some(Setup::Hooks),
            "--layer" => Some(Setup::Layer),
            _ => None,
        }
    }
}

/// Now on `CLOCK_MONOTONIC`, in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route(
            "/spawn",
            get(|| async {
                let n = tokio::spawn(async { std::hint::black_box(1u64) })
                    .await
                    .unwrap_or(0);
                format!("spawned {n}\n")
            }),
        )
        .route(
            "/block",
            get(|Query(q): Query<Ms>| async move {
                let started = monotonic_ns();
                std::thread::sleep(Duration::from_millis(q.ms.min(MAX_MS)));
                format!("{started}\n")
            }),
        )
}

/// A free port on 127.0.0.1, for console-subscriber's server (it binds it itself).
fn free_port() -> std::io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Serves in `setup` until killed; `lag` is the probe's lag timer interval (its
/// default, 1 ms, if `None`).
pub fn run(setup: Setup, lag: Option<Duration>) -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(2).enable_all();
    // The parts of the probe set up by hand, for `--hooks` and `--layer`.
    let part = loopscope::probe::LoopProbe::new(0, loopscope::probe::ProbeConfig::default());
    if setup == Setup::Hooks {
        part.install_hooks(&mut rt);
    }
    let (probe, telemetry) = match setup {
        Setup::Probe | Setup::ProbeRoutes => {
            let mut config = loopscope::probe::ProbeConfig::default();
            if let Some(lag) = lag {
                config.lag_resolution = lag;
            }
            let probe = loopscope::probe::Probe::builder()
                .telemetry("127.0.0.1:0")
                .config(config)
                .install(&mut rt)?;
            let addr = probe.telemetry_addr().to_string();
            (Some(probe), Some(addr))
        }
        Setup::Console => {
            // Before the runtime exists, so that its tasks are instrumented.
            let addr = free_port()?;
            console_subscriber::ConsoleLayer::builder()
                .server_addr(addr)
                .init();
            (None, Some(addr.to_string()))
        }
        Setup::Bare | Setup::Hooks | Setup::Layer => (None, None),
    };
    rt.build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let telemetry = telemetry.map_or(String::new(), |t| format!(r#","telemetry":"{t}""#));
        println!(
            r#"{{"app":"{}"{telemetry},"pid":{}}}"#,
            listener.local_addr()?,
            std::process::id()
        );
        match (probe, setup) {
            (Some(probe), Setup::ProbeRoutes) => {
                axum::serve(listener, app().layer(probe.layer())).await
            }
            (Some(probe), _) => {
                axum::serve(listener, probe.make_service(app().with_state(()))).await
            }
            (None, Setup::Layer) => {
                let layer = loopscope::probe::ProbeLayer::new(part);
                axum::serve(listener, layer.make_service(app().with_state(()))).await
            }
            (None, _) => axum::serve(listener, app()).await,
        }
    })?;
    Ok(())
}

/// The setup and lag timer interval from arguments: `--probe [--lag-ms N]`, `--probe-routes`,
/// `--console`, `--bare`, `--hooks` or `--layer`.
pub fn parse(args: &[String]) -> Option<(Setup, Option<Duration>)> {
    let setup = Setup::from_flag(args.first().map_or("--probe", String::as_str))?;
    if !matches!(setup, Setup::Probe | Setup::ProbeRoutes) && args.len() > 1 {
        return None;
    }
    let lag = match args.get(1).map(String::as_str) {
        Some("--lag-ms") => Some(Duration::from_millis(args.get(2)?.parse().ok()?)),
        Some(_) => return None,
        None => None,
    };
    Some((setup, lag))
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (setup, lag) = parse(&args).ok_or(
        "usage: bench_service --probe [--lag-ms N]|--probe-routes|--console|--bare|--hooks|--layer",
    )?;
    run(setup, lag)
}
