//! Soak: the dashboard watches and records a 4-worker fastapi demo under 1,000 req/s
//! of background load, with a workload key pressed every 5 s and a worker killed every
//! minute. Prints the RSS of the dashboard, the supervisor and each worker after the
//! warm-up minute and at the end, the telemetry lines lost, and how long each killed
//! worker took to report again.
//!
//! ```sh
//! cargo bench --bench soak            # 10 minutes
//! cargo bench --bench soak -- 2       # minutes
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopscope::client::http::{self, TelemetryStream};
use loopscope::protocol::Snapshot;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The telemetry lines seen, with when they arrived.
type Seen = Arc<Mutex<Vec<(Instant, Snapshot)>>>;

fn main() {
    let minutes: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("soak.ndjson");
    let log = dir.path().join("soak.log");
    println!(
        "## soak: fastapi 4 workers, 1,000 req/s, a key every 5 s, a worker killed every minute, {minutes} min"
    );
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: 100,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_loopscope"));
    cmd.args(["--model", "fastapi", "--workers", "4", "--rate", "1000"]);
    cmd.arg("--record");
    cmd.arg(&record);
    cmd.arg("--log-file");
    cmd.arg(&log);
    cmd.env("TERM", "xterm-256color");
    let mut child = pty.slave.spawn_command(cmd).unwrap();
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut keys = pty.master.take_writer().unwrap();
    let dashboard = child.process_id().unwrap();

    // The telemetry address, from the recording's header.
    let start = Instant::now();
    let telemetry = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no recording");
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if let Some(first) = text.lines().next() {
            let v: serde_json::Value = serde_json::from_str(first).unwrap();
            break v["info"]["telemetry"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let supervisor = children(dashboard)[0];
    let seen: Seen = Arc::default();
    {
        let (seen, telemetry) = (Arc::clone(&seen), telemetry.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = http::client();
                let mut stream = TelemetryStream::connect(&client, &telemetry).await.unwrap();
                while let Ok(Some(s)) = stream.next().await {
                    seen.lock().unwrap().push((Instant::now(), s));
                }
            });
        });
    }
    let latest =
        |seen: &Seen| -> Option<Snapshot> { seen.lock().unwrap().last().map(|(_, s)| s.clone()) };
    let rss = |label: &str| {
        let workers = children(supervisor);
        let mut line = format!(
            "{label}: dashboard {:.1} MB, supervisor {:.1} MB, workers",
            rss_mb(dashboard),
            rss_mb(supervisor)
        );
        for w in &workers {
            line.push_str(&format!(" {:.1}", rss_mb(*w)));
        }
        line.push_str(" MB");
        println!("{line}");
        (rss_mb(dashboard), rss_mb(supervisor))
    };

    const KEYS: [u8; 7] = *b"johsfpb";
    let mut kills: Vec<(Instant, u32, u32)> = Vec::new();
    let mut warm = None;
    let end = start + Duration::from_secs(minutes * 60);
    let mut tick = 0u64;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(5));
        tick += 1;
        let _ = keys.write_all(&[KEYS[tick as usize % KEYS.len()]]);
        let _ = keys.flush();
        // No kill in the last 20 s: its recovery must be seen.
        if tick % 12 == 0 && Instant::now() + Duration::from_secs(20) < end {
            if warm.is_none() {
                warm = Some(rss("after the warm-up minute"));
            }
            // Kill one worker: its id and pid from the newest line.
            if let Some(s) = latest(&seen) {
                let w = &s.workers[(tick / 12) as usize % s.workers.len()];
                // SAFETY: kill(2) on a worker of the demo this bench started.
                unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
                kills.push((Instant::now(), w.id, w.pid));
            }
        }
    }
    let last = rss("at the end");
    let _ = keys.write_all(b"q");
    let _ = keys.flush();
    let stop = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < stop {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();

    // Each killed worker: from the kill to its replacement's first live report.
    let seen = seen.lock().unwrap();
    let mut back = Vec::new();
    for (at, id, pid) in &kills {
        let again = seen.iter().find(|(t, s)| {
            // The replacement's own first report (it measured its loop).
            t > at
                && s.workers
                    .iter()
                    .any(|w| w.id == *id && w.alive && w.pid != *pid && w.lag_ms.samples > 0)
        });
        match again {
            Some((t, _)) => back.push(t.duration_since(*at).as_secs_f64() * 1000.0),
            None => println!("worker {id} (pid {pid}) never came back"),
        }
    }
    // Lines lost: gaps in `seq`, in the bench's own subscription and in the recording.
    let gaps = |lines: &mut dyn Iterator<Item = u64>| {
        let mut lost = 0;
        let mut prev: Option<u64> = None;
        for seq in lines {
            if let Some(p) = prev {
                lost += seq.saturating_sub(p + 1);
            }
            prev = Some(seq);
        }
        lost
    };
    let lost_stream = gaps(&mut seen.iter().map(|(_, s)| s.seq));
    let recorded: Vec<u64> = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Snapshot>(l).ok())
        .map(|s| s.seq)
        .collect();
    let lost_recorded = gaps(&mut recorded.iter().copied());
    let mut per_id: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, id, _) in &kills {
        *per_id.entry(*id).or_default() += 1;
    }
    back.sort_by(f64::total_cmp);
    println!(
        "telemetry lines: {} seen by a subscriber ({lost_stream} lost), {} recorded ({lost_recorded} lost)",
        seen.len(),
        recorded.len()
    );
    println!(
        "workers killed: {} ({per_id:?}); back after (ms): {:?}; worst {:.0} ms",
        kills.len(),
        back.iter().map(|b| b.round() as u64).collect::<Vec<_>>(),
        back.last().copied().unwrap_or(0.0)
    );
    if let Some((d0, s0)) = warm {
        println!(
            "RSS growth after warm-up: dashboard {:+.1} MB, supervisor {:+.1} MB",
            last.0 - d0,
            last.1 - s0
        );
    }
}
