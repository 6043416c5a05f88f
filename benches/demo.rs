//! Benchmarks of the demo server and its probe; figures are printed, not asserted.
//!
//! `cargo bench --bench demo` runs all; `cargo bench --bench demo -- NAME` one of
//! `throughput`, `accuracy`, `stall`, `overhead`, `tui`, `loadgen`, `memory`. Results go in
//! BENCHMARKS.md. Run them on a quiet machine: a build beside them shows up as lag.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{current_thread, pin_to_cpu, read_response, rss_mb};
use loopscope::client::http::{self, TelemetryStream};
use loopscope::protocol::AddressLine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Demo {
    child: Child,
    app: String,
    telemetry: String,
    pid: u32,
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        Self::start_on(extra, None)
    }

    /// Starts the demo, pinned to `cpu` if given (its threads inherit it).
    fn start_on(extra: &[&str], cpu: Option<usize>) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopscope"));
        if let Some(cpu) = cpu {
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || pin_to_cpu(cpu));
            }
        }
        let mut child = cmd
            .args(["demo", "--port", "0", "--telemetry-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let a: AddressLine = serde_json::from_str(line.trim()).unwrap();
        Demo {
            child,
            app: a.app,
            telemetry: a.telemetry.unwrap_or_default(),
            pid: a.pid,
        }
    }

    /// Run time of the probe's own threads (sampler and telemetry server), in ns.
    fn probe_threads_ns(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        dir.flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("loopscope-"))
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Run time of all the process's threads, in ns.
    fn cpu_ns(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Closed-loop keep-alive load of `GET /hello` on `conns` connections for `secs`;
/// returns responses received. Raw HTTP/1.1, so the client costs as little as it can.
async fn hello_load(addr: &str, conns: usize, secs: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let req = format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let mut buf = vec![0u8; 4096];
            let mut n = 0u64;
            while Instant::now() < end {
                s.write_all(req.as_bytes()).await.unwrap();
                read_response(&mut s, &mut buf).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn overhead() {
    println!("## probe overhead: server CPU per /hello, telemetry on vs --no-telemetry");
    println!("(both servers run at once, pinned to CPU 1, the load generator to CPU 0;");
    println!(" load alternates between them in 0.5 s slices so drift hits both alike;");
    println!(" CPU from /proc/PID/task/*/schedstat, in ns)");
    pin_to_cpu(0).expect("pin the load generator");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let rt = current_thread();
    // ON_ARGS: extra flags for the measured server, e.g. "--lag-resolution-ms 10".
    let on_args = std::env::var("ON_ARGS").unwrap_or_default();
    let on_args: Vec<&str> = on_args.split_whitespace().collect();
    let on = Demo::start_on(&on_args, Some(1));
    let off = Demo::start_on(&["--no-telemetry"], Some(1));
    for d in [&on, &off] {
        rt.block_on(hello_load(&d.app, 32, 1.0));
    }
    let mut ratios = Vec::new();
    let (mut total_cpu, mut total_n) = ([0.0f64; 2], [0u64; 2]);
    let mut probe_threads = 0.0f64;
    for round in 0..rounds {
        let mut per_req = [0.0f64; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let d = if which == 0 { &on } else { &off };
            let cpu0 = d.cpu_ns();
            let own0 = d.probe_threads_ns();
            let n = rt.block_on(hello_load(&d.app, 32, 0.5));
            let cpu = (d.cpu_ns() - cpu0) as f64;
            probe_threads += (d.probe_threads_ns() - own0) as f64;
            per_req[which] = cpu / n as f64;
            total_cpu[which] += cpu;
            total_n[which] += n;
        }
        ratios.push(per_req[0] / per_req[1]);
    }
    let per = |i: usize| total_cpu[i] / total_n[i] as f64 / 1000.0;
    println!(
        "telemetry on: {} requests, {:.3} µs CPU each; off: {} requests, {:.3} µs each",
        total_n[0],
        per(0),
        total_n[1],
        per(1)
    );
    println!(
        "while loaded: {:.0} req/s with telemetry on, {:.0} off; the probe's own threads (sampler, telemetry) {:.1} ns per request",
        total_n[0] as f64 / (rounds as f64 * 0.5),
        total_n[1] as f64 / (rounds as f64 * 0.5),
        probe_threads / total_n[0] as f64
    );
    let m = median(&mut ratios);
    let (q1, q3) = (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]);
    println!(
        "median ratio on/off over {} alternating rounds: {m:.4} ({:+.2}%), interquartile {q1:.4}..{q3:.4}; ratio of totals {:.4}",
        ratios.len(),
        (m - 1.0) * 100.0,
        per(0) / per(1)
    );
}

fn accuracy() {
    println!("## lag accuracy: injected blocks vs reported lag max");
    let rt = current_thread();
    let demo = Demo::start(&[]);
    rt.block_on(async {
        let client = http::client();
        let mut tel = TelemetryStream::connect(&client, &demo.telemetry).await.unwrap();
        tel.next().await.unwrap();
        for block_ms in [5.0f64, 50.0, 500.0] {
            let mut errors = Vec::new();
            let mut reported = Vec::new();
            for _ in 0..15 {
                // Quiet period so the block's line stands alone.
                tokio::time::sleep(Duration::from_millis(250)).await;
                let c = client.clone();
                let app = demo.app.clone();
                let path = format!("/block?ms={block_ms}");
                let req = tokio::spawn(async move { http::get(&c, &app, &path).await });
                let mut max = 0.0f64;
                let end = Instant::now() + Duration::from_millis(block_ms as u64 + 400);
                while Instant::now() < end {
                    let s = tel.next().await.unwrap().unwrap();
                    max = max.max(s.workers[0].lag_ms.max);
                }
                req.await.unwrap().unwrap();
                reported.push(max);
                errors.push(max - block_ms);
            }
            let abs_worst = errors.iter().fold(0.0f64, |a, e| a.max(e.abs()));
            let target = (block_ms * 0.02).max(1.0);
            println!(
                "block {block_ms:5} ms: reported max median {:.3} ms, min {:.3}, max {:.3}; worst |error| {abs_worst:.3} ms (target {target} ms)",
                median(&mut reported.clone()),
                reported.iter().cloned().fold(f64::INFINITY, f64::min),
                reported.iter().cloned().fold(0.0, f64::max),
            );
        }
    });
}

fn stall() {
    println!("## stall visibility: block start to the first telemetry line showing it");
    let rt = current_thread();
    let demo = Demo::start(&[]);
    rt.block_on(async {
        let client = http::client();
        let mut tel = TelemetryStream::connect(&client, &demo.telemetry)
            .await
            .unwrap();
        tel.next().await.unwrap();
        let mut delays = Vec::new();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Drain what queued up while sleeping.
            while let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_millis(1), tel.next()).await
            {}
            let c = client.clone();
            let app = demo.app.clone();
            let sent = Instant::now();
            let req = tokio::spawn(async move { http::get(&c, &app, "/block?ms=300").await });
            loop {
                let s = tel.next().await.unwrap().unwrap();
                if s.workers[0].stalled_for_ms > 0.0 {
                    delays.push(sent.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
            req.await.unwrap().unwrap();
        }
        let worst = delays.iter().cloned().fold(0.0, f64::max);
        println!(
            "over {} blocks: median {:.1} ms, worst {worst:.1} ms (target <= 100 ms)",
            delays.len(),
            median(&mut delays)
        );
    });
}

fn throughput() {
    println!("## demo throughput: node model, /hello, one loop, client on the same machine");
    let rt = current_thread();
    for conns in [16usize, 64] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let demo = Demo::start(&[]);
            rt.block_on(hello_load(&demo.app, conns, 0.5));
            let secs = 5.0;
            let n = rt.block_on(hello_load(&demo.app, conns, secs));
            rates.push(n as f64 / secs);
        }
        println!(
            "{conns} connections: median {:.0} req/s of 3 runs ({:?})",
            median(&mut rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
}

/// CPU seconds (utime + stime) of a process.
fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A burst of concurrent big parses against the memory budget: the peak resident
/// memory of the process that parses, and what it keeps afterwards.
fn memory() {
    let burst: usize = std::env::var("BURST").map_or(20, |v| v.parse().unwrap());
    let mb: u64 = std::env::var("MB").map_or(64, |v| v.parse().unwrap());
    println!("## memory: {burst} concurrent /offload?mb={mb}, budget 1024 MB per process");
    let rt = current_thread();
    for (label, extra) in [
        ("node", &["--model", "node"][..]),
        (
            "fastapi worker",
            &["--model", "fastapi", "--workers", "1"][..],
        ),
    ] {
        let demo = Demo::start(extra);
        let pid = rt.block_on(async {
            let client = http::client();
            // The fastapi worker's pid once it has started; the node server's own.
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let info = http::get(&client, &demo.telemetry, "/info").await.unwrap();
                let info: loopscope::protocol::ServerInfo =
                    serde_json::from_slice(&info.body).unwrap();
                if let Some(w) = info.workers.first() {
                    break w.pid;
                }
                assert!(Instant::now() < end, "no worker within 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // Settled: started and idle.
        std::thread::sleep(Duration::from_secs(1));
        let base = memory_mb(pid).0;
        let start = Instant::now();
        let (ok, peak) = rt.block_on(async {
            let client = http::client();
            let path = format!("/offload?mb={mb}");
            let jobs: Vec<_> = (0..burst)
                .map(|_| {
                    let (c, app, path) = (client.clone(), demo.app.clone(), path.clone());
                    tokio::spawn(async move {
                        let r = tokio::time::timeout(
                            Duration::from_secs(300),
                            http::get(&c, &app, &path),
                        );
                        matches!(r.await, Ok(Ok(r)) if r.status == 200)
                    })
                })
                .collect();
            let mut peak = 0.0f64;
            while !jobs.iter().all(|j| j.is_finished()) {
                peak = peak.max(memory_mb(pid).0);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut ok = 0;
            for j in jobs {
                ok += j.await.unwrap() as usize;
            }
            (ok, peak)
        });
        let took = start.elapsed();
        let (end_rss, _) = memory_mb(pid);
        std::thread::sleep(Duration::from_secs(5));
        let (after, hwm) = memory_mb(pid);
        println!(
            "{label}: idle {base:.0} MB, peak {:.0} MB (VmHWM; sampled {peak:.0}), at the end {end_rss:.0} MB, \
             5 s after {after:.0} MB; {ok}/{burst} answered in {:.1} s",
            hwm,
            took.as_secs_f64()
        );
    }
}

fn tui() {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    use std::io::Read;
    println!("## dashboard: its own CPU and memory, 4-worker fastapi server, 10 redraws/s, 30 s");
    for (label, extra) in [
        ("load off", &["--no-load"][..]),
        ("load on, 50 req/s", &[][..]),
    ] {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 30,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_loopscope"));
        cmd.args(["--model", "fastapi", "--workers", "4"]);
        cmd.args(extra);
        cmd.env("TERM", "xterm-256color");
        let mut child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        // Drain the screen output as a terminal would.
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        let pid = child.process_id().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        let cpu0 = process_cpu_s(pid);
        let t0 = Instant::now();
        let mut rss_max = 0.0f64;
        while t0.elapsed() < Duration::from_secs(30) {
            rss_max = rss_max.max(rss_mb(pid));
            std::thread::sleep(Duration::from_millis(500));
        }
        let cpu = (process_cpu_s(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        println!("{label}: CPU {cpu:.2}% of one core, RSS max {rss_max:.1} MB");
        let mut w = pty.master.take_writer().unwrap();
        let _ = w.write_all(b"q");
        let _ = w.flush();
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
}

/// The dashboard in a real terminal emulator: tmux at 100×30 renders what it draws, as
/// a workshop's terminal does (a pty that is only drained costs less).
fn tmux() {
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", "loopscope-bench"])
            .args(args)
            .output()
    };
    if tmux(&["-V"]).is_err() {
        println!("## dashboard in tmux: skipped, tmux is not installed");
        return;
    }
    println!(
        "## dashboard in tmux 100×30: its own CPU and memory, 4-worker fastapi server, load off, 30 s"
    );
    for round in 1..=3 {
        let cmd = format!(
            "{} --model fastapi --workers 4 --no-load",
            env!("CARGO_BIN_EXE_loopscope")
        );
        tmux(&["new-session", "-d", "-x", "100", "-y", "30", &cmd]).unwrap();
        let out = tmux(&["list-panes", "-F", "#{pane_pid}"]).unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the dashboard's pid");
        std::thread::sleep(Duration::from_secs(5));
        let cpu0 = process_cpu_s(pid);
        let t0 = Instant::now();
        let mut rss_max = 0.0f64;
        while t0.elapsed() < Duration::from_secs(30) {
            rss_max = rss_max.max(rss_mb(pid));
            std::thread::sleep(Duration::from_millis(500));
        }
        let cpu = (process_cpu_s(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        println!("round {round}: CPU {cpu:.2}% of one core, RSS max {rss_max:.1} MB");
        let _ = tmux(&["send-keys", "q"]);
        let end = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The tmux server we started for this bench, by its own socket.
        let _ = tmux(&["kill-server"]);
    }
}

fn loadgen() {
    use loopscope::client::load::{LoadGenerator, LoadPlan};
    println!("## load generator: its own CPU, against the node demo (one client thread)");
    let rt = current_thread();
    let demo = Demo::start(&[]);
    let me = std::process::id();
    for rate in [1000.0, 5000.0, 20_000.0, 40_000.0, 60_000.0, 80_000.0] {
        rt.block_on(async {
            let load = LoadGenerator::start(
                http::client(),
                demo.app.clone(),
                LoadPlan {
                    rate,
                    ..LoadPlan::default()
                },
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            load.take();
            let cpu0 = process_cpu_s(me);
            let secs = 5.0;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let s = load.take();
            let cpu = (process_cpu_s(me) - cpu0) / secs * 100.0;
            let achieved = s.ok as f64 / secs;
            println!(
                "{rate:>6} req/s planned: {achieved:>7.0} answered/s ({:.0}%), CPU {cpu:.1}% of one core, p50 {:.2} ms p99 {:.2} ms, delayed sends {}, errors {} timeouts {}",
                achieved / rate * 100.0,
                s.p50_ms,
                s.p99_ms,
                s.delayed_sends,
                s.errors,
                s.timeouts
            );
        });
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if wants("throughput") {
        throughput();
    }
    if wants("accuracy") {
        accuracy();
    }
    if wants("stall") {
        stall();
    }
    if wants("overhead") {
        overhead();
    }
    if wants("tui") {
        tui();
    }
    if wants("tmux") {
        tmux();
    }
    if wants("loadgen") {
        loadgen();
    }
    if wants("memory") {
        memory();
    }
}
