//! `/metrics` read as Prometheus reads it, with an independent text-format parser,
//! over loopback: the families, their types and base units, and a 500 ms block
//! between two scrapes found in the second one (in a cumulative histogram and the
//! stalled-seconds counter): the lag of the node demo's loop, of the fastapi demo's
//! workers through the supervisor's pipes, and the task polls of a multi-thread
//! runtime's workers (the probe as a library, in this process).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get as get_route;
use common::{Demo, get, runtime, serial, telemetry};
use loopscope::client::http::{self, HttpClient};
use loopscope::probe::Probe;
use prometheus_parse::{Sample, Scrape, Value};

const LAG: &str = "loopscope_loop_lag_seconds";
const POLLS: &str = "loopscope_worker_poll_duration_seconds";
const STALLED: &str = "loopscope_loop_stalled_seconds_total";

async fn scrape(client: &HttpClient, addr: &str) -> (String, Scrape) {
    let r = get(client, addr, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    (text, parsed)
}

fn samples<'a>(s: &'a Scrape, metric: &str) -> Vec<&'a Sample> {
    s.samples.iter().filter(|x| x.metric == metric).collect()
}

/// The cumulative buckets (`le`, count) of histogram `family`, per worker.
fn buckets_of(s: &Scrape, family: &str) -> HashMap<String, Vec<(f64, f64)>> {
    samples(s, family)
        .into_iter()
        .map(|x| {
            let Value::Histogram(h) = &x.value else {
                panic!("{family} is a histogram: {:?}", x.value)
            };
            let worker = x.labels.get("worker").unwrap().to_string();
            (worker, h.iter().map(|b| (b.less_than, b.count)).collect())
        })
        .collect()
}

/// One value per worker of a counter.
fn counter(s: &Scrape, metric: &str) -> HashMap<String, f64> {
    samples(s, metric)
        .into_iter()
        .map(|x| {
            let Value::Counter(v) = x.value else {
                panic!("{metric} is a counter: {:?}", x.value)
            };
            (x.labels.get("worker").unwrap().to_string(), v)
        })
        .collect()
}

/// Families, types, units and the shape of every histogram.
fn check_conventions(text: &str, s: &Scrape) {
    for (family, kind) in [
        (LAG, "histogram"),
        (STALLED, "counter"),
        ("loopscope_cpu_seconds_total", "counter"),
        ("loopscope_loop_current_stall_seconds", "gauge"),
        ("loopscope_loop_utilization_ratio", "gauge"),
        ("loopscope_worker_up", "gauge"),
        ("loopscope_pool_queued", "gauge"),
        ("loopscope_pool_busy", "gauge"),
        ("loopscope_pool_size", "gauge"),
        ("loopscope_requests_in_flight", "gauge"),
        ("loopscope_requests_completed_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family} {kind}"
        );
        assert!(s.docs.contains_key(family), "HELP of {family}");
    }
    for x in &s.samples {
        assert!(x.metric.starts_with("loopscope_"), "{}", x.metric);
        assert!(
            !x.metric.contains("_ms") && !x.metric.contains("percent"),
            "base units: {}",
            x.metric
        );
        assert!(x.labels.get("model").is_some(), "{}", x.metric);
        if x.metric.ends_with("_total") {
            assert!(matches!(x.value, Value::Counter(v) if v >= 0.0), "{x:?}");
        }
        if x.metric.ends_with("_ratio") {
            assert!(
                matches!(x.value, Value::Gauge(v) if (0.0..=1.0).contains(&v)),
                "{x:?}"
            );
        }
    }
    let mut threads: Vec<&str> = samples(s, "loopscope_cpu_seconds_total")
        .iter()
        .map(|x| x.labels.get("thread").unwrap())
        .collect();
    threads.sort();
    threads.dedup();
    assert_eq!(threads, ["loop", "pool", "process"]);
    let buckets = buckets_of(s, LAG);
    assert!(!buckets.is_empty());
    for (worker, h) in &buckets {
        assert!(h.len() >= 13, "{h:?}");
        assert!(
            h.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{h:?}"
        );
        let (le, inf) = *h.last().unwrap();
        assert!(le.is_infinite());
        let count = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{LAG}_count{{"))
                    && l.contains(&format!("worker=\"{worker}\""))
            })
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse::<f64>().unwrap());
        assert_eq!(count, Some(inf), "+Inf bucket is the count");
    }
}

/// Scrapes until `pred` holds of a scrape (at most `within`); the last one.
async fn scrape_until(
    client: &HttpClient,
    addr: &str,
    within: Duration,
    pred: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let (_, s) = scrape(client, addr).await;
        if pred(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a 500 ms block left between `before` and `after` in histogram `family`
/// and the stalled seconds, summed over workers: samples above 0.25 s, growth of
/// each bucket of 1 s and above, of the stalled seconds.
fn block_between(family: &str, before: &Scrape, after: &Scrape) -> (f64, Vec<(f64, f64)>, f64) {
    let (b, a) = (buckets_of(before, family), buckets_of(after, family));
    let mut above_quarter = 0.0;
    let mut growth: Vec<(f64, f64)> = Vec::new();
    for (worker, h) in &a {
        let old = b.get(worker).cloned().unwrap_or_default();
        let at =
            |h: &[(f64, f64)], le: f64| h.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, n)| *n);
        let above = |h: &[(f64, f64)]| at(h, f64::INFINITY) - at(h, 0.25);
        above_quarter += above(h) - above(&old);
        for (le, n) in h.iter().filter(|(le, _)| *le >= 1.0) {
            let d = n - at(&old, *le);
            match growth.iter_mut().find(|(l, _)| l == le) {
                Some(g) => g.1 += d,
                None => growth.push((*le, d)),
            }
        }
    }
    let stalled = |s: &Scrape| counter(s, STALLED).values().sum::<f64>();
    (above_quarter, growth, stalled(after) - stalled(before))
}

/// Scrapes `tel` (whose histogram `family` has `workers` series), blocks a loop or
/// worker of `app` for 500 ms, scrapes again: the block is in the second scrape.
async fn block_between_two_scrapes(
    app: &str,
    tel: &str,
    family: &str,
    workers: usize,
) -> (String, Scrape) {
    let client = http::client();
    let first = scrape_until(&client, tel, Duration::from_secs(5), |s| {
        buckets_of(s, family).len() == workers
    })
    .await;
    let r = get(&client, app, "/block?ms=500").await;
    assert_eq!(r.status, 200);
    let second = scrape_until(&client, tel, Duration::from_secs(5), |s| {
        let (above_quarter, _, stalled) = block_between(family, &first, s);
        above_quarter >= 1.0 && stalled >= 0.4
    })
    .await;
    {
        let (above_quarter, growth, stalled) = block_between(family, &first, &second);
        assert!(above_quarter >= 1.0, "a lag sample above 0.25 s");
        assert!(
            growth.len() >= 4 && growth.iter().all(|(_, d)| *d >= 1.0),
            "every bucket from 1 s up gained: {growth:?}"
        );
        assert!(
            (0.4..3.0).contains(&stalled),
            "stalled seconds grew by {stalled}"
        );
    }
    scrape(&client, tel).await
}

fn demo_blocks_between_two_scrapes(model: &[&str]) {
    let _serial = serial();
    let demo = Demo::start(model);
    runtime().block_on(async {
        let _tel = telemetry(&demo.telemetry).await;
        let workers = if model.contains(&"fastapi") { 2 } else { 1 };
        let (text, scrape) =
            block_between_two_scrapes(&demo.app, &demo.telemetry, LAG, workers).await;
        check_conventions(&text, &scrape);
    });
}

#[test]
fn node_metrics_follow_the_conventions_and_keep_a_block_between_scrapes() {
    demo_blocks_between_two_scrapes(&["--model", "node"]);
}

#[test]
fn fastapi_workers_totals_survive_the_supervisor() {
    demo_blocks_between_two_scrapes(&["--model", "fastapi", "--workers", "2"]);
}

/// A multi-thread runtime of two workers, the probe installed as a library: a
/// poll that holds a worker for 500 ms is in its poll-duration histogram and its
/// stalled seconds; the runtime's scheduling delay is a histogram of its own.
#[test]
fn multi_thread_workers_poll_durations_keep_a_block_between_scrapes() {
    let _serial = serial();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    let probe = Probe::builder()
        .telemetry("127.0.0.1:0")
        .install(builder.enable_all())
        .expect("the probe installs");
    let rt = builder.build().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let app = listener.local_addr().unwrap().to_string();
    let tel = probe.telemetry_addr().to_string();
    let router = Router::new().route(
        "/block",
        get_route(|| async {
            std::thread::sleep(Duration::from_millis(500));
            "blocked\n"
        }),
    );
    let _serving =
        rt.spawn(async move { axum::serve(listener, router.layer(probe.layer())).await });
    runtime().block_on(async {
        let _tel = telemetry(&tel).await;
        let (text, s) = block_between_two_scrapes(&app, &tel, POLLS, 2).await;
        assert!(text.contains(&format!("\n# TYPE {POLLS} histogram\n")));
        assert!(
            !text.contains(&format!("# TYPE {LAG} ")),
            "no loop of its own"
        );
        let delay = "loopscope_runtime_scheduling_delay_seconds";
        assert!(text.contains(&format!("\n# TYPE {delay} histogram\n")));
        assert!(matches!(samples(&s, delay)[0].value, Value::Histogram(_)));
        let cpu = samples(&s, "loopscope_cpu_seconds_total");
        assert_eq!(cpu.len(), 6, "three thread classes of two workers");
    });
    rt.shutdown_background();
}
