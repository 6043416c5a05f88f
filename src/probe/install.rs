//! The probe of a service, in three lines: measure a tokio runtime (of either
//! flavor) and serve its telemetry, from threads of the probe's own.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rt = tokio::runtime::Builder::new_multi_thread();
//! let probe = loopscope::probe::Probe::builder().telemetry("127.0.0.1:9464").install(rt.enable_all())?;
//! rt.build()?.block_on(async move {
//!     let app = tower_layer::Layer::layer(&probe.layer(), my_service());
//!     // serve `app` with axum, hyper-util or tonic
//! #   drop(app);
//! });
//! # Ok(()) }
//! # fn my_service() {}
//! ```
//!
//! Then `loopscope attach 127.0.0.1:9464` shows the service. What the probe costs
//! and what it never does to the service:
//! - its hooks on the runtime's threads only touch atomics and thread-locals; the
//!   sampler and the telemetry server run on threads of their own, so a stalled
//!   runtime is still reported and a failing telemetry thread leaves the service
//!   running;
//! - its memory is bounded whatever the request rate or the number of tasks: a
//!   fixed number of worker slots ([`MAX_SLOTS`](super::slots::MAX_SLOTS)), 64
//!   endpoints per worker, a bounded event channel, fixed-size histograms;
//! - a taken telemetry port is an error from [`ProbeBuilder::install`] that names
//!   the address, never a panic.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::runtime::RuntimeFlavor;

use super::aggregate::{Aggregator, Feed, Publisher};
use super::cpu::ThreadNames;
use super::sampler::{Sampler, TOKIO_BLOCKING_THREADS};
use super::server::Limits;
use super::telemetry::{self, TelemetryHub};
use super::{LoopProbe, MakeProbeService, ProbeConfig, ProbeLayer, SCHEDULING_DELAY_RESOLUTION};
use crate::protocol::{Model, PROTOCOL_VERSION, ServerInfo, Versions, WorkerInfo};

/// The default telemetry address.
pub const DEFAULT_TELEMETRY: &str = "127.0.0.1:9464";

/// Why [`ProbeBuilder::install`] failed. The service can run without the probe.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The telemetry address is taken by another process.
    #[error(
        "loopscope: the telemetry address {addr} is in use: pick another port (0 picks a free one)"
    )]
    AddrInUse {
        /// The address asked for.
        addr: String,
    },
    /// The telemetry address could not be bound or resolved.
    #[error("loopscope: cannot serve telemetry on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The probe's sampler thread could not be started.
    #[error("loopscope: cannot start the probe's {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Settings of a [`Probe`]; [`Probe::builder`] makes one.
#[derive(Debug)]
pub struct ProbeBuilder {
    telemetry: String,
    listener: Option<TcpListener>,
    config: ProbeConfig,
    app: Option<String>,
    blocking_threads: u32,
    limits: Limits,
}

impl Default for ProbeBuilder {
    fn default() -> Self {
        Self {
            telemetry: DEFAULT_TELEMETRY.into(),
            listener: None,
            config: ProbeConfig::default(),
            app: None,
            blocking_threads: TOKIO_BLOCKING_THREADS,
            limits: Limits::TELEMETRY,
        }
    }
}

impl ProbeBuilder {
    /// Where to serve telemetry (`/telemetry`, `/metrics`, `/info`); default
    /// `127.0.0.1:9464`. Port 0 picks a free one ([`Probe::telemetry_addr`]).
    pub fn telemetry(mut self, addr: impl Into<String>) -> Self {
        self.telemetry = addr.into();
        self
    }

    /// Serve telemetry on a socket already bound (e.g. to announce its port before
    /// the probe starts); it replaces [`ProbeBuilder::telemetry`].
    pub fn telemetry_listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// How the probe measures: lag timer, sample period, slow-poll and stall
    /// thresholds.
    pub fn config(mut self, config: ProbeConfig) -> Self {
        self.config = config;
        self
    }

    /// The service's own address, shown in `/info` (for a reader that sends load).
    pub fn app(mut self, addr: impl Into<String>) -> Self {
        self.app = Some(addr.into());
        self
    }

    /// The runtime's cap on blocking threads, if you changed it with
    /// `max_blocking_threads` (tokio's default is 512): the size of its pool.
    pub fn max_blocking_threads(mut self, n: u32) -> Self {
        self.blocking_threads = n;
        self
    }

    /// Connection cap and timeouts of the telemetry port.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Installs the probe's hooks on `builder` (replacing its thread start, park
    /// and unpark callbacks, and its poll callbacks with `--cfg tokio_unstable`),
    /// binds the telemetry address and starts the sampler and telemetry threads.
    /// Build the runtime from `builder` afterwards.
    pub fn install(mut self, builder: &mut tokio::runtime::Builder) -> Result<Probe, InstallError> {
        let listener = match self.listener.take() {
            Some(l) => l,
            None => bind(&self.telemetry)?,
        };
        let telemetry = listener.local_addr().map_err(|source| InstallError::Bind {
            addr: self.telemetry.clone(),
            source,
        })?;
        let epoch = Instant::now();
        let probe = LoopProbe::new(0, self.config);
        probe.install_hooks(builder);
        let pid = std::process::id();
        let info = ServerInfo {
            v: PROTOCOL_VERSION,
            model: Model::Custom,
            app: self.app.clone().unwrap_or_default(),
            telemetry: telemetry.to_string(),
            pid,
            workers: Vec::new(),
            pool_size: 0,
            period_ms: self.config.period.as_millis() as u64,
            lag_resolution_ms: self.config.lag_resolution.as_secs_f64() * 1000.0,
            slow_poll_ms: self.config.slow_poll.as_secs_f64() * 1000.0,
            versions: Versions {
                loopscope: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
            },
        };
        let hub = Arc::new(TelemetryHub::new(info, epoch));
        // Served from when the runtime first runs, once its flavor (the model) is
        // known; a reader connecting before waits in the listen backlog.
        let mut listener = Some(listener);
        let limits = self.limits;
        let mut publisher = Publisher::new(
            Aggregator::new(Model::Custom, self.config.period),
            Arc::clone(&hub),
        );
        let mut known: Vec<u32> = Vec::new();
        let mut batch = Vec::new();
        let mut flavor: Option<RuntimeFlavor> = None;
        let blocking = self.blocking_threads;
        let config = self.config;
        let watched = probe.clone();
        let readers = Arc::clone(&hub);
        Sampler::new(probe.clone(), None, ThreadNames::none())
            .blocking_pool_size(blocking)
            .check_stalls_while(move || readers.has_readers())
            .spawn(move |report| {
                // Nothing to say before the runtime runs; then start its lag timer.
                let Some(handle) = watched.runtime() else {
                    return true;
                };
                watched.ensure_lag_task(&handle);
                if flavor.is_none() {
                    let f = handle.runtime_flavor();
                    let multi = f == RuntimeFlavor::MultiThread;
                    flavor = Some(f);
                    publisher.set_model(if multi { Model::Tokio } else { Model::Custom });
                    let lag_ms =
                        lag_resolution(config, handle.runtime_flavor()).as_secs_f64() * 1000.0;
                    publisher
                        .hub()
                        .update_info(|i| i.lag_resolution_ms = lag_ms);
                    publisher
                        .hub()
                        .update_info(|i| i.pool_size = if multi { blocking } else { 0 });
                }
                if let Some(listener) = listener.take()
                    && let Err(e) = telemetry::serve(listener, Arc::clone(publisher.hub()), limits)
                {
                    // The service runs on without telemetry.
                    eprintln!("loopscope: cannot start the telemetry thread: {e}");
                }
                // A report taken before the sampler knew the runtime's flavor.
                if flavor == Some(RuntimeFlavor::MultiThread) && report.worker.runtime.is_none() {
                    return true;
                }
                // A multi-thread runtime's reports come as a batch, one per worker,
                // the runtime's figures on the last: fed together, so that the
                // snapshot they make has every worker and the runtime.
                let last = flavor != Some(RuntimeFlavor::MultiThread) || report.runtime.is_some();
                batch.push(report);
                if !last {
                    return true;
                }
                let fresh: Vec<u32> = batch
                    .iter()
                    .map(|r| r.worker.id)
                    .filter(|id| !known.contains(id))
                    .collect();
                if !fresh.is_empty() {
                    for &id in &fresh {
                        publisher.note(Feed::WorkerStarted { id, pid });
                    }
                    known.extend(fresh);
                    let workers = known.iter().map(|&id| WorkerInfo { id, pid }).collect();
                    publisher.hub().update_info(|i| i.workers = workers);
                }
                for report in batch.drain(..) {
                    publisher.feed(Feed::Report(Box::new(report)));
                }
                true
            })
            .map_err(|source| InstallError::Thread {
                what: "sampler",
                source,
            })?;
        Ok(Probe {
            probe,
            telemetry,
            hub,
        })
    }
}

fn bind(addr: &str) -> Result<TcpListener, InstallError> {
    let err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            InstallError::AddrInUse { addr: addr.into() }
        } else {
            InstallError::Bind {
                addr: addr.into(),
                source,
            }
        }
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
    TcpListener::bind(&addrs[..]).map_err(err)
}

/// A running probe: its hooks are on a runtime, its sampler and telemetry server
/// run on threads of their own. Cheap to clone.
#[derive(Clone)]
pub struct Probe {
    probe: LoopProbe,
    telemetry: SocketAddr,
    hub: Arc<TelemetryHub>,
}

impl Probe {
    /// Settings for a probe, to [`install`](ProbeBuilder::install) on a runtime
    /// builder.
    pub fn builder() -> ProbeBuilder {
        ProbeBuilder::default()
    }

    /// A tower [`Layer`](tower_layer::Layer) that instruments every request of a
    /// service (axum, hyper-util, tonic): counts, latency per endpoint, and the
    /// request a stalled worker is holding. Calling it inside the runtime also
    /// starts the probe's lag timer (the sampler starts it otherwise, within
    /// 25 ms of the runtime's first run). On an axum router,
    /// [`make_service`](Self::make_service) measures the same for less.
    pub fn layer(&self) -> ProbeLayer {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.probe.ensure_lag_task(&handle);
        }
        ProbeLayer::new(self.probe.clone())
    }

    /// `service` with every request instrumented, as a make-service for a server
    /// to take whole: `axum::serve(listener, probe.make_service(app.with_state(())))`.
    /// The same measures as [`layer`](Self::layer), one layer around the whole
    /// service: cheaper for axum than `app.layer(probe.layer())`, which wraps and
    /// boxes each route's service again (axum's `Router::layer`), and so adds a
    /// second boxed future to every request. (`with_state(())` turns the router's
    /// handlers into routes once, as `axum::serve(listener, app)` does; a router
    /// called as a plain service does that on every request.) Called inside the
    /// runtime, it starts the lag timer, as [`layer`](Self::layer) does.
    pub fn make_service<S>(&self, service: S) -> MakeProbeService<S> {
        self.layer().make_service(service)
    }

    /// Where telemetry is served.
    pub fn telemetry_addr(&self) -> SocketAddr {
        self.telemetry
    }

    /// The measuring part, for wrapping futures by hand ([`LoopProbe::instrument`])
    /// or registering threads of the service's own.
    pub fn loop_probe(&self) -> &LoopProbe {
        &self.probe
    }

    /// The hub snapshots are published to (the newest is [`TelemetryHub::latest`]).
    pub fn hub(&self) -> &Arc<TelemetryHub> {
        &self.hub
    }
}

impl LoopProbe {
    /// Starts the lag timer on `handle` unless it runs already: every
    /// `lag_resolution` on a `current_thread` runtime, at least every
    /// [`SCHEDULING_DELAY_RESOLUTION`] on a multi-thread one.
    pub fn ensure_lag_task(&self, handle: &tokio::runtime::Handle) {
        if self.shared.lag_spawned.swap(true, Ordering::AcqRel) {
            return;
        }
        self.start_lag(
            handle,
            lag_resolution(self.shared.config, handle.runtime_flavor()),
        );
    }
}

/// The lag timer's interval on a runtime of `flavor`.
fn lag_resolution(config: ProbeConfig, flavor: RuntimeFlavor) -> std::time::Duration {
    if flavor == RuntimeFlavor::MultiThread {
        config.lag_resolution.max(SCHEDULING_DELAY_RESOLUTION)
    } else {
        config.lag_resolution
    }
}
