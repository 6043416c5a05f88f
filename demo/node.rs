//! The Node.js-style model: one process, one loop, one process-wide pool.

use std::sync::Arc;
use std::time::Instant;

use loopscope::probe::aggregate::{Aggregator, Feed, Publisher};
use loopscope::probe::cpu::ThreadNames;
use loopscope::probe::sampler::Sampler;
use loopscope::probe::telemetry::{self, TelemetryHub};
use loopscope::probe::{LoopProbe, Pool, PoolKind};
use loopscope::protocol::{Model, PROTOCOL_VERSION, ServerInfo, Versions, WorkerInfo};

use super::DemoArgs;
use super::app::App;
use super::loop_thread::{self, LoopSetup};

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let pool_size = args.pool_size()?;
    super::warn_if_exposed(args.bind);
    let listener = super::bind(args.bind, args.port, "application", "--port")?;
    let telemetry_listener = if args.no_telemetry {
        None
    } else {
        Some(super::bind(
            args.bind,
            args.telemetry_port,
            "telemetry",
            "--telemetry-port",
        )?)
    };
    super::announce(&listener, telemetry_listener.as_ref())?;

    // libuv starts its whole pool at once.
    let pool = Pool::new("pool", pool_size, PoolKind::Eager);
    let probe = match telemetry_listener {
        None => None,
        Some(tl) => {
            let config = args.probe_config();
            let pid = std::process::id();
            let info = ServerInfo {
                v: PROTOCOL_VERSION,
                model: Model::Node,
                app: listener.local_addr()?.to_string(),
                telemetry: tl.local_addr()?.to_string(),
                pid,
                workers: vec![WorkerInfo { id: 0, pid }],
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
            telemetry::serve(tl, Arc::clone(&hub))?;
            // One worker in this process: the sampler publishes itself, no thread hop.
            let mut publisher = Publisher::new(Aggregator::new(Model::Node, config.period), hub);
            publisher.feed(Feed::WorkerStarted { id: 0, pid });
            let probe = LoopProbe::new(0, config);
            Sampler::new(probe.clone(), Some(pool.clone()), ThreadNames::default()).spawn(
                move |report| {
                    publisher.feed(Feed::Report(Box::new(report)));
                    true
                },
            )?;
            Some(probe)
        }
    };

    loop_thread::run(LoopSetup {
        listener,
        app: App::new(Model::Node, 0, pool),
        probe,
        console: args.console,
    })
}
