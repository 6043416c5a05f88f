//! What the probe costs a service, and how soon it shows a stalled worker; figures
//! are printed, not asserted.
//!
//! ```sh
//! cargo bench --bench probe_cost                   # everything (~6 minutes)
//! cargo bench --bench probe_cost -- fixed          # or one of: fixed request axum inprocess churn stall instructions
//! cargo bench --bench probe_cost -- fixed --quick  # shorter windows and fewer rounds
//! ```
//!
//! - `fixed`: idle servers for 60 s (10 s quick), each thread's CPU and times
//!   scheduled (`/proc/PID/task/*/schedstat`), grouped by thread name: the node demo
//!   with and without its probe, the multi-thread axum service (two workers) bare,
//!   probed and with console-subscriber; the probed ones once with no reader and once
//!   with a telemetry reader attached.
//! - `request`: the request wrapper around a trivial tower service, and the
//!   runtime hooks around a spawned trivial task, bare and probed in alternating
//!   rounds of 100,000 to 200,000 (30 rounds, 6 quick).
//! - `axum`: server CPU per `/hello` of the axum service, bare vs probed vs
//!   console-subscriber, in alternating 0.5 s slices (`SLICE_MS`), the order
//!   shuffled every round (24 rounds, 6 quick; `AA=1` adds a second bare service),
//!   each against bare as a ratio of totals with its 95% interval (rounds drawn
//!   again with replacement).
//! - `inprocess`: the probe's per-request work switched on and off every 50 ms inside
//!   one process of the same service (`--switch`), 1,000 rounds (100 quick), each
//!   mode against bare with its 95% interval; an A/A pair gives the method's bias
//!   (see `probe_cost/inprocess.rs`).
//! - `churn`: RSS of the same service while every request spawns a task, at up to
//!   50,000 req/s for 15 s (5 s quick), one setup after the other.
//! - `stall`: a worker of the probed service held 300 ms: from the handler's start to
//!   the first telemetry line that shows the stall (20 trials, 5 quick).
//! - `instructions`: the instructions the service executes per `/hello` in each
//!   setup, counted under valgrind's callgrind (no timing noise; see
//!   `probe_cost/instructions.rs`); skipped without valgrind.
//!
//! The service is `examples/bench_service.rs`, run as a separate process: this
//! program starts itself again as `probe_cost serve --probe|--bare|--console|--switch`.
//! `probe_cost load ADDR SECS` runs the closed-loop `/hello` load alone (at most
//! 600 s), to profile a server by hand.
//! Environment: `ROUNDS` and `PROBE_ARGS` (axum: the probed service's flags, e.g.
//! `"--probe --lag-ms 10"`, or `--hooks` or `--layer` for one part of the probe),
//! `RATE` and `SECS` (churn), `TRIALS` (stall), `WINDOW` (fixed, seconds).

mod common;
#[path = "probe_cost/inprocess.rs"]
mod inprocess;
#[path = "probe_cost/instructions.rs"]
mod instructions;
#[allow(dead_code)]
#[path = "../examples/bench_service.rs"]
mod service;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Hello, builder, current_thread, pin_to_cpu, read_response, rss_mb, thread_cpu};
use loopscope::client::http::{self, TelemetryStream};
use loopscope::protocol::AddressLine;
use service::monotonic_ns;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A server process started by the bench; killed (by its own pid) when dropped.
struct Server {
    label: String,
    child: Child,
    app: String,
    telemetry: String,
    pid: u32,
}

impl Server {
    fn start(label: &str, mut cmd: Command, cpu: Option<usize>) -> Server {
        if let Some(cpu) = cpu {
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || pin_to_cpu(cpu));
            }
        }
        // Piped: `--switch` takes its modes there; the others never read it.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let a: AddressLine = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{label}: address line {line:?}: {e}"));
        Server {
            label: label.into(),
            child,
            app: a.app,
            telemetry: a.telemetry.unwrap_or_default(),
            pid: a.pid,
        }
    }

    /// The axum service of `examples/bench_service.rs` in `setup` (`--probe`,
    /// `--bare`, `--console`, and `--lag-ms N` after `--probe`): this program,
    /// started again.
    fn service(label: &str, setup: &str, cpu: Option<usize>) -> Server {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("serve").args(setup.split_whitespace());
        Self::start(label, cmd, cpu)
    }

    /// The node demo (one `current_thread` loop), with `extra` flags.
    fn node(label: &str, extra: &[&str], cpu: Option<usize>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopscope"));
        cmd.args([
            "demo",
            "--model",
            "node",
            "--port",
            "0",
            "--telemetry-port",
            "0",
        ]);
        cmd.args(extra);
        Self::start(label, cmd, cpu)
    }

    fn threads(&self) -> Vec<ThreadStat> {
        threads(self.pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The calling thread's CPUs.
fn affinity() -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        set
    }
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// One thread's `schedstat`: time on a CPU and how many times it was scheduled.
#[derive(Clone, Debug)]
struct ThreadStat {
    tid: u32,
    class: &'static str,
    run_ns: u64,
    slices: u64,
}

/// Every thread of `pid`, with its class (see [`class`]).
fn threads(pid: u32) -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let mut f = stat.split_whitespace();
            let run_ns = f.next()?.parse().ok()?;
            let slices = f.nth(1)?.parse().ok()?;
            Some(ThreadStat {
                tid,
                class: class(comm.trim(), tid == pid),
                run_ns,
                slices,
            })
        })
        .collect()
}

/// What a thread is, by its name (`comm`, cut at 15 bytes).
fn class(comm: &str, main: bool) -> &'static str {
    match comm {
        _ if main => "main",
        "loopscope-sampl" => "probe sampler",
        "loopscope-telem" => "probe telemetry",
        "tokio-runtime-w" | "tokio-rt-worker" => "runtime workers",
        "loop" => "demo loop",
        "console_subscri" => "console-subscriber",
        c if c.starts_with("pool-") => "demo pool",
        _ => "other",
    }
}

/// CPU ns and times scheduled per class between two readings; threads that
/// appeared in between count from 0.
fn delta(before: &[ThreadStat], after: &[ThreadStat]) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out = BTreeMap::new();
    for t in after {
        let (run0, sl0) = before
            .iter()
            .find(|b| b.tid == t.tid)
            .map_or((0, 0), |b| (b.run_ns, b.slices));
        let e = out.entry(t.class).or_insert((0, 0));
        e.0 += t.run_ns.saturating_sub(run0);
        e.1 += t.slices.saturating_sub(sl0);
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `p`-quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// What to send: `GET path` on keep-alive connections, closed loop.
struct Plan {
    path: &'static str,
    conns: usize,
    /// Stop after this long...
    secs: f64,
    /// ...or this many requests, whichever comes first.
    max: u64,
    /// At most this many requests a second in all, if set.
    rate: Option<f64>,
    /// Set to stop early.
    stop: Arc<AtomicBool>,
    /// Answers so far, `(200, other)`: read while the load runs. A plan is driven
    /// once.
    counted: Arc<(AtomicU64, AtomicU64)>,
}

impl Plan {
    fn closed(path: &'static str, secs: f64) -> Plan {
        Plan {
            path,
            conns: 32,
            secs,
            // Far above what this machine answers (~150k/s), so time ends it.
            max: (secs * 1_000_000.0) as u64,
            rate: None,
            stop: Arc::new(AtomicBool::new(false)),
            counted: Arc::default(),
        }
    }
}

/// Answers received: `(ok, not 200)`.
#[derive(Clone, Copy, Default)]
struct Answered {
    ok: u64,
    bad: u64,
}

/// Load of `plan` against `addr`. Raw HTTP/1.1, so the client costs as little as it
/// can; each connection stops at its share of `max`, at `secs`, or when `stop` is set.
async fn drive(addr: &str, plan: &Plan) -> Answered {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(plan.secs);
    let per_conn = plan.max.div_ceil(plan.conns as u64);
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.conns as f64 / r));
    let counted = Arc::clone(&plan.counted);
    let mut tasks = Vec::new();
    for c in 0..plan.conns {
        let addr = addr.to_string();
        let path = plan.path;
        let stop = Arc::clone(&plan.stop);
        let counted = Arc::clone(&counted);
        // Connections start spread over one interval.
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / plan.conns as f64));
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let mut buf = vec![0u8; 4096];
            for n in 0..per_conn {
                if Instant::now() >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(i) = interval {
                    let due = start + offset + i.mul_f64(n as f64);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                s.write_all(req.as_bytes()).await.unwrap();
                let ok = read_response(&mut s, &mut buf).await;
                let which = if ok { &counted.0 } else { &counted.1 };
                which.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Answered {
        ok: counted.0.load(Ordering::Relaxed),
        bad: counted.1.load(Ordering::Relaxed),
    }
}

/// Idle servers side by side: each thread class's CPU and wake-ups.
fn fixed(quick: bool) {
    let window: f64 = std::env::var("WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10.0 } else { 60.0 });
    println!("## fixed cost: idle servers, {window} s, CPU per thread class");
    println!("(ms of CPU per s of wall time; wake-ups = times scheduled per s, from schedstat)");
    println!("load average before: {}", load_average());
    let servers = [
        Server::node("node demo, --no-telemetry", &["--no-telemetry"], None),
        Server::node("node demo, probe, no reader", &[], None),
        Server::node("node demo, probe, 1 reader", &[], None),
        Server::node(
            "node demo, probe, lag timer 10 ms",
            &["--lag-resolution-ms", "10"],
            None,
        ),
        Server::service("axum 2 workers, bare", "--bare", None),
        Server::service("axum 2 workers, probe, no reader", "--probe", None),
        Server::service("axum 2 workers, probe, 1 reader", "--probe", None),
        Server::service(
            "axum 2 workers, probe, lag timer 10 ms",
            "--probe --lag-ms 10",
            None,
        ),
        Server::service("axum 2 workers, console-subscriber", "--console", None),
    ];
    // Which are which, by index above.
    const READERS: [usize; 2] = [2, 6];
    const CONSOLE: usize = 8;
    let warm = Duration::from_secs(3);
    let total = warm + Duration::from_secs_f64(window) + Duration::from_secs(2);
    // The readers: one telemetry stream each, bounded by time; they add up the task
    // polls the probe counted on each worker.
    let polls: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let counting = Arc::new(AtomicBool::new(false));
    let reader = {
        let addrs = READERS.map(|i| servers[i].telemetry.clone());
        let (polls, counting) = (Arc::clone(&polls), Arc::clone(&counting));
        std::thread::spawn(move || {
            current_thread().block_on(async move {
                let client = http::client();
                for (i, addr) in addrs.into_iter().enumerate() {
                    let (client, polls, counting) =
                        (client.clone(), Arc::clone(&polls), Arc::clone(&counting));
                    tokio::spawn(async move {
                        let mut tel = TelemetryStream::connect(&client, &addr).await.unwrap();
                        while let Ok(Some(s)) = tel.next().await {
                            if counting.load(Ordering::Relaxed) {
                                let p: u64 = s
                                    .workers
                                    .iter()
                                    .filter_map(|w| w.runtime.as_ref().map(|r| r.polls))
                                    .sum();
                                polls[i].fetch_add(p, Ordering::Relaxed);
                            }
                        }
                    });
                }
                tokio::time::sleep(total).await;
            })
        })
    };
    std::thread::sleep(warm);
    let before: Vec<_> = servers.iter().map(Server::threads).collect();
    let t0 = Instant::now();
    counting.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(window));
    counting.store(false, Ordering::Relaxed);
    let after: Vec<_> = servers.iter().map(Server::threads).collect();
    let dt = t0.elapsed().as_secs_f64();
    println!("load average after: {}", load_average());
    let mut totals = Vec::new();
    let mut by_class = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let d = delta(&before[i], &after[i]);
        let cpu: u64 = d.values().map(|v| v.0).sum();
        let ms_s = cpu as f64 / 1e6 / dt;
        println!(
            "{:<36} total {ms_s:7.3} ms/s ({:.3}% of a core)",
            s.label,
            ms_s / 10.0
        );
        for (class, (ns, slices)) in &d {
            println!(
                "    {class:<20} {:7.3} ms/s, {:7.1} wake-ups/s",
                *ns as f64 / 1e6 / dt,
                *slices as f64 / dt
            );
        }
        totals.push(ms_s);
        by_class.push(d);
    }
    let class_ms = |i: usize, c: &str| by_class[i].get(c).map_or(0.0, |v| v.0 as f64 / 1e6 / dt);
    let class_wakes = |i: usize, c: &str| by_class[i].get(c).map_or(0.0, |v| v.1 as f64 / dt);
    for (bare, probed, runtime) in [(0, 1..4, "demo loop"), (4, 5..8, "runtime workers")] {
        for p in probed {
            let extra = totals[p] - totals[bare];
            println!(
                "{}: the probe costs {extra:.3} ms/s ({:.3}% of a core): sampler {:.3}, telemetry {:.3}, {runtime} {:+.3} ms/s ({:+.0} wake-ups/s)",
                servers[p].label,
                extra / 10.0,
                class_ms(p, "probe sampler"),
                class_ms(p, "probe telemetry"),
                class_ms(p, runtime) - class_ms(bare, runtime),
                class_wakes(p, runtime) - class_wakes(bare, runtime),
            );
        }
    }
    let extra = totals[CONSOLE] - totals[4];
    println!(
        "axum: console-subscriber costs {extra:.3} ms/s ({:.3}% of a core) idle",
        extra / 10.0
    );
    // A multi-thread runtime's entries count each worker's task polls.
    println!(
        "{}: task polls counted by the probe: {:.0}/s",
        servers[READERS[1]].label,
        polls[1].load(Ordering::Relaxed) as f64 / dt
    );
    drop(servers);
    reader.join().unwrap();
}

/// The axum service's CPU per `/hello`: bare, probed, console-subscriber (and,
/// with `AA=1`, a second bare service: the method's own bias).
fn axum_cpu(quick: bool) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let rounds = env("ROUNDS").map_or(if quick { 6 } else { 24 }, |r| r as usize);
    let slice = env("SLICE_MS").unwrap_or(500.0) / 1000.0;
    println!("## axum /hello, 2 workers: server CPU per request, bare vs probe vs console");
    println!("(the servers run at once, pinned to CPU 1, the load generator to CPU 0;");
    println!(" 32 keep-alive connections load one server for {slice} s, then the next, in an");
    println!(" order shuffled every round; CPU from /proc/PID/task/*/schedstat)");
    println!("load average before: {}", load_average());
    let cpus = affinity();
    pin_to_cpu(0).expect("pin the load generator");
    let rt = current_thread();
    // PROBE_ARGS: the probed service's flags instead of `--probe`, e.g.
    // "--probe --lag-ms 10", or "--hooks" or "--layer" for one part of the probe.
    let probe = std::env::var("PROBE_ARGS").unwrap_or_else(|_| "--probe".into());
    println!("(probe: {probe})");
    let mut servers = vec![
        Server::service("bare", "--bare", Some(1)),
        Server::service("probe", &probe, Some(1)),
        Server::service("console", "--console", Some(1)),
    ];
    if std::env::var("AA").as_deref() == Ok("1") {
        servers.push(Server::service("bare A/A", "--bare", Some(1)));
    }
    let n = servers.len();
    for s in &servers {
        rt.block_on(drive(&s.app, &Plan::closed("/hello", 1.0)));
    }
    // Per server, per round: (CPU ns, requests answered).
    let mut measures: Vec<Vec<(f64, u64)>> = vec![Vec::new(); n];
    let mut classes: Vec<BTreeMap<&'static str, (u64, u64)>> = vec![BTreeMap::new(); n];
    let mut bad = 0;
    let mut order: Vec<usize> = (0..n).collect();
    let mut seed = SHUFFLE_SEED;
    for _ in 0..rounds {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let s = &servers[i];
            let before = s.threads();
            let a = rt.block_on(drive(&s.app, &Plan::closed("/hello", slice)));
            let d = delta(&before, &s.threads());
            let cpu = d.values().map(|v| v.0).sum::<u64>() as f64;
            for (class, (ns, slices)) in d {
                let e = classes[i].entry(class).or_default();
                e.0 += ns;
                e.1 += slices;
            }
            bad += a.bad;
            measures[i].push((cpu, a.ok));
        }
    }
    println!("load average after: {}", load_average());
    for (i, s) in servers.iter().enumerate() {
        let p: Vec<f64> = measures[i].iter().map(|(c, n)| c / *n as f64).collect();
        let answered: u64 = measures[i].iter().map(|x| x.1).sum();
        println!(
            "{:<8} {} requests ({:.0}/s while loaded), median {:.3} µs CPU each, interquartile {:.3}..{:.3}, totals {:.3}",
            s.label,
            answered,
            answered as f64 / (rounds as f64 * slice),
            quantile(&p, 0.5) / 1000.0,
            quantile(&p, 0.25) / 1000.0,
            quantile(&p, 0.75) / 1000.0,
            totals(&measures[i]) / 1000.0,
        );
        println!(
            "         by thread, µs per request (wake-ups per 1,000 requests): {}",
            classes[i]
                .iter()
                .map(|(c, (ns, slices))| format!(
                    "{c} {:.3} ({:.1})",
                    *ns as f64 / answered as f64 / 1000.0,
                    *slices as f64 * 1000.0 / answered as f64
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for i in 1..n {
        println!("{}", against(&servers[i].label, &measures[i], &measures[0]));
    }
    if bad > 0 {
        println!("(answers other than 200: {bad})");
    }
    drop(servers);
    set_affinity(&cpus);
}

/// CPU ns per request over all rounds of `m` (per round: CPU ns, requests).
fn totals(m: &[(f64, u64)]) -> f64 {
    m.iter().map(|x| x.0).sum::<f64>() / m.iter().map(|x| x.1).sum::<u64>() as f64
}

/// `label` against bare, round by round (per round: CPU ns, requests): the ratio of
/// totals with its 95% interval, the median of the rounds' ratios and their
/// quartiles, as a line to print.
fn against(label: &str, this: &[(f64, u64)], base: &[(f64, u64)]) -> String {
    let ratios: Vec<f64> = this
        .iter()
        .zip(base)
        .map(|(a, b)| (a.0 / a.1 as f64) / (b.0 / b.1 as f64))
        .collect();
    let pct = |r: f64| (r - 1.0) * 100.0;
    let (low, high) = bootstrap(this, base);
    format!(
        "{label} / bare over {} rounds: ratio of totals {:+.2}% (95% interval {:+.2}% .. {:+.2}%); median {:+.2}% (interquartile {:+.2}% .. {:+.2}%)",
        ratios.len(),
        pct(totals(this) / totals(base)),
        pct(low),
        pct(high),
        pct(quantile(&ratios, 0.5)),
        pct(quantile(&ratios, 0.25)),
        pct(quantile(&ratios, 0.75)),
    )
}

/// The first state of [`shuffle`]'s generator.
const SHUFFLE_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// `order` shuffled (Fisher-Yates), so that no entry goes first more often.
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        order.swap(i, below(seed, i + 1));
    }
}

/// A number below `k` from a xorshift generator whose state is `seed` (not 0):
/// enough to shuffle rounds and to draw them again, without a crate for it.
fn below(seed: &mut u64, k: usize) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % k as u64) as usize
}

/// The 95% interval of the ratio of totals of `this` to `base` (per round: CPU ns,
/// requests), the rounds drawn again with replacement 2,000 times.
fn bootstrap(this: &[(f64, u64)], base: &[(f64, u64)]) -> (f64, f64) {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let k = this.len().min(base.len());
    let mut ratios: Vec<f64> = (0..2000)
        .map(|_| {
            let (mut a, mut b) = ((0.0, 0u64), (0.0, 0u64));
            for _ in 0..k {
                let r = below(&mut seed, k);
                a = (a.0 + this[r].0, a.1 + this[r].1);
                b = (b.0 + base[r].0, b.1 + base[r].1);
            }
            (a.0 / a.1 as f64) / (b.0 / b.1 as f64)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[49], ratios[1949])
}

/// A load of `plan` against `s`, its RSS read every second; the load stops early
/// when RSS passes `cap_mb`. Returns the answers, the time taken, the samples and
/// when it was stopped, if it was.
fn watched(
    rt: &tokio::runtime::Runtime,
    s: &Server,
    plan: Plan,
    cap_mb: f64,
) -> (Answered, f64, Vec<f64>, Option<f64>) {
    let stop = Arc::clone(&plan.stop);
    let (app, pid) = (s.app.clone(), s.pid);
    rt.block_on(async move {
        let t0 = Instant::now();
        let load = tokio::spawn(async move { drive(&app, &plan).await });
        let mut samples = Vec::new();
        let mut stopped = None;
        let mut next = t0;
        while !load.is_finished() {
            next += Duration::from_secs(1);
            while Instant::now() < next && !load.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = rss_mb(pid);
            samples.push(r);
            if r > cap_mb && stopped.is_none() {
                stop.store(true, Ordering::Relaxed);
                stopped = Some(t0.elapsed().as_secs_f64());
            }
        }
        let answered = load.await.unwrap();
        (answered, t0.elapsed().as_secs_f64(), samples, stopped)
    })
}

/// RSS of the service while every request spawns one task.
fn churn(quick: bool) {
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rate = env("RATE", 50_000.0);
    let secs = env("SECS", if quick { 5.0 } else { 15.0 });
    let warm = 3.0;
    let cap_mb = 4096.0;
    println!(
        "## task churn: /spawn (one task spawned and awaited per request), up to {rate:.0} req/s for {secs} s after {warm} s of warm-up"
    );
    println!("(RSS from /proc/PID/status every second; a run stops when RSS passes {cap_mb} MB)");
    println!("load average before: {}", load_average());
    let rt = current_thread();
    let plan = |secs: f64| Plan {
        path: "/spawn",
        conns: 32,
        secs,
        max: (rate * secs) as u64,
        rate: Some(rate),
        stop: Arc::new(AtomicBool::new(false)),
        counted: Arc::default(),
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (label, setup) in [
        ("bare", "--bare"),
        ("probe", "--probe"),
        ("console", "--console"),
    ] {
        let s = Server::service(label, setup, None);
        let start = rss_mb(s.pid);
        let (w, w_took, w_samples, w_stopped) = watched(&rt, &s, plan(warm), cap_mb);
        println!(
            "{label:<8} started at {start:.1} MB; warm-up {:.0} req/s, RSS each second: {}",
            w.ok as f64 / w_took,
            list(&w_samples)
        );
        if let Some(t) = w_stopped {
            println!("         stopped in the warm-up at {t:.1} s, past {cap_mb} MB");
            continue;
        }
        let base = rss_mb(s.pid);
        let (answered, took, samples, stopped) = watched(&rt, &s, plan(secs), cap_mb);
        let end = rss_mb(s.pid);
        std::thread::sleep(Duration::from_secs(2));
        let later = rss_mb(s.pid);
        let max = samples.iter().cloned().fold(end, f64::max);
        println!(
            "         {:.0} req/s reached ({} ok, {} not 200); RSS after warm-up {base:.1} MB, end {end:.1} MB, max {max:.1} MB, growth {:+.1} MB; 2 s later {later:.1} MB{}",
            answered.ok as f64 / took,
            answered.ok,
            answered.bad,
            end - base,
            stopped.map_or(String::new(), |t| format!(
                "; stopped at {t:.1} s, past {cap_mb} MB"
            )),
        );
        println!("         RSS each second: {}", list(&samples));
    }
    println!("load average after: {}", load_average());
}

/// From a worker's block to the first telemetry line showing it stalled.
fn stall(quick: bool) {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5 } else { 20 });
    println!("## stall visibility on a multi-thread worker: /block?ms=300, {trials} trials");
    println!("(the handler's start, CLOCK_MONOTONIC in the service, to the arrival of the first");
    println!(" /telemetry line with a worker's stalled_for_ms > 0, CLOCK_MONOTONIC in the reader)");
    println!("load average before: {}", load_average());
    let s = Server::service("probe", "--probe", None);
    let rt = current_thread();
    rt.block_on(async {
        let client = http::client();
        let mut tel = TelemetryStream::connect(&client, &s.telemetry)
            .await
            .unwrap();
        tel.next().await.unwrap();
        let (mut from_start, mut from_send, mut shown) = (Vec::new(), Vec::new(), Vec::new());
        let mut named = 0;
        for _ in 0..trials {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Drain what queued up while sleeping.
            while let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_millis(1), tel.next()).await
            {}
            let (c, app) = (client.clone(), s.app.clone());
            let sent = monotonic_ns();
            let req = tokio::spawn(async move { http::get(&c, &app, "/block?ms=300").await });
            let deadline = Instant::now() + Duration::from_secs(2);
            let seen = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Ok(Some(snap))) = tokio::time::timeout(left, tel.next()).await else {
                    break None;
                };
                if let Some(w) = snap.workers.iter().find(|w| w.stalled_for_ms > 0.0) {
                    if w.stalled_in.as_deref() == Some("GET /block?ms=300") {
                        named += 1;
                    }
                    break Some((monotonic_ns(), w.stalled_for_ms));
                }
            };
            let body = req.await.unwrap().unwrap().text();
            let started: u64 = body.trim().parse().unwrap();
            match seen {
                Some((at, ms)) => {
                    from_start.push(at.saturating_sub(started) as f64 / 1e6);
                    from_send.push(at.saturating_sub(sent) as f64 / 1e6);
                    shown.push(ms);
                }
                None => println!("a block was not seen within 2 s"),
            }
        }
        let summary = |v: &[f64]| {
            format!(
                "median {:.1} ms, p90 {:.1} ms, min {:.1}, max {:.1}",
                quantile(v, 0.5),
                quantile(v, 0.9),
                sorted(v)[0],
                sorted(v)[v.len() - 1]
            )
        };
        println!(
            "handler start → line: {} ({} of {trials} seen)",
            summary(&from_start),
            from_start.len()
        );
        println!("request sent  → line: {}", summary(&from_send));
        println!(
            "stalled_for_ms in that line: {}; the request named in {named} of them",
            summary(&shown)
        );
    });
    println!("load average after: {}", load_average());
}

/// ns per request of `n` requests through `svc` on `rt`, the thread's CPU time.
fn serve_ns<S>(rt: &tokio::runtime::Runtime, mut svc: S, n: u64) -> f64
where
    S: tower_service::Service<
            hyper::http::Request<()>,
            Response = &'static str,
            Error = std::convert::Infallible,
        >,
{
    rt.block_on(async move {
        let start = thread_cpu().as_nanos() as u64;
        for _ in 0..n {
            let req = hyper::http::Request::get("/hello").body(()).unwrap();
            black_box(svc.call(req).await.unwrap());
        }
        (thread_cpu().as_nanos() as u64 - start) as f64 / n as f64
    })
}

/// [`serve_ns`] inside a task that yields after each request, so that each request
/// is polled in a task poll of its own, as a server's connection task polls one
/// request per wake-up.
fn serve_in_task_ns<S>(rt: &tokio::runtime::Runtime, svc: S, n: u64) -> f64
where
    S: tower_service::Service<
            hyper::http::Request<()>,
            Response = &'static str,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send,
{
    rt.block_on(async move {
        tokio::spawn(async move {
            let mut svc = svc;
            let start = thread_cpu().as_nanos() as u64;
            for _ in 0..n {
                let req = hyper::http::Request::get("/hello").body(()).unwrap();
                black_box(svc.call(req).await.unwrap());
                tokio::task::yield_now().await;
            }
            (thread_cpu().as_nanos() as u64 - start) as f64 / n as f64
        })
        .await
        .unwrap()
    })
}

/// ns per spawn-and-await of a trivial task, `n` times: on a current-thread
/// runtime the thread's CPU time; on a multi-thread one, wall time inside the task
/// that spawns (it may move between workers).
fn spawn_ns(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let multi = rt.handle().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
    if multi {
        rt.block_on(async move {
            tokio::spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(tokio::spawn(async { black_box(1u64) }).await.unwrap());
                }
                start.elapsed().as_nanos() as f64 / n as f64
            })
            .await
            .unwrap()
        })
    } else {
        let start = thread_cpu().as_nanos() as u64;
        rt.block_on(async move {
            for _ in 0..n {
                black_box(tokio::spawn(async { black_box(1u64) }).await.unwrap());
            }
        });
        (thread_cpu().as_nanos() as u64 - start) as f64 / n as f64
    }
}

/// The request wrapper and the runtime hooks in isolation, bare and probed in
/// alternating rounds (the criterion bench `probe_hooks` measures the same things
/// one after the other).
fn request(quick: bool) {
    use loopscope::probe::{LoopProbe, ProbeConfig, ProbeLayer};
    use tower_layer::Layer;
    let rounds: usize = if quick { 6 } else { 30 };
    println!("## per request and per task poll, bare vs probed, {rounds} alternating rounds");
    println!("(ns per item: the thread's CPU time, except multi-thread spawns: wall time)");
    println!("load average before: {}", load_average());
    let current = current_thread();
    let probe = LoopProbe::new(0, ProbeConfig::default());
    let layered = ProbeLayer::new(probe.clone()).layer(Hello);
    let hooked_probe = LoopProbe::new(0, ProbeConfig::default());
    let hooked_layered = ProbeLayer::new(hooked_probe.clone()).layer(Hello);
    // A runtime of `workers` (current_thread without), with `probe`'s hooks if any.
    let build = |workers: Option<usize>, probe: Option<&LoopProbe>| {
        let mut b = builder(workers);
        if let Some(p) = probe {
            p.install_hooks(&mut b);
        }
        b.build().unwrap()
    };
    let hooks_only = || LoopProbe::new(0, ProbeConfig::default());
    let (ct_bare, ct_hooks) = (build(None, None), build(None, Some(&hooks_only())));
    let ct_probed = build(None, Some(&hooked_probe));
    // One worker, so that the task polls stay on the thread whose CPU is read.
    let mt_probe = LoopProbe::new(0, ProbeConfig::default());
    let mt_layered = ProbeLayer::new(mt_probe.clone()).layer(Hello);
    let (mt1_bare, mt1_probed) = (build(Some(1), None), build(Some(1), Some(&mt_probe)));
    let (mt_bare, mt_hooks) = (build(Some(2), None), build(Some(2), Some(&hooks_only())));
    type Pair<'a> = (
        &'a str,
        Box<dyn Fn() -> f64 + 'a>,
        Box<dyn Fn() -> f64 + 'a>,
    );
    let pairs: Vec<Pair> = vec![
        (
            "GET /hello through a tower service: bare vs ProbeLayer",
            Box::new(|| serve_ns(&current, Hello, 200_000)),
            Box::new(|| serve_ns(&current, layered.clone(), 200_000)),
        ),
        (
            "GET /hello, a task poll each, current_thread: bare vs the probe's hooks and ProbeLayer",
            Box::new(|| serve_in_task_ns(&ct_bare, Hello, 200_000)),
            Box::new(|| serve_in_task_ns(&ct_probed, hooked_layered.clone(), 200_000)),
        ),
        (
            "GET /hello, a task poll each, multi_thread 1 worker: bare vs the probe's hooks and ProbeLayer",
            Box::new(|| serve_in_task_ns(&mt1_bare, Hello, 200_000)),
            Box::new(|| serve_in_task_ns(&mt1_probed, mt_layered.clone(), 200_000)),
        ),
        (
            "spawn and await a task, current_thread: bare vs install_hooks (1 poll each)",
            Box::new(|| spawn_ns(&ct_bare, 100_000)),
            Box::new(|| spawn_ns(&ct_hooks, 100_000)),
        ),
        (
            "spawn and await a task, multi_thread 2 workers: bare vs install_hooks (2 polls each)",
            Box::new(|| spawn_ns(&mt_bare, 100_000)),
            Box::new(|| spawn_ns(&mt_hooks, 100_000)),
        ),
    ];
    for (name, bare, probed) in &pairs {
        let (mut b, mut p, mut d) = (Vec::new(), Vec::new(), Vec::new());
        bare();
        probed();
        for round in 0..rounds {
            let (x, y) = if round % 2 == 0 {
                let x = bare();
                (x, probed())
            } else {
                let y = probed();
                (bare(), y)
            };
            b.push(x);
            p.push(y);
            d.push(y - x);
        }
        println!(
            "{name}: {:.1} ns vs {:.1} ns; difference median {:+.1} ns, interquartile {:+.1}..{:+.1}",
            quantile(&b, 0.5),
            quantile(&p, 0.5),
            quantile(&d, 0.5),
            quantile(&d, 0.25),
            quantile(&d, 0.75)
        );
    }
    println!("load average after: {}", load_average());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let (setup, lag) = service::parse(&args[1..]).expect(
            "serve --probe [--lag-ms N]|--probe-routes|--console|--bare|--hooks|--layer|--switch",
        );
        if let Err(e) = service::run(setup, lag) {
            eprintln!("probe_cost serve: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `load ADDR SECS [PATH]`: the closed-loop load alone, to profile a server by hand.
    if args.first().map(String::as_str) == Some("load") {
        let addr = args.get(1).expect("load ADDR SECS [PATH]");
        let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
        let path: &'static str = match args.get(3).map(String::as_str) {
            Some("/spawn") => "/spawn",
            _ => "/hello",
        };
        let a = current_thread().block_on(drive(addr, &Plan::closed(path, secs.min(600.0))));
        println!(
            "{} ok, {} not 200, {:.0}/s",
            a.ok,
            a.bad,
            a.ok as f64 / secs
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let which: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| *w == name);
    if wants("fixed") {
        fixed(quick);
    }
    if wants("request") {
        request(quick);
    }
    if wants("axum") {
        axum_cpu(quick);
    }
    if wants("inprocess") {
        inprocess::run(quick);
    }
    if wants("churn") {
        churn(quick);
    }
    if wants("stall") {
        stall(quick);
    }
    if wants("instructions") {
        instructions::run(quick);
    }
}
