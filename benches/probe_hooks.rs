//! What the probe adds per request and per task poll, in isolation (criterion).
//!
//! ```sh
//! cargo bench --bench probe_hooks              # both groups, ~1 minute
//! cargo bench --bench probe_hooks -- request   # the request wrapper only
//! cargo bench --bench probe_hooks -- task_poll # the runtime's poll hooks only
//! ```
//!
//! - `request`: a trivial tower service answering `GET /hello`, called and its
//!   future awaited on a `current_thread` runtime, bare and behind the probe's
//!   [`ProbeLayer`]; and a ready future bare and wrapped by [`LoopProbe::instrument`].
//!   Every iteration builds its request (`Request::get`) in both, so the difference
//!   is the layer's: the tag copied from the request, the slot look-up, two clock
//!   reads, the counters and the latency bucket.
//! - `task_poll`: a `multi_thread` runtime with two workers, built with
//!   [`LoopProbe::install_hooks`] or without; a task spawns a trivial task and awaits
//!   it, `iters` times. The difference per iteration, divided by the task polls per
//!   iteration (tokio's `worker_poll_count`, printed), is the hooks' cost per poll.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::http::Request;
use loopscope::probe::{LoopProbe, ProbeConfig, ProbeLayer, RequestTag};
use tower_layer::Layer;
use tower_service::Service;

/// The cheapest service there is: answers every request at once.
#[derive(Clone, Copy)]
struct Hello;

impl Service<Request<()>> for Hello {
    type Response = &'static str;
    type Error = Infallible;
    type Future = Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        black_box(&req);
        ready(Ok("hello\n"))
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `iters` requests through `svc`, each awaited, on `rt`; the time they took.
fn serve<S>(rt: &tokio::runtime::Runtime, mut svc: S, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = &'static str, Error = Infallible>,
{
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..iters {
            let req = Request::get("/hello").body(()).unwrap();
            black_box(svc.call(req).await.unwrap());
        }
        start.elapsed()
    })
}

fn request(c: &mut Criterion) {
    let rt = current_thread();
    let probe = LoopProbe::new(0, ProbeConfig::default());
    let mut g = c.benchmark_group("request");
    g.bench_function("service_bare", |b| {
        b.iter_custom(|iters| serve(&rt, Hello, iters))
    });
    g.bench_function("service_probe_layer", |b| {
        let layered = ProbeLayer::new(probe.clone()).layer(Hello);
        b.iter_custom(|iters| serve(&rt, layered.clone(), iters))
    });
    g.bench_function("future_bare", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(async { black_box(1u64) }.await);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("future_instrumented", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let tag = RequestTag::new("GET", "/hello");
                    black_box(probe.instrument(tag, async { black_box(1u64) }).await);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn multi_thread(hooks: bool) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(2).enable_all();
    if hooks {
        LoopProbe::new(0, ProbeConfig::default()).install_hooks(&mut b);
    }
    b.build().unwrap()
}

/// Task polls so far, all workers together.
fn polls(rt: &tokio::runtime::Runtime) -> u64 {
    let m = rt.metrics();
    (0..m.num_workers()).map(|w| m.worker_poll_count(w)).sum()
}

/// `iters` spawn-and-await rounds run by a task on `rt`; their time, and the task
/// polls they took.
fn churn(rt: &tokio::runtime::Runtime, iters: u64) -> (Duration, u64) {
    let before = polls(rt);
    let took = rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(tokio::spawn(async { black_box(1u64) }).await.unwrap());
            }
            start.elapsed()
        })
        .await
        .unwrap()
    });
    (took, polls(rt) - before)
}

fn task_poll(c: &mut Criterion) {
    let mut g = c.benchmark_group("task_poll");
    for (name, hooks) in [("spawn_await_bare", false), ("spawn_await_hooks", true)] {
        let rt = multi_thread(hooks);
        let (mut iters, mut polled) = (0u64, 0u64);
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let (took, p) = churn(&rt, n);
                iters += n;
                polled += p;
                took
            })
        });
        println!(
            "task_poll/{name}: {:.3} task polls per iteration ({polled} polls, {iters} iterations)",
            polled as f64 / iters.max(1) as f64
        );
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = request, task_poll
}
criterion_main!(benches);
