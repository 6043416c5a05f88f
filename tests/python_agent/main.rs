//! The Python agent (`assets/agents/python/loopscope_agent.py`) on real Python
//! processes: a standard-library asyncio server (`tests/agents/py_server.py`) that
//! calls `install()` and names its requests, and (where uvicorn can be installed
//! into a virtualenv under `target/`) a FastAPI app under `uvicorn --workers N`
//! wrapped with `asgi()`. Skipped (and passing) when `python3` is absent, unless
//! `LOOPSCOPE_REQUIRE_AGENTS=1`, which makes a missing `python3` a failure.

#[path = "../common/mod.rs"]
mod common;
mod support;
mod uvicorn;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{runtime, serial};
use loopscope::client::http;
use loopscope::protocol::{Event, Model};
use support::{AGENT_DIR, PyServer, python_present};

/// A request that blocks the loop shows as a live stall of at least 200 ms naming
/// it while the request is still in flight; the first line that shows the stall
/// comes within 100 ms of its start; afterwards the held tick's lateness shows.
fn live_stall(path: &str, min_block_ms: f64) {
    let server = PyServer::plain("127.0.0.1:0", true, &[]);
    runtime().block_on(async {
        let mut stream = common::telemetry(&server.telemetry).await;
        let client = http::client();
        let app = server.app.clone();
        let target = path.to_string();
        let request = tokio::spawn(async move { common::get(&client, &app, &target).await });
        let mut first_seen = None;
        let stall = common::until(&mut stream, Duration::from_secs(10), |s| {
            let w = &s.workers[0];
            if w.stalled_for_ms > 0.0 && first_seen.is_none() {
                first_seen = Some(w.stalled_for_ms);
            }
            w.stalled_for_ms >= 200.0
        })
        .await
        .expect("stalled_for_ms >= 200 while the request blocks the loop");
        assert!(
            !request.is_finished(),
            "the stall shows while it lasts: {stall:?}"
        );
        let want = format!("GET {path}");
        assert_eq!(stall.workers[0].stalled_in.as_deref(), Some(want.as_str()));
        let first = first_seen.unwrap();
        assert!(
            first <= 100.0,
            "the first line showing the stall came {first} ms after it began"
        );
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        let body = answer.json().unwrap();
        let block_ms = body["parse_ms"]
            .as_f64()
            .or_else(|| body["slept_ms"].as_f64())
            .unwrap();
        assert!(block_ms >= min_block_ms, "{path} blocked {block_ms} ms");
        // A line after the stall carries the lateness of the tick it held up.
        let mut lag_max = 0.0f64;
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            let s = common::next(&mut stream).await;
            lag_max = lag_max.max(s.workers[0].lag_ms.max);
        }
        assert!(
            (lag_max - block_ms).abs() <= block_ms * 0.15 + 5.0,
            "lag max {lag_max} ms against the block's own {block_ms} ms"
        );
    });
}

#[test]
fn a_json_loads_in_a_coroutine_is_a_live_stall_naming_its_request() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    live_stall("/json?mb=20", 200.0);
}

#[test]
fn a_time_sleep_in_a_coroutine_is_a_live_stall_naming_its_request() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    live_stall("/sleep?ms=500", 500.0);
}

#[test]
fn an_await_asyncio_sleep_is_no_stall() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    let server = PyServer::plain("127.0.0.1:0", true, &[]);
    runtime().block_on(async {
        let mut stream = common::telemetry(&server.telemetry).await;
        let app = server.app.clone();
        let request =
            tokio::spawn(async move { common::get(&http::client(), &app, "/asleep?ms=800").await });
        let (mut lines, mut in_flight) = (0, 0);
        while !request.is_finished() {
            let s = common::next(&mut stream).await;
            let w = &s.workers[0];
            assert_eq!(w.stalled_for_ms, 0.0, "{s:?}");
            assert!(w.lag_ms.max < 50.0, "{s:?}");
            in_flight = in_flight.max(w.requests.in_flight);
            lines += 1;
        }
        assert_eq!(request.await.unwrap().status, 200);
        assert!(lines >= 5, "{lines} lines while the request awaited");
        assert_eq!(in_flight, 1, "the awaiting request is in flight");
    });
}

#[test]
fn eight_executor_jobs_queue_four_behind_four_pool_threads() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    let server = PyServer::plain("127.0.0.1:0", true, &[("POOL_THREADS", "4")]);
    runtime().block_on(async {
        let mut stream = common::telemetry(&server.telemetry).await;
        let app = server.app.clone();
        let request =
            tokio::spawn(
                async move { common::get(&http::client(), &app, "/pool?n=8&ms=1500").await },
            );
        let queued = common::until(&mut stream, Duration::from_secs(10), |s| {
            let p = &s.workers[0].pool;
            p.queued == 4 && p.oldest_wait_ms >= 300.0
        })
        .await
        .expect("4 jobs queued, the oldest waiting >= 300 ms");
        let pool = &queued.workers[0].pool;
        assert_eq!((pool.size, pool.busy, pool.threads), (4, 4, 4), "{pool:?}");
        assert_eq!(request.await.unwrap().status, 200);
        let mut wait_max = 0.0f64;
        let drained = common::until(&mut stream, Duration::from_secs(5), |s| {
            let p = &s.workers[0].pool;
            wait_max = wait_max.max(p.wait_ms_max);
            p.busy == 0 && p.queued == 0 && p.completed >= 8
        })
        .await;
        assert!(drained.is_some(), "the gauge drains and counts the 8 jobs");
        assert!(
            (1200.0..3000.0).contains(&wait_max),
            "the second four waited for the first: {wait_max} ms"
        );
    });
}

#[test]
fn every_agent_line_is_a_snapshot_and_info_a_server_info() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    let began = Instant::now();
    let server = PyServer::plain("127.0.0.1:0", true, &[("POOL_THREADS", "4")]);
    let pid = server.child.id();
    assert_eq!(server.pid, pid);
    let snapshots = runtime().block_on(common::agent::keeps_the_one_loop_contract(
        &common::agent::OneLoop {
            app: &server.app,
            telemetry: &server.telemetry,
            pid,
            model: Model::Fastapi,
            agent: "agent-python",
            six_pool_jobs: "/pool?n=6&ms=10",
        },
    ));
    for s in &snapshots {
        let w = &s.workers[0];
        assert!((0.0..=1.0).contains(&w.loop_utilization), "{s:?}");
        for e in &s.events {
            if let Event::SlowPoll { endpoint, t_ms, .. } = e {
                assert_eq!(endpoint, "GET /json", "the parse's is the only slow poll");
                // Milliseconds since the agent started, which is after `began`.
                let age_ms = began.elapsed().as_millis() as u64;
                assert!(
                    *t_ms <= age_ms,
                    "t_ms {t_ms} past the agent's age {age_ms} ms"
                );
            }
        }
    }
    let last = &snapshots.last().unwrap().workers[0];
    assert!(last.lag_ms.samples >= 50, "1 ms ticks: {:?}", last.lag_ms);
}

#[test]
fn a_taken_telemetry_port_warns_once_and_the_app_serves_on() {
    if !python_present() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let server = PyServer::plain(&addr, false, &[]);
    runtime().block_on(async {
        for _ in 0..2 {
            let r = common::get(&http::client(), &server.app, "/hello").await;
            assert_eq!(r.status, 200, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    });
    let stderr = server.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("in use")).collect();
    assert_eq!(warnings.len(), 1, "stderr:\n{stderr}");
    assert!(warnings[0].contains(&addr), "{stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "nothing else on stderr:\n{stderr}"
    );
    assert!(server.hub_pid().is_none_or(common::process_gone));
}

#[test]
fn a_client_that_never_reads_is_skipped_and_junk_is_dropped() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    let server = PyServer::plain("127.0.0.1:0", true, &[("LOOPSCOPE_CLIENT_BUFFER", "4096")]);
    let hub = server.hub_pid().expect("the telemetry process");
    let mut rss0 = 0;
    runtime().block_on(async {
        use tokio::io::AsyncWriteExt;
        // A client that asks and never reads, with a small receive buffer.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut stuck = sock
            .connect(server.telemetry.parse().unwrap())
            .await
            .unwrap();
        stuck
            .write_all(b"GET /telemetry HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Junk: a head that never ends, bytes that are not HTTP.
        let mut junk = tokio::net::TcpStream::connect(&server.telemetry)
            .await
            .unwrap();
        let _ = junk.write_all(&vec![b'x'; 64 * 1024]).await;
        let mut stream = common::telemetry(&server.telemetry).await;
        rss0 = support::rss_kb(hub);
        let app = server.app.clone();
        // Big lines fill the stuck client's buffers: many slow-poll events.
        let load = tokio::spawn(async move {
            let c = http::client();
            for _ in 0..200 {
                common::get(&c, &app, "/sleep?ms=55").await;
            }
        });
        let mut prev = common::next(&mut stream).await.seq;
        let end = Instant::now() + Duration::from_secs(20);
        let mut skipped = 0.0;
        while Instant::now() < end && skipped == 0.0 {
            let s = common::next(&mut stream).await;
            assert_eq!(s.seq, prev + 1, "the reading client misses nothing");
            prev = s.seq;
            if s.seq % 10 == 0 {
                let m = common::get(&http::client(), &server.telemetry, "/metrics").await;
                let text = m.text();
                skipped = text
                    .lines()
                    .find_map(|l| l.strip_prefix("loopscope_telemetry_skipped_lines{} "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
            }
        }
        load.abort();
        assert!(
            skipped > 0.0,
            "lines were skipped for the client that does not read"
        );
        let r = common::get(&http::client(), &server.app, "/hello").await;
        assert_eq!(r.status, 200);
        drop((stuck, junk));
    });
    let rss1 = support::rss_kb(hub);
    assert!(
        rss1 < rss0 + 4096,
        "the telemetry process grew from {rss0} kB to {rss1} kB"
    );
}

#[test]
fn the_agent_never_keeps_a_finished_process_alive_nor_outlives_it() {
    if !python_present() {
        return;
    }
    let script = format!(
        "import asyncio, os, sys\n\
         sys.path.insert(0, {AGENT_DIR:?})\n\
         import loopscope_agent\n\
         async def main():\n\
         \x20   assert loopscope_agent.install()\n\
         \x20   await asyncio.sleep(0.5)\n\
         \x20   kids = [p for p in os.listdir('/proc') if p.isdigit() and\n\
         \x20           open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()[1] == str(os.getpid())]\n\
         \x20   print(' '.join(kids))\n\
         asyncio.run(main())\n"
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .env("LOOPSCOPE_TELEMETRY", "127.0.0.1:0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let out = common::output_within(
        child,
        Duration::from_secs(10),
        "python with the agent",
        || {},
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "one telemetry process: {kids:?}");
    let end = Instant::now() + Duration::from_secs(5);
    while !common::process_gone(kids[0]) {
        assert!(
            Instant::now() < end,
            "the telemetry process outlived its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn loopscope_attach_reads_the_agent_headless() {
    if !python_present() {
        return;
    }
    let _serial = serial();
    let server = PyServer::plain("127.0.0.1:0", true, &[]);
    let log = std::env::temp_dir().join(format!("loopscope-py-agent-{}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "attach",
            &server.telemetry,
            "--headless",
            "--duration",
            "3s",
        ])
        .args(["--format", "table", "--no-load", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopscope");
    let app = server.app.clone();
    let out = common::output_within(child, Duration::from_secs(30), "loopscope attach", || {
        std::thread::sleep(Duration::from_millis(800));
        runtime().block_on(async {
            let r = common::get(&http::client(), &app, "/json?mb=20").await;
            assert_eq!(r.status, 200);
        });
    });
    let _ = std::fs::remove_file(&log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lag_max = common::table_lag_max(&stdout, &stderr);
    assert!(lag_max >= 100.0, "the parse shows in the table: {stdout}");
}
