//! The tokio model: one process, one `multi_thread` runtime of `--workers` worker
//! threads that steal each other's tasks, and tokio's blocking pool (`--pool` caps
//! `max_blocking_threads`) for the pool workloads.
//!
//! The probe is the library's own ([`Probe`]): one worker entry per runtime worker
//! thread, each with the request whose poll holds it, and the blocking pool as
//! worker 0's pool. The accept loop runs on the main thread inside `block_on`, as
//! under `#[tokio::main]`; every connection is a task that any worker may run.

use std::sync::Arc;

use anyhow::Context;
use loopscope::probe::Probe;
use loopscope::probe::server;
use loopscope::protocol::Model;
use tower_layer::Layer;

use super::DemoArgs;
use super::app::{self, App, Jobs, Worker};

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    super::workloads::tune_allocator();
    let pool_size = args.pool_size()?;
    let (listener, telemetry_listener) = super::listen(args)?;
    if args.console {
        super::loop_thread::start_console(0)?;
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(args.workers as usize)
        .max_blocking_threads(pool_size as usize)
        .enable_all();
    if args.eager_driver_handoff {
        eager_driver_handoff(&mut builder)?;
    }
    let probe = match telemetry_listener {
        None => None,
        Some(tl) => Some(
            Probe::builder()
                .telemetry_listener(tl)
                .app(listener.local_addr()?.to_string())
                .limits(args.telemetry_limits())
                .config(args.probe_config())
                .max_blocking_threads(pool_size)
                .install(&mut builder)?,
        ),
    };
    // Before the workers start: each takes the list when it first parks.
    if let Some(probe) = &probe {
        probe
            .loop_probe()
            .register_endpoints(loopscope::workload::endpoints().iter().map(String::as_str));
    }
    let runtime = builder.build().context("cannot build the runtime")?;
    let listener = {
        let _runtime = runtime.enter();
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)?
    };
    let worker = Worker::Thread(probe.as_ref().map(|p| Arc::clone(p.hub())));
    let app = App::new(Model::Tokio, worker, Jobs::Blocking);
    let limits = args.app_limits();
    runtime.block_on(async move {
        let router = app::router(Arc::new(app));
        match probe {
            Some(probe) => {
                // Outermost, so that it times everything a request does on a worker.
                server::serve(listener, probe.layer().layer(router), limits).await
            }
            None => server::serve(listener, router, limits).await,
        }
    });
    anyhow::bail!("the application server stopped")
}

#[cfg(tokio_unstable)]
fn eager_driver_handoff(builder: &mut tokio::runtime::Builder) -> anyhow::Result<()> {
    builder.enable_eager_driver_handoff();
    Ok(())
}

#[cfg(not(tokio_unstable))]
fn eager_driver_handoff(_: &mut tokio::runtime::Builder) -> anyhow::Result<()> {
    anyhow::bail!("--eager-driver-handoff needs a build with RUSTFLAGS=\"--cfg tokio_unstable\"")
}
