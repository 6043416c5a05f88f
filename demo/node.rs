//! The Node.js-style model: one process, one loop, one process-wide pool.

use std::sync::Arc;
use std::time::Instant;

use loopscope::probe::aggregate::{Aggregator, Feed, Publisher};
use loopscope::probe::cpu::ThreadNames;
use loopscope::probe::sampler::Sampler;
use loopscope::probe::{LoopProbe, Pool, PoolKind};
use loopscope::protocol::{Model, WorkerInfo};

use super::DemoArgs;
use super::app::{App, Jobs, Worker};
use super::loop_thread::{self, LoopSetup};

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let epoch = Instant::now();
    super::workloads::tune_allocator();
    let pool_size = args.pool_size()?;
    let (listener, telemetry_listener) = super::listen(args)?;

    // libuv starts its whole pool at once.
    let pool = Pool::new("pool", pool_size, PoolKind::Eager);
    let probe = match telemetry_listener {
        None => None,
        Some(tl) => {
            let config = args.probe_config();
            let pid = std::process::id();
            let workers = vec![WorkerInfo { id: 0, pid }];
            let hub = super::serve_telemetry(
                args,
                Model::Node,
                &listener,
                tl,
                workers,
                pool_size,
                epoch,
            )?;
            // One worker in this process: the sampler publishes itself, no thread hop.
            let watched = Arc::clone(&hub);
            let mut publisher = Publisher::new(Aggregator::new(Model::Node, config.period), hub);
            publisher.feed(Feed::WorkerStarted { id: 0, pid });
            let probe = LoopProbe::new(0, config);
            Sampler::new(probe.clone(), Some(pool.clone()), ThreadNames::default())
                .check_stalls_while(move || watched.has_readers())
                .spawn(move |report| {
                    publisher.feed(Feed::Report(Box::new(report)));
                    true
                })?;
            Some(probe)
        }
    };

    loop_thread::run(LoopSetup {
        listener,
        app: App::new(Model::Node, Worker::Loop(0), Jobs::Pool(pool)),
        probe,
        console: args.console,
        limits: args.app_limits(),
    })
}
