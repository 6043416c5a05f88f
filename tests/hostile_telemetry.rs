//! A hostile or broken telemetry server cannot exhaust loopscope: a fake server over
//! raw TCP sends malformed lines, overlong lines, huge strings, too many workers and a
//! 200 MB `/info`; loopscope (headless) skips and counts, keeps reading, and its
//! memory stays small.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopscope::protocol::{
    HostSnapshot, Model, PROTOCOL_VERSION, ServerInfo, Snapshot, Versions, WorkerInfo,
    WorkerSnapshot,
};

fn info(addr: &str) -> String {
    serde_json::to_string(&ServerInfo {
        v: PROTOCOL_VERSION,
        model: Model::Node,
        app: addr.into(),
        telemetry: addr.into(),
        pid: 1,
        workers: vec![WorkerInfo { id: 0, pid: 1 }],
        pool_size: 4,
        period_ms: 100,
        lag_resolution_ms: 1.0,
        slow_poll_ms: 50.0,
        versions: Versions {
            loopscope: "0".into(),
            protocol: 1,
        },
    })
    .unwrap()
}

fn line(seq: u64, workers: u32, stalled_in: Option<String>) -> String {
    let snap = Snapshot {
        v: PROTOCOL_VERSION,
        seq,
        t_ms: seq * 100,
        model: Model::Node,
        period_ms: 100,
        workers: (0..workers)
            .map(|id| WorkerSnapshot {
                id,
                alive: true,
                // Only the first worker carries the string.
                stalled_for_ms: if stalled_in.is_some() { 5.0 } else { 0.0 },
                stalled_in: if id == 0 { stalled_in.clone() } else { None },
                ..Default::default()
            })
            .collect(),
        host: HostSnapshot::default(),
        events: vec![],
        runtime: None,
    };
    serde_json::to_string(&snap).unwrap() + "\n"
}

/// Serves `/info` (huge when `huge_info`) and a `/telemetry` full of traps, until
/// `stop`.
fn serve(listener: TcpListener, huge_info: bool, stop: Arc<AtomicBool>) {
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        stream.set_nonblocking(false).unwrap();
        let (addr, stop) = (addr.clone(), Arc::clone(&stop));
        std::thread::spawn(move || answer(stream, &addr, huge_info, &stop));
    }
}

fn answer(mut stream: TcpStream, addr: &str, huge_info: bool, stop: &AtomicBool) {
    let mut request = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if request.starts_with("GET /info") {
        if huge_info {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200000000\r\n\r\n",
            );
            let chunk = vec![b' '; 1 << 16];
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) || stream.write_all(&chunk).is_err() {
                    return;
                }
            }
        } else {
            let body = info(addr);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        return;
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
    );
    let mut seq = 1;
    let mut send = |text: &str| stream.write_all(text.as_bytes()).is_ok();
    // A good line, then the traps, each once.
    let traps = [
        line(seq, 1, None),
        "this is not json\n".to_string(),
        "{\"v\":1,\"seq\":\"ten\"}\n".to_string(),
        "x".repeat(5 << 20) + "\n",
        line(2, 300, Some("y".repeat(500_000))),
    ];
    for t in &traps {
        if !send(t) {
            return;
        }
    }
    seq = 3;
    // Then good lines, each also carrying a huge string.
    while !stop.load(Ordering::Relaxed) && seq < 400 {
        if !send(&line(seq, 2, Some("z".repeat(200_000)))) {
            return;
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `loopscope attach ADDR --headless` for `secs` and returns (stdout, stderr,
/// largest RSS seen in kB).
fn watch(addr: &str, secs: u32) -> (String, String, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args(["attach", addr, "--headless", "--no-load"])
        .args(["--duration", &format!("{secs}s")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let out = common::output_within(child, Duration::from_secs(30), "attach", || {
        let end = Instant::now() + Duration::from_secs(secs as u64);
        while Instant::now() < end {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            {
                peak.fetch_max(kb, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak.load(Ordering::Relaxed),
    )
}

/// Starts the fake server (with a huge `/info` when `huge_info`), watches it for
/// `secs` and stops it: what `watch` returns.
fn against_fake(huge_info: bool, secs: u32) -> (String, String, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || serve(listener, huge_info, stop))
    };
    let watched = watch(&addr, secs);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    watched
}

#[test]
fn malformed_overlong_and_oversized_telemetry_is_skipped_counted_and_bounded() {
    let _serial = common::serial();
    let (stdout, stderr, peak_kb) = against_fake(false, 3);
    let lines: Vec<Snapshot> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The bad lines were skipped and the same connection read on: line 1, the
    // bounded line 2, and the good lines after them all arrived.
    assert_eq!(lines.first().map(|s| s.seq), Some(1), "{stderr}");
    let wide = lines.iter().find(|s| s.seq == 2).expect("line 2, bounded");
    assert_eq!(wide.workers.len(), 256);
    assert!(wide.workers[0].stalled_in.as_ref().unwrap().chars().count() <= 200);
    assert!(lines.iter().filter(|s| s.seq > 2).count() >= 10, "{stderr}");
    assert!(
        !stderr.contains("telemetry lost"),
        "a bad line dropped the connection: {stderr}"
    );
    assert!(stderr.contains("lines skipped"), "{stderr}");
    assert!(stderr.contains("not json"), "{stderr}");
    assert!(
        stderr.contains("bytes was dropped (the limit is 1048576)"),
        "{stderr}"
    );
    assert!(stderr.contains("dropped workers beyond 256"), "{stderr}");
    assert!(peak_kb > 0 && peak_kb < 120_000, "peak RSS {peak_kb} kB");
}

#[test]
fn a_200_mb_info_is_refused_without_reading_it_whole() {
    let _serial = common::serial();
    let (_, stderr, peak_kb) = against_fake(true, 2);
    assert!(
        stderr.contains("answered more than 1048576 bytes"),
        "{stderr}"
    );
    assert!(peak_kb > 0 && peak_kb < 120_000, "peak RSS {peak_kb} kB");
}
