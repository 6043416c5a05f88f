//! `instructions`: what the service executes per `/hello`, counted by valgrind's
//! callgrind rather than timed, so that no noise of the machine moves it.
//!
//! Each setup (bare, the probe with `make_service`, the probe as a layer on each
//! route, console-subscriber) is served under `valgrind --tool=callgrind` with
//! counting off; after a warm-up of the closed-loop load, counting is switched on
//! (`callgrind_control -i on`) for `SECS` seconds of load (15, 5 with `--quick`),
//! and the counts are dumped per thread. Printed per request answered: the
//! instructions of the whole process and of the runtime's worker threads (the
//! threads that ran tokio's multi-thread worker loop), and each setup against bare.
//! User space only: the kernel's share of a request (its loopback TCP) is not
//! counted, and it is the same in every setup.
//!
//! Under valgrind the service runs some 40 times slower, while the probe's
//! sampler, telemetry server and 1 ms lag timer keep their wall-clock rates: their
//! share of a request is overstated about 40-fold here (the sampler thread is
//! counted in the process's total, not in the workers'). Skipped, with a message,
//! where valgrind is not installed. With `CACHE=1` callgrind also simulates the
//! caches (one L1 of 32 KiB each for instructions and data, as here) and the
//! workers' L1 instruction-cache misses a request are printed: the server's code
//! does not fit in that cache, so each line of code a request runs is a miss, and
//! the probe's cost goes with the lines of code it runs more than with its
//! instructions. `ONLY=probe` (or a list of setups' flags,
//! comma-separated, without dashes) counts those setups and bare only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Plan, Server, current_thread, drive};

const SETUPS: [(&str, &str); 4] = [
    ("bare", "--bare"),
    ("probe (make_service)", "--probe"),
    ("probe (layer on each route)", "--probe-routes"),
    ("console-subscriber", "--console"),
];

/// Counts of one setup, per request.
struct Counted {
    requests: u64,
    process: f64,
    workers: f64,
    /// With `CACHE=1`: the workers' L1 instruction-cache misses, per request.
    workers_i1_misses: Option<f64>,
}

/// Whether `CACHE=1` asks callgrind to simulate the caches.
fn cache_sim() -> bool {
    std::env::var("CACHE").is_ok_and(|v| v == "1")
}

pub fn run(quick: bool) {
    println!("## instructions per /hello of the axum service (2 workers), under callgrind");
    if !installed() {
        println!("skipped: valgrind (with callgrind_control) is not installed");
        return;
    }
    let secs: f64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 5.0 } else { 15.0 });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-instructions");
    std::fs::create_dir_all(&dir).expect("create target/bench-instructions");
    println!("({secs} s of load counted per setup; instructions per request answered)");
    let mut rows: Vec<(&str, Counted)> = Vec::new();
    // `ONLY=bare,probe`: the setups whose flags are listed (bare always).
    let only = std::env::var("ONLY").ok();
    let wanted = |flag: &str| {
        let name = flag.trim_start_matches('-');
        name == "bare"
            || only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|w| w == name))
    };
    for (i, (label, flag)) in SETUPS.iter().enumerate() {
        if !wanted(flag) {
            continue;
        }
        let out = dir.join(format!("axum-{i}.out"));
        let c = count(label, flag, &out, secs);
        println!(
            "{label:<28} {:>8} requests  process {:>8.0}  workers {:>8.0}{}",
            c.requests,
            c.process,
            c.workers,
            c.workers_i1_misses
                .map(|m| format!("  workers' L1i misses {m:>6.1}"))
                .unwrap_or_default()
        );
        rows.push((label, c));
    }
    let (_, bare) = &rows[0];
    for (label, c) in &rows[1..] {
        println!(
            "{label:<28} / bare: process {:+.2}% ({:+.0}), workers {:+.2}% ({:+.0})",
            (c.process / bare.process - 1.0) * 100.0,
            c.process - bare.process,
            (c.workers / bare.workers - 1.0) * 100.0,
            c.workers - bare.workers,
        );
        if let (Some(m), Some(b)) = (c.workers_i1_misses, bare.workers_i1_misses) {
            println!(
                "{label:<28} / bare: workers' L1 instruction-cache misses {:+.1} a request ({:+.1}%)",
                m - b,
                (m / b - 1.0) * 100.0
            );
        }
    }
}

fn installed() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn count(label: &str, flag: &str, out: &Path, secs: f64) -> Counted {
    // Dumps of an earlier run would be counted with this one's.
    for file in files(out, "") {
        let _ = std::fs::remove_file(file);
    }
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "-q",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        if cache_sim() {
            "--cache-sim=yes"
        } else {
            "--cache-sim=no"
        },
        &format!("--callgrind-out-file={}", out.display()),
    ]);
    cmd.arg(std::env::current_exe().unwrap())
        .arg("serve")
        .arg(flag);
    let server = Server::start(label, cmd, None);
    let rt = current_thread();
    let warm = rt.block_on(drive(&server.app, &Plan::closed("/hello", 2.0)));
    assert!(warm.ok > 0, "{label}: no answer in the warm-up");
    callgrind_control(&["-i", "on"], server.pid);
    let a = rt.block_on(drive(&server.app, &Plan::closed("/hello", secs)));
    callgrind_control(&["-d"], server.pid);
    drop(server);
    assert!(
        a.ok > 0 && a.bad == 0,
        "{label}: {} ok, {} not 200",
        a.ok,
        a.bad
    );
    let (process, workers, i1) = totals(out);
    Counted {
        requests: a.ok,
        process: process as f64 / a.ok as f64,
        workers: workers as f64 / a.ok as f64,
        workers_i1_misses: cache_sim().then(|| i1 as f64 / a.ok as f64),
    }
}

fn callgrind_control(args: &[&str], pid: u32) {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run callgrind_control");
    assert!(status.success(), "callgrind_control {args:?} {pid} failed");
}

/// The files next to `out` whose names are `out`'s followed by `tail` and more.
fn files(out: &Path, tail: &str) -> Vec<PathBuf> {
    let prefix = format!("{}{tail}", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// The first dump's instructions (one file a thread): of all its threads and of
/// the worker threads; and the worker threads' L1 instruction-cache misses (0
/// unless the caches were simulated).
fn totals(out: &Path) -> (u64, u64, u64) {
    let (mut process, mut workers, mut i1) = (0, 0, 0);
    for file in files(out, ".1-") {
        let text = std::fs::read_to_string(file).expect("read a callgrind dump");
        let events: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("events:"))
            .map_or(Vec::new(), |e| e.split_whitespace().collect());
        let counts: Vec<u64> =
            text.lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .map_or(Vec::new(), |t| {
                    t.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                });
        let count = |event: &str| {
            let at = events.iter().position(|e| *e == event);
            at.and_then(|i| counts.get(i)).copied().unwrap_or(0)
        };
        process += count("Ir");
        if text.contains("multi_thread::worker::Context::run") {
            workers += count("Ir");
            i1 += count("I1mr");
        }
    }
    assert!(process > 0, "no counts in {}*", out.display());
    (process, workers, i1)
}
