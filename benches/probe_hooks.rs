//! What the probe adds per request and per task poll, in isolation (criterion).
//!
//! ```sh
//! cargo bench --bench probe_hooks              # both groups, ~1 minute
//! cargo bench --bench probe_hooks -- request   # the request wrapper only
//! cargo bench --bench probe_hooks -- task_poll # the runtime's hooks only
//! ```
//!
//! - `request`: a trivial tower service answering `GET /hello`, called and its
//!   future awaited on a `current_thread` runtime, bare and behind the probe's
//!   [`ProbeLayer`]; and a ready future bare and wrapped by [`LoopProbe::instrument`].
//!   Every iteration builds its request (`Request::get`) in both, so the difference
//!   is the layer's: the target copied to the slot's ring, the slot look-up, the
//!   counters, the latency bucket and the clock reads: three when the request times
//!   its own poll (`service_probe_layer`, outside any task), none when it is polled
//!   in a task poll of a runtime with the probe's poll hooks, as a server's
//!   connection task polls it: `service_probe_in_hooked_task` (one task poll per
//!   request, the hooks' two clock reads included) against `service_bare_in_task`.
//! - `task_poll_current_thread`, `task_poll_multi_thread` (two workers): a trivial
//!   task spawned and awaited, `iters` times, on a runtime built bare, with hooks
//!   that only count their calls (the calls per iteration are printed), or with
//!   [`LoopProbe::install_hooks`]. The difference per iteration, divided by the hook
//!   calls per iteration, is the probe's cost per call. On `current_thread` the
//!   probe's poll hooks return at once (nothing reads their timings there), so that
//!   group measures a hook that does nothing but look at one flag.
//!
//! Times are the calling thread's CPU time, so that other processes taking the CPU
//! do not count, except on the multi-thread runtime (wall time; see `churn`).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::{Hello, builder, current_thread, thread_cpu};
use criterion::{Criterion, criterion_group, criterion_main};
use hyper::http::Request;
use loopscope::probe::{LoopProbe, ProbeConfig, ProbeLayer, RequestTag};
use tower_layer::Layer;
use tower_service::Service;

/// `iters` requests through `svc`, each awaited, on `rt`; the time they took.
fn serve<S>(rt: &tokio::runtime::Runtime, mut svc: S, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = &'static str, Error = Infallible>,
{
    rt.block_on(async move {
        let start = thread_cpu();
        for _ in 0..iters {
            let req = Request::get("/hello").body(()).unwrap();
            black_box(svc.call(req).await.unwrap());
        }
        thread_cpu() - start
    })
}

/// [`serve`] inside a task of `rt` that yields after each request, so that each
/// request is polled in a task poll of its own, as a server's connection task polls
/// one request per wake-up: a probe whose poll hooks are on `rt` times that poll.
fn serve_in_task<S>(rt: &tokio::runtime::Runtime, svc: S, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = &'static str, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    rt.block_on(async move {
        tokio::spawn(async move {
            let mut svc = svc;
            let start = thread_cpu();
            for _ in 0..iters {
                let req = Request::get("/hello").body(()).unwrap();
                black_box(svc.call(req).await.unwrap());
                tokio::task::yield_now().await;
            }
            thread_cpu() - start
        })
        .await
        .unwrap()
    })
}

fn request(c: &mut Criterion) {
    let rt = current_thread();
    let probe = LoopProbe::new(0, ProbeConfig::default());
    let hooked_probe = LoopProbe::new(0, ProbeConfig::default());
    let hooked = {
        let mut b = builder(None);
        hooked_probe.install_hooks(&mut b);
        b.build().unwrap()
    };
    let mut g = c.benchmark_group("request");
    g.bench_function("service_bare", |b| {
        b.iter_custom(|iters| serve(&rt, Hello, iters))
    });
    g.bench_function("service_probe_layer", |b| {
        let layered = ProbeLayer::new(probe.clone()).layer(Hello);
        b.iter_custom(|iters| serve(&rt, layered.clone(), iters))
    });
    g.bench_function("service_bare_in_task", |b| {
        b.iter_custom(|iters| serve_in_task(&rt, Hello, iters))
    });
    g.bench_function("service_probe_in_hooked_task", |b| {
        let layered = ProbeLayer::new(hooked_probe.clone()).layer(Hello);
        b.iter_custom(|iters| serve_in_task(&hooked, layered.clone(), iters))
    });
    g.bench_function("future_bare", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = thread_cpu();
                for _ in 0..iters {
                    black_box(async { black_box(1u64) }.await);
                }
                thread_cpu() - start
            })
        })
    });
    g.bench_function("future_instrumented", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = thread_cpu();
                for _ in 0..iters {
                    let tag = RequestTag::new("GET", "/hello");
                    black_box(probe.instrument(tag, async { black_box(1u64) }).await);
                }
                thread_cpu() - start
            })
        })
    });
    g.finish();
}

/// Hook calls of the runtimes built with [`Hooks::Counting`].
static POLLS: AtomicU64 = AtomicU64::new(0);
static PARKS: AtomicU64 = AtomicU64::new(0);
static UNPARKS: AtomicU64 = AtomicU64::new(0);

/// The hook calls counted so far: task polls, parks, unparks.
fn counted() -> [u64; 3] {
    [&POLLS, &PARKS, &UNPARKS].map(|c| c.load(Ordering::Relaxed))
}

/// What a runtime under test is built with.
#[derive(Clone, Copy, PartialEq)]
enum Hooks {
    /// No hooks.
    Bare,
    /// Park, unpark and poll hooks that count their calls (a relaxed atomic add):
    /// how many calls there are, and what a hook that does nearly nothing costs.
    Counting,
    /// The probe's, from [`LoopProbe::install_hooks`].
    Probe,
}

fn runtime(multi: bool, hooks: Hooks) -> tokio::runtime::Runtime {
    let mut b = builder(multi.then_some(2));
    match hooks {
        Hooks::Bare => {}
        Hooks::Counting => {
            b.on_thread_park(|| {
                PARKS.fetch_add(1, Ordering::Relaxed);
            })
            .on_thread_unpark(|| {
                UNPARKS.fetch_add(1, Ordering::Relaxed);
            })
            .on_before_task_poll(|_| {
                POLLS.fetch_add(1, Ordering::Relaxed);
            })
            .on_after_task_poll(|_| {
                black_box(());
            });
        }
        Hooks::Probe => LoopProbe::new(0, ProbeConfig::default()).install_hooks(&mut b),
    }
    b.build().unwrap()
}

/// `iters` spawn-and-await rounds on `rt`; the time they took. On a current-thread
/// runtime, the calling thread's CPU time. On a multi-thread one they run in a task
/// (the `block_on` future is not one), so that both the spawner and the spawned
/// are polled by a worker, timed on the wall clock from inside that task: the
/// spawner may move to the other worker, and the other worker's CPU (waking to look
/// for work, then parking) varies by hundreds of ns per iteration between runs.
fn churn(rt: &tokio::runtime::Runtime, multi: bool, iters: u64) -> Duration {
    if multi {
        rt.block_on(async move {
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    black_box(tokio::spawn(async { black_box(1u64) }).await.unwrap());
                }
                start.elapsed()
            })
            .await
            .unwrap()
        })
    } else {
        let start = thread_cpu();
        rt.block_on(async move {
            for _ in 0..iters {
                black_box(tokio::spawn(async { black_box(1u64) }).await.unwrap());
            }
        });
        thread_cpu() - start
    }
}

fn task_poll(c: &mut Criterion) {
    for (group, multi) in [
        ("task_poll_current_thread", false),
        ("task_poll_multi_thread", true),
    ] {
        let mut g = c.benchmark_group(group);
        for (name, hooks) in [
            ("spawn_await_bare", Hooks::Bare),
            ("spawn_await_counting_hooks", Hooks::Counting),
            ("spawn_await_probe_hooks", Hooks::Probe),
        ] {
            let rt = runtime(multi, hooks);
            let mut iters = 0u64;
            let before = counted();
            g.bench_function(name, |b| {
                b.iter_custom(|n| {
                    iters += n;
                    churn(&rt, multi, n)
                })
            });
            if hooks == Hooks::Counting {
                let after = counted();
                let per = |i: usize| (after[i] - before[i]) as f64 / iters.max(1) as f64;
                println!(
                    "{group}/{name}: per iteration {:.3} task polls, {:.4} parks, {:.4} unparks ({iters} iterations)",
                    per(0),
                    per(1),
                    per(2)
                );
            }
        }
        g.finish();
    }
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
