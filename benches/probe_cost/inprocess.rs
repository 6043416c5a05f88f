//! `inprocess`: the probe's per-request work switched on and off inside one
//! process, so that the difference between processes cannot hide it.
//!
//! Two processes of the same bare service differ by ~3% in CPU per request on this
//! machine (their memory layouts), more than the probe costs. Here one service
//! process (`bench_service --switch`, pinned to CPU 1) runs with the probe
//! installed and one closed-loop client (32 keep-alive connections, on CPU 0) loads
//! it all along. Every `SEGMENT_MS` (50) the bench switches the service, through its
//! stdin, between:
//!
//! - `probe`: every request through the probe's layer and every task poll timed by
//!   its hooks; the CPU of every thread counts, the probe's sampler and telemetry
//!   threads included;
//! - `bare`: the app unwrapped and the poll timing off; the probe's sampler and
//!   telemetry threads do not count (they run all along, so their CPU is the
//!   probe's);
//! - `A/A`: `bare` again: the method's own bias, which should read ~0.
//! - with `HOOKS=1`, also `hooks` (the poll timing on, the app unwrapped) and
//!   `skeleton` (the poll timing on, the app behind a layer that only counts
//!   requests and marks the one in poll, in thread-locals): the probe's cost split
//!   into its hooks' and its layer's, and the floor of any layer that names the
//!   request holding a worker.
//!
//! Each round runs every mode once in a shuffled order, each after `SETTLE_MS` (10)
//! for the previous mode's requests to finish. A segment's figure is the service's
//! CPU (its process CPU clock, less the probe's threads' `schedstat` in the bare
//! modes) over the requests answered in it. In both
//! modes a request goes through the switch (one atomic load and a branch) and its
//! future has the size of the probed one, so the copies of the larger future
//! (counted by `instructions`) are not in the difference; the lag timer (every 10
//! ms on a multi-thread runtime) runs in both.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use super::service::clock_ns;
use super::{
    Plan, SHUFFLE_SEED, Server, against, delta, drive, load_average, pin_to_cpu, shuffle, totals,
};

/// The modes a round runs, the first being the base.
const MODES: [&str; 3] = ["bare", "probe", "A/A"];

/// With `HOOKS=1`, a round also runs `hooks` (the poll hooks timing every task poll,
/// the app unwrapped) and `skeleton` (the same hooks, and the least a request layer
/// naming the request in poll can do: thread-local counts, see `bench_service`):
/// the probe's cost split between its hooks and its layer, and the floor of any
/// such layer.
const MODES_HOOKS: [&str; 5] = ["bare", "probe", "hooks", "skeleton", "A/A"];

/// Thread classes that are the probe's own: counted in `probe` mode only.
const PROBE_THREADS: [&str; 2] = ["probe sampler", "probe telemetry"];

pub fn run(quick: bool) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let modes: &[&str] = if env("HOOKS") == Some(1.0) {
        &MODES_HOOKS
    } else {
        &MODES
    };
    let rounds = env("ROUNDS").map_or(if quick { 100 } else { 1000 }, |r| r as usize);
    let segment = Duration::from_secs_f64(env("SEGMENT_MS").unwrap_or(50.0) / 1000.0);
    let settle = Duration::from_secs_f64(env("SETTLE_MS").unwrap_or(10.0) / 1000.0);
    println!("## axum /hello, 2 workers: the probe switched on and off inside one process");
    println!(
        "({rounds} rounds of {} in a shuffled order, {} ms each after {} ms to settle; the service on CPU 1, the client on CPU 0)",
        modes.join(", "),
        segment.as_millis(),
        settle.as_millis()
    );
    println!("load average before: {}", load_average());
    let cpus = super::affinity();
    pin_to_cpu(0).expect("pin the load generator");
    let mut server = Server::service("switch", "--switch", Some(1));
    let mut stdin = server.child.stdin.take().expect("the service's stdin");
    let mut switch = |mode: &str| {
        let line = if mode == "A/A" { "bare" } else { mode };
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("switch the service");
    };
    let clock = process_clock(server.pid);
    let rt = super::current_thread();
    let slot = (segment + settle).as_secs_f64();
    // The client's bound: every segment twice over, and a minute.
    let plan = Plan::closed("/hello", 2.0 * slot * (rounds * modes.len()) as f64 + 60.0);
    let (stop, counted) = (plan.stop.clone(), plan.counted.clone());
    let answered = || counted.0.load(std::sync::atomic::Ordering::Relaxed);
    // Per mode, per round: (CPU ns, requests answered).
    let mut measures: Vec<Vec<(f64, u64)>> = vec![Vec::new(); modes.len()];
    let mut classes: Vec<BTreeMap<&'static str, u64>> = vec![BTreeMap::new(); modes.len()];
    rt.block_on(async {
        let app = server.app.clone();
        let load = tokio::spawn(async move { drive(&app, &plan).await });
        tokio::time::sleep(Duration::from_secs(2)).await; // connected and warm
        let mut order: Vec<usize> = (0..modes.len()).collect();
        let mut seed = SHUFFLE_SEED;
        for _ in 0..rounds {
            shuffle(&mut order, &mut seed);
            for &m in &order {
                switch(modes[m]);
                tokio::time::sleep(settle).await;
                let (before, c0, n0) = (server.threads(), clock_ns(clock), answered());
                tokio::time::sleep(segment).await;
                let (c1, n1, after) = (clock_ns(clock), answered(), server.threads());
                let mut cpu = c1 - c0;
                for (class, (ns, _)) in delta(&before, &after) {
                    if PROBE_THREADS.contains(&class) {
                        *classes[m].entry(class).or_default() += ns;
                        if matches!(modes[m], "bare" | "A/A") {
                            cpu = cpu.saturating_sub(ns);
                        }
                    }
                }
                *classes[m].entry("all").or_default() += c1 - c0;
                measures[m].push((cpu as f64, n1 - n0));
            }
            if load.is_finished() {
                panic!("the client stopped before the rounds did");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Each connection stops after its request in flight: seconds at most.
        if tokio::time::timeout(Duration::from_secs(10), load)
            .await
            .is_err()
        {
            println!("(the client did not stop within 10 s of being told to)");
        }
    });
    println!("load average after: {}", load_average());
    report(modes, &measures, &classes);
    drop(server);
    super::set_affinity(&cpus);
}

/// The CPU clock of process `pid`: all its threads, the running ones' time up to
/// the moment it is read (a thread's `schedstat` lags by up to a scheduler tick
/// while it runs, as much as 8% of a segment).
fn process_clock(pid: u32) -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid clockid_t to write to.
    let err = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(err, 0, "clock_getcpuclockid({pid})");
    clock
}

fn report(modes: &[&str], measures: &[Vec<(f64, u64)>], classes: &[BTreeMap<&'static str, u64>]) {
    for (i, mode) in modes.iter().enumerate() {
        let n: u64 = measures[i].iter().map(|x| x.1).sum();
        println!(
            "{mode:<6} {n} requests, {:.3} µs CPU each (totals); by thread, ns a request: {}",
            totals(&measures[i]) / 1000.0,
            classes[i]
                .iter()
                .map(|(c, ns)| format!("{c} {:.1}", *ns as f64 / n as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for i in 1..modes.len() {
        println!("{}", against(modes[i], &measures[i], &measures[0]));
    }
}
