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
//! cargo run --release --example bench_service -- --switch    # the probe, switched by stdin
//! ```
//!
//! `--switch` installs the probe as `--probe` does and serves every request through
//! a switch: a line `probe` on stdin sends the requests that follow through the
//! probe's request layer and turns its poll timing on; a line `bare` sends them to
//! the app unwrapped and turns the poll timing off; `hooks` turns the poll timing
//! on for the app unwrapped, and `skeleton` turns it on for the app behind the
//! least layer that names the request in poll (thread-local counts only). The
//! sampler, telemetry server and lag timer run all along. What `cargo bench
//! --bench probe_cost -- inprocess` measures, in one process.
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
    /// The probe, its per-request work switched on and off by lines on stdin.
    Switch,
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
            "--switch" => Some(Setup::Switch),
            _ => None,
        }
    }
}

/// Now on `CLOCK_MONOTONIC`, in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Now on `clock` (a clock id: monotonic, or a process's CPU clock), in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let err = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(err, 0, "clock_gettime({clock})");
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
        Setup::Probe | Setup::ProbeRoutes | Setup::Switch => {
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
            (Some(probe), Setup::Switch) => axum::serve(listener, switch::serve(&probe)).await,
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

/// `--switch`: one app reached bare or through the probe's layer, request by request.
mod switch {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::task::{Context, Poll};

    use futures_util::future::Either;
    use loopscope::probe::{Probe, ProbeService};
    use tower_service::Service;

    /// The app bare, through the probe's layer, or through [`Skeleton`]; `mode`
    /// picks ([`BARE`], [`PROBE`], [`SKELETON`]).
    #[derive(Clone)]
    pub struct Switch {
        bare: axum::Router,
        probed: ProbeService<axum::Router>,
        skeleton: Skeleton<axum::Router>,
        mode: Arc<AtomicU8>,
    }

    const BARE: u8 = 0;
    const PROBE: u8 = 1;
    const SKELETON: u8 = 2;

    /// The switch, bare, as a make-service; a thread reads lines on stdin: `probe`
    /// (the layer and the probe's poll timing on), `hooks` (the poll timing only),
    /// `skeleton` (the poll timing and [`Skeleton`]) and `bare` (all off).
    pub fn serve(probe: &Probe) -> Make {
        let mode = Arc::new(AtomicU8::new(BARE));
        let app = super::app().with_state(());
        let switch = Switch {
            probed: tower_layer::Layer::layer(&probe.layer(), app.clone()),
            skeleton: Skeleton(app.clone()),
            bare: app,
            mode: Arc::clone(&mode),
        };
        let lp = probe.loop_probe().clone();
        lp.set_poll_timing(false);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                let (timing, layer) = match line.trim() {
                    "probe" => (true, PROBE),
                    "hooks" => (true, BARE),
                    "skeleton" => (true, SKELETON),
                    "bare" => (false, BARE),
                    _ => continue,
                };
                lp.set_poll_timing(timing);
                mode.store(layer, Ordering::Relaxed);
            }
        });
        Make(switch)
    }

    type Inner<B> = <axum::Router as Service<hyper::Request<B>>>::Future;

    impl<B> Service<hyper::Request<B>> for Switch
    where
        axum::Router: Service<hyper::Request<B>>,
    {
        type Response = <axum::Router as Service<hyper::Request<B>>>::Response;
        type Error = <axum::Router as Service<hyper::Request<B>>>::Error;
        type Future = Either<
            <ProbeService<axum::Router> as Service<hyper::Request<B>>>::Future,
            Either<Counted<Inner<B>>, Inner<B>>,
        >;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            // A router is always ready.
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
            match self.mode.load(Ordering::Relaxed) {
                PROBE => Either::Left(self.probed.call(req)),
                SKELETON => Either::Right(Either::Left(self.skeleton.call(req))),
                _ => Either::Right(Either::Right(self.bare.call(req))),
            }
        }
    }

    thread_local! {
        /// [`Skeleton`]'s counts: requests begun, ended, and the one in poll.
        static COUNTS: Cell<(u64, u64, u64)> = const { Cell::new((0, 0, 0)) };
    }

    /// The least a request layer that names the request holding a worker can do:
    /// count the request in (a thread-local), mark it as the one in poll around
    /// each of its polls, and count it out. What any such layer costs, whatever
    /// it records.
    #[derive(Clone)]
    pub struct Skeleton<S>(S);

    impl<S: Service<R>, R> Service<R> for Skeleton<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Counted<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: R) -> Self::Future {
            let id = COUNTS.with(|c| {
                let (begun, ended, in_poll) = c.get();
                c.set((begun + 1, ended, in_poll));
                begun + 1
            });
            Counted {
                inner: self.0.call(req),
                id,
            }
        }
    }

    pin_project_lite::pin_project! {
        /// A request's future under [`Skeleton`].
        pub struct Counted<F> {
            #[pin]
            inner: F,
            id: u64,
        }

        impl<F> PinnedDrop for Counted<F> {
            fn drop(this: Pin<&mut Self>) {
                let _ = COUNTS.try_with(|c| {
                    let (begun, ended, in_poll) = c.get();
                    c.set((begun, ended + 1, in_poll));
                });
            }
        }
    }

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let set = |id| {
                COUNTS.with(|c| {
                    let (begun, ended, _) = c.get();
                    c.set((begun, ended, id));
                })
            };
            set(*this.id);
            let out = this.inner.poll(cx);
            set(0);
            out
        }
    }

    /// Every connection gets the same switch.
    #[derive(Clone)]
    pub struct Make(Switch);

    impl<T> Service<T> for Make {
        type Response = Switch;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Switch, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: T) -> Self::Future {
            std::future::ready(Ok(self.0.clone()))
        }
    }
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
        "usage: bench_service --probe [--lag-ms N]|--probe-routes|--console|--bare|--hooks|--layer|--switch",
    )?;
    run(setup, lag)
}
