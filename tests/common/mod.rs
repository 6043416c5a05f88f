//! Helpers for tests on real processes over loopback: start the demo binary, read its
//! address line, talk HTTP, read telemetry. Every wait is bounded.

#![allow(dead_code)]

pub mod agent;
pub mod pty;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use loopscope::client::http::{self, HttpClient, HttpResponse, TelemetryStream};
use loopscope::protocol::{AddressLine, Snapshot};

/// Tests that measure time run one at a time: two cores are not enough to share.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A running `loopscope demo`, killed (with its workers) when dropped.
pub struct Demo {
    pub child: Child,
    pub app: String,
    pub telemetry: String,
    pub pid: u32,
}

impl Demo {
    /// Starts `loopscope demo --port 0 --telemetry-port 0 <extra>` (the ports are left
    /// out when `extra` gives them) and waits (≤ 20 s) for its address line.
    pub fn start(extra: &[&str]) -> Demo {
        let ports: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0", "--telemetry-port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
            .arg("demo")
            .args(ports)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the demo prints its address line within 20 s");
        let addr: AddressLine = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("bad address line {line:?}: {e}"));
        Demo {
            child,
            app: addr.app,
            telemetry: addr.telemetry.unwrap_or_default(),
            pid: addr.pid,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET with a bound.
pub async fn get(client: &HttpClient, addr: &str, path: &str) -> HttpResponse {
    tokio::time::timeout(Duration::from_secs(30), http::get(client, addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} within 30 s"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The telemetry stream, once its first snapshot arrived (so the probe is running).
pub async fn telemetry(addr: &str) -> TelemetryStream {
    let client = http::client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_secs(2),
            TelemetryStream::connect(&client, addr),
        )
        .await
        {
            if let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_secs(2), stream.next()).await
            {
                return stream;
            }
        }
        assert!(Instant::now() < deadline, "telemetry at {addr} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next snapshot, within 2 s.
pub async fn next(stream: &mut TelemetryStream) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("a snapshot within 2 s")
        .expect("a readable snapshot")
        .expect("the stream goes on")
}

/// Reads snapshots until `pred` holds or `within` passes.
pub async fn until(
    stream: &mut TelemetryStream,
    within: Duration,
    mut pred: impl FnMut(&Snapshot) -> bool,
) -> Option<Snapshot> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let s = next(stream).await;
        if std::env::var_os("DEBUG_LINES").is_some() {
            eprintln!(
                "{} {:?}",
                s.seq,
                s.workers
                    .iter()
                    .map(|w| (w.stalled_for_ms, w.lag_ms.max))
                    .collect::<Vec<_>>()
            );
        }
        if pred(&s) {
            return Some(s);
        }
    }
    None
}

/// True when nothing accepts connections on `addr`.
pub fn refused(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
        .is_err()
}

/// True when `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits for `child`'s output while `during` runs; kills it and fails past `bound`.
pub fn output_within(
    child: std::process::Child,
    bound: Duration,
    what: &str,
    during: impl FnOnce(),
) -> std::process::Output {
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    during();
    let end = Instant::now() + bound;
    while !waiter.is_finished() {
        if Instant::now() > end {
            // SAFETY: kill(2) on the pid of a child the test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} ran past {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap().unwrap()
}

/// CPU time (user + system) this test process used so far, in seconds.
pub fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Sends `/hello` on `client` every 20 ms until `block` ends; each one answered
/// while it lasts must come from a worker other than `blocked` within 200 ms.
/// Returns how many were. Each request is bounded by [`get`]'s 30 s.
pub async fn hello_while_blocked<T>(
    block: &tokio::task::JoinHandle<T>,
    client: &HttpClient,
    app: &str,
    blocked: u32,
) -> usize {
    let mut during = 0;
    while !block.is_finished() {
        let t = Instant::now();
        let r = get(client, app, "/hello").await;
        assert_eq!(r.status, 200);
        if !block.is_finished() {
            let served_by = r.json().unwrap()["worker"].as_u64().unwrap() as u32;
            assert_ne!(served_by, blocked, "the blocked worker answered");
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "/hello took {:?}",
                t.elapsed()
            );
            during += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    during
}

/// The lag max (ms) of worker 0's row in a headless summary table; panics, showing
/// the table and `context` (e.g. the run's stderr), when there is no such row.
pub fn table_lag_max(table: &str, context: &str) -> f64 {
    let row = table
        .lines()
        .find(|l| l.starts_with("w0 "))
        .unwrap_or_else(|| panic!("no w0 row:\n{table}\n{context}"));
    let lag_max = row.split_whitespace().nth(3);
    lag_max
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lag max in {row:?}"))
}
