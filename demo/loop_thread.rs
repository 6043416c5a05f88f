//! One event loop serving the demo app: a `current_thread` runtime on a thread named
//! `loop`, instrumented by the probe when telemetry is on.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use loopscope::probe::server::{self, Limits};
use loopscope::probe::{LoopProbe, ProbeLayer};
use tower_layer::Layer;

use super::app::{self, App};

/// What one loop serves with.
pub struct LoopSetup {
    pub listener: TcpListener,
    pub app: App,
    pub probe: Option<LoopProbe>,
    pub console: bool,
    /// Connection cap and timeouts of the application port.
    pub limits: Limits,
}

/// Runs the loop on a thread named `loop` and waits for it (it serves forever).
pub fn run(setup: LoopSetup) -> anyhow::Result<()> {
    if setup.console {
        start_console(setup.app.worker.id())?;
    }
    let handle = std::thread::Builder::new()
        .name("loop".into())
        .spawn(move || serve(setup))
        .context("cannot start the loop thread")?;
    match handle.join() {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the loop thread panicked"),
    }
}

fn serve(setup: LoopSetup) -> anyhow::Result<()> {
    let LoopSetup {
        listener,
        app,
        probe,
        limits,
        ..
    } = setup;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(probe) = &probe {
        probe.install_hooks(&mut builder);
    }
    let runtime = builder.build().context("cannot build the loop's runtime")?;
    let listener = {
        let _runtime = runtime.enter();
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)?
    };
    runtime.block_on(async move {
        if let Some(probe) = &probe {
            probe.register_endpoints(loopscope::workload::endpoints().iter().map(String::as_str));
            probe.spawn_lag_task();
        }
        let router = app::router(Arc::new(app));
        // The probe wraps the whole router, outermost, so that it times everything
        // a request does on the loop.
        match probe {
            Some(probe) => {
                server::serve(listener, ProbeLayer::new(probe).layer(router), limits).await
            }
            None => server::serve(listener, router, limits).await,
        }
    });
    anyhow::bail!("the application server stopped")
}

#[cfg(feature = "console")]
pub(super) fn start_console(worker: u32) -> anyhow::Result<()> {
    let port = 6669u16
        .checked_add(u16::try_from(worker).unwrap_or(u16::MAX))
        .context("worker id too large for a console port")?;
    console_subscriber::ConsoleLayer::builder()
        .server_addr(([127, 0, 0, 1], port))
        .init();
    eprintln!("loopscope: worker {worker}: tokio-console can attach at http://127.0.0.1:{port}");
    Ok(())
}

#[cfg(not(feature = "console"))]
pub(super) fn start_console(_worker: u32) -> anyhow::Result<()> {
    anyhow::bail!("this build has no console support: rebuild with the `console` feature")
}
